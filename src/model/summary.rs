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

/// Formats a shape with the batch axis as `None`: `(None, 32)`, and `(None,)` for one value per
/// sample, as Python prints the tuple.
pub(crate) fn shape_str(shape: &[usize]) -> String {
    if shape.is_empty() {
        return "(None,)".to_string();
    }
    let mut parts = vec!["None".to_string()];
    parts.extend(shape.iter().map(|d| d.to_string()));
    format!("({})", parts.join(", "))
}

/// `text` wrapped to lines of at most `width` characters as Keras's table (rich) wraps a cell:
/// words go on a line while they fit; a word longer than the line is cut with `…`.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let word: String = if word.chars().count() > width {
            word.chars()
                .take(width.saturating_sub(1))
                .chain(std::iter::once('…'))
                .collect()
        } else {
            word.to_string()
        };
        let len = line.chars().count();
        if len > 0 && len + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    lines.push(line);
    lines
}

/// The Keras 3 summary table for a model's rows and variables, as `model.summary()` prints it
/// (on an 80-column console): columns of fixed widths, a cell's text wrapped within its column,
/// a "Connected to" column when a row has connections (a branched functional model), `?` and
/// `0 (unbuilt)` for a layer not built yet, parameter counts with thousands separators and sizes
/// as float32 bytes in Keras's units.
///
/// ```
/// use ferrokeras::layers::LayerSummary;
/// let rows = vec![
///     LayerSummary::new("dense (Dense)", &[64], 50240),
///     LayerSummary::new("global_average_pooling2d (GlobalAveragePooling2D)", &[64], 0),
/// ];
/// let s = ferrokeras::model::format_summary("functional", &rows, &[], &[]);
/// assert!(s.contains("│ dense (Dense)                   │ (None, 64)             │        50,240 │"));
/// assert!(s.contains("│ global_average_pooling2d        │ (None, 64)             │             0 │"));
/// assert!(s.contains("│ (GlobalAveragePooling2D)        │                        │               │"));
/// ```
pub fn format_summary(
    name: &str,
    rows: &[LayerSummary],
    trainable: &[Variable],
    non_trainable: &[Variable],
) -> String {
    format_summary_with_optimizer(name, rows, trainable, non_trainable, None)
}

/// [`format_summary`] of a compiled model whose optimizer holds `optimizer` values: Keras counts
/// them in the total and prints them on a line of their own.
pub(crate) fn format_summary_with_optimizer(
    name: &str,
    rows: &[LayerSummary],
    trainable: &[Variable],
    non_trainable: &[Variable],
    optimizer: Option<usize>,
) -> String {
    let connected = rows.iter().any(|r| !r.connected_to.is_empty());
    // Keras's columns (line length 88, or 108 with connections) as rich fits them to 80
    // columns; each width includes a space of padding on both sides.
    let widths: &[usize] = if connected {
        &[21, 19, 12, 19]
    } else {
        &[33, 24, 15]
    };
    let right = [false, false, true, false];
    let headers = ["Layer (type)", "Output Shape", "Param #", "Connected to"];
    let bar = |l: char, fill: char, mid: char, r: char| {
        let parts: Vec<String> = widths.iter().map(|w| fill.to_string().repeat(*w)).collect();
        format!("{l}{}{r}\n", parts.join(&mid.to_string()))
    };
    let line = |cells: &[String], edge: char| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            let w = w - 2;
            out.push(edge);
            out += &if right[i] {
                format!(" {c:>w$} ")
            } else {
                format!(" {c:<w$} ")
            };
        }
        out.push(edge);
        out.push('\n');
        out
    };
    let mut s = format!("Model: \"{name}\"\n");
    s += &bar('┏', '━', '┳', '┓');
    let head: Vec<String> = headers[..widths.len()]
        .iter()
        .map(|h| h.to_string())
        .collect();
    s += &line(&head, '┃');
    s += &bar('┡', '━', '╇', '┩');
    for (i, r) in rows.iter().enumerate() {
        let (shape, params) = if r.built {
            (shape_str(&r.output_shape), thousands(r.params))
        } else {
            ("?".to_string(), "0 (unbuilt)".to_string())
        };
        let texts = [r.name.clone(), shape, params, r.connected_to.join(", ")];
        let cells: Vec<Vec<String>> = texts[..widths.len()]
            .iter()
            .zip(widths)
            .map(|(t, w)| wrap(t, w - 2))
            .collect();
        let height = cells.iter().map(Vec::len).max().unwrap_or(1);
        for k in 0..height {
            let row: Vec<String> = cells
                .iter()
                .map(|c| c.get(k).cloned().unwrap_or_default())
                .collect();
            s += &line(&row, '│');
        }
        if i + 1 < rows.len() {
            s += &bar('├', '─', '┼', '┤');
        }
    }
    s += &bar('└', '─', '┴', '┘');
    let count = |vs: &[Variable]| vs.iter().map(Variable::elem_count).sum::<usize>();
    let (t, n) = (count(trainable), count(non_trainable));
    let total = t + n + optimizer.unwrap_or(0);
    s += &format!(
        " Total params: {} ({})\n",
        thousands(total),
        human_bytes(total * 4)
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
    if let Some(o) = optimizer {
        s += &format!(
            " Optimizer params: {} ({})\n",
            thousands(o),
            human_bytes(o * 4)
        );
    }
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

    /// Keras's summaries (3.15.1, printed to a pipe): a branched functional model with its
    /// "Connected to" column, an unbuilt layer, and a name too long for its column.
    #[test]
    fn tables_as_keras_prints_them() {
        let row = |name: &str, shape: &[usize], params: usize, to: &[&str]| LayerSummary {
            connected_to: to.iter().map(|s| s.to_string()).collect(),
            ..LayerSummary::new(name, shape, params)
        };
        let rows = vec![
            row("features (InputLayer)", &[6], 0, &["-"]),
            row("a (Dense)", &[5], 35, &["features[0][0]"]),
            row("b (Dense)", &[3], 21, &["features[0][0]"]),
            row("cat (Concatenate)", &[8], 0, &["a[0][0]", "b[0][0]"]),
            row("out (Dense)", &[1], 9, &["cat[0][0]"]),
        ];
        let table = |s: &str| -> String {
            s.lines()
                .skip(1)
                .take_while(|l| !l.starts_with(' '))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let keras = "\
┏━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━┓
┃ Layer (type)        ┃ Output Shape      ┃    Param # ┃ Connected to      ┃
┡━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━┩
│ features            │ (None, 6)         │          0 │ -                 │
│ (InputLayer)        │                   │            │                   │
├─────────────────────┼───────────────────┼────────────┼───────────────────┤
│ a (Dense)           │ (None, 5)         │         35 │ features[0][0]    │
├─────────────────────┼───────────────────┼────────────┼───────────────────┤
│ b (Dense)           │ (None, 3)         │         21 │ features[0][0]    │
├─────────────────────┼───────────────────┼────────────┼───────────────────┤
│ cat (Concatenate)   │ (None, 8)         │          0 │ a[0][0], b[0][0]  │
├─────────────────────┼───────────────────┼────────────┼───────────────────┤
│ out (Dense)         │ (None, 1)         │          9 │ cat[0][0]         │
└─────────────────────┴───────────────────┴────────────┴───────────────────┘";
        assert_eq!(table(&format_summary("branched", &rows, &[], &[])), keras);

        let unbuilt = LayerSummary {
            built: false,
            ..LayerSummary::new("dense (Dense)", &[], 0)
        };
        let long = LayerSummary::new(
            "a_really_long_layer_name_that_goes_on_and_on (Dense)",
            &[3],
            15,
        );
        let keras = "\
┏━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━┓
┃ Layer (type)                    ┃ Output Shape           ┃       Param # ┃
┡━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━┩
│ dense (Dense)                   │ ?                      │   0 (unbuilt) │
├─────────────────────────────────┼────────────────────────┼───────────────┤
│ a_really_long_layer_name_that_… │ (None, 3)              │            15 │
│ (Dense)                         │                        │               │
└─────────────────────────────────┴────────────────────────┴───────────────┘";
        assert_eq!(
            table(&format_summary("m", &[unbuilt, long], &[], &[])),
            keras
        );
    }

    #[test]
    fn wrapping_as_rich() {
        assert_eq!(wrap("a b c", 3), vec!["a b", "c"]);
        assert_eq!(
            wrap("features[0][0], image[0][0]", 17),
            vec!["features[0][0],", "image[0][0]"]
        );
        assert_eq!(wrap("abcdefgh", 4), vec!["abc…"]);
        assert_eq!(wrap("", 4), vec![""]);
    }
}
