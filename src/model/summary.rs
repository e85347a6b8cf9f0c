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

/// A count with thousands separators, as Python's `f"{n:,}"` (Keras prints `50,890`).
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Formats a shape with the batch axis as `None`: `(None, 32)`.
pub(crate) fn shape_str(shape: &[usize]) -> String {
    let mut parts = vec!["None".to_string()];
    parts.extend(shape.iter().map(|d| d.to_string()));
    format!("({})", parts.join(", "))
}

/// The Keras 3 summary table for a model's rows and variables. Parameter counts carry thousands
/// separators and sizes are float32 bytes in Keras's units, as `model.summary()` prints them.
///
/// ```
/// use ferrokeras::layers::LayerSummary;
/// let rows = vec![
///     LayerSummary { name: "dense (Dense)".into(), output_shape: vec![64], params: 50240 },
///     LayerSummary { name: "dense_1 (Dense)".into(), output_shape: vec![1], params: 33 },
/// ];
/// let s = ferrokeras::model::format_summary("functional", &rows, &[], &[]);
/// assert!(s.contains("│ dense (Dense)                   │ (None, 64)             │        50,240 │"));
/// assert!(s.contains("│ dense_1 (Dense)                 │ (None, 1)              │            33 │"));
/// ```
pub fn format_summary(
    name: &str,
    rows: &[LayerSummary],
    trainable: &[Variable],
    non_trainable: &[Variable],
) -> String {
    // Keras's widths, widened when a name or shape would not fit (the box stays aligned).
    let fit = |min: usize, longest: usize| min.max(longest + 2);
    let w1 = fit(
        33,
        rows.iter()
            .map(|r| r.name.chars().count())
            .max()
            .unwrap_or(0),
    );
    let w2 = fit(
        24,
        rows.iter()
            .map(|r| shape_str(&r.output_shape).chars().count())
            .max()
            .unwrap_or(0),
    );
    let w3 = 15usize;
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
            thousands(r.params),
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
    s += &format!(
        " Total params: {} ({})\n",
        thousands(t + n),
        human_bytes((t + n) * 4)
    );
    s += &format!(
        " Trainable params: {} ({})\n",
        thousands(t),
        human_bytes(t * 4)
    );
    s += &format!(
        " Non-trainable params: {} ({})\n",
        thousands(n),
        human_bytes(n * 4)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators_as_python() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(50890), "50,890");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn human_bytes_as_keras() {
        assert_eq!(human_bytes(132), "132.00 B");
        assert_eq!(human_bytes(50890 * 4), "198.79 KB");
        assert_eq!(human_bytes(0), "0.00 B");
    }

    #[test]
    fn long_names_widen_the_table_and_keep_it_aligned() {
        let rows = vec![LayerSummary {
            name: "global_max_pooling2d (GlobalMaxPooling2D)".into(),
            output_shape: vec![128],
            params: 0,
        }];
        let s = format_summary("m", &rows, &[], &[]);
        let widths: Vec<usize> = s
            .lines()
            .filter(|l| l.starts_with(['┏', '┃', '┡', '│', '└']))
            .map(|l| l.chars().count())
            .collect();
        assert!(
            widths.len() == 5 && widths.iter().all(|w| *w == widths[0]),
            "{s}"
        );
        assert!(
            s.contains("│ global_max_pooling2d (GlobalMaxPooling2D) │"),
            "{s}"
        );
    }
}
