//! The Keras 3 `summary()` table.

use crate::layers::LayerSummary;
use crate::tape::Variable;

fn human_bytes(bytes: usize) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.2} {}", units[i])
}

/// Formats a shape with the batch axis as `None`: `(None, 32)`.
pub(crate) fn shape_str(shape: &[usize]) -> String {
    let mut parts = vec!["None".to_string()];
    parts.extend(shape.iter().map(|d| d.to_string()));
    format!("({})", parts.join(", "))
}

/// The Keras 3 summary table for a model's rows and variables.
///
/// ```
/// use ferrokeras::layers::LayerSummary;
/// let rows = vec![LayerSummary { name: "dense (Dense)".into(), output_shape: vec![1], params: 33 }];
/// let s = ferrokeras::model::format_summary("functional", &rows, &[], &[]);
/// assert!(s.contains("│ dense (Dense)                   │ (None, 1)              │            33 │"));
/// ```
pub fn format_summary(
    name: &str,
    rows: &[LayerSummary],
    trainable: &[Variable],
    non_trainable: &[Variable],
) -> String {
    let (w1, w2, w3) = (33usize, 24usize, 15usize);
    let bar = |c: char, n: usize| c.to_string().repeat(n);
    let mut s = format!("Model: \"{name}\"\n");
    s += &format!("┏{}┳{}┳{}┓\n", bar('━', w1), bar('━', w2), bar('━', w3));
    s += &format!(
        "┃ {:<a$} ┃ {:<b$} ┃ {:>c$} ┃\n",
        "Layer (type)",
        "Output Shape",
        "Param #",
        a = w1 - 2,
        b = w2 - 2,
        c = w3 - 2
    );
    s += &format!("┡{}╇{}╇{}┩\n", bar('━', w1), bar('━', w2), bar('━', w3));
    for (i, r) in rows.iter().enumerate() {
        s += &format!(
            "│ {:<a$} │ {:<b$} │ {:>c$} │\n",
            r.name,
            shape_str(&r.output_shape),
            r.params,
            a = w1 - 2,
            b = w2 - 2,
            c = w3 - 2
        );
        if i + 1 < rows.len() {
            s += &format!("├{}┼{}┼{}┤\n", bar('─', w1), bar('─', w2), bar('─', w3));
        }
    }
    s += &format!("└{}┴{}┴{}┘\n", bar('─', w1), bar('─', w2), bar('─', w3));
    let count = |vs: &[Variable]| vs.iter().map(Variable::elem_count).sum::<usize>();
    let (t, n) = (count(trainable), count(non_trainable));
    s += &format!(" Total params: {} ({})\n", t + n, human_bytes((t + n) * 4));
    s += &format!(" Trainable params: {t} ({})\n", human_bytes(t * 4));
    s += &format!(" Non-trainable params: {n} ({})\n", human_bytes(n * 4));
    s
}
