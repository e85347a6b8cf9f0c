//! [`Logs`]: what steps return, metrics fill and callbacks read.

use std::collections::BTreeMap;
use std::fmt;

/// An ordered map from a log name (`"loss"`, `"mae"`, `"val_loss"`) to its value.
///
/// Keys are kept sorted alphabetically, as Keras does when it hands logs to callbacks
/// (`pythonify_logs`): that is why the guide's first example prints `mae` before `loss`.
///
/// ```
/// use ferrokeras::Logs;
/// let mut logs = Logs::new();
/// logs.insert("loss", 0.5);
/// logs.insert("mae", 0.25);
/// assert_eq!(logs.get("loss"), Some(0.5));
/// assert_eq!(logs.keys().collect::<Vec<_>>(), vec!["loss", "mae"]);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Logs {
    values: BTreeMap<String, f64>,
}

impl Logs {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }
    /// Inserts or replaces a value.
    pub fn insert(&mut self, key: impl Into<String>, value: f64) {
        self.values.insert(key.into(), value);
    }
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.values.get(key).copied()
    }
    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }
    /// Keys in alphabetical order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }
    /// `(key, value)` pairs in alphabetical order of keys.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.values.iter().map(|(k, v)| (k.as_str(), *v))
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.values.len()
    }
    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
    /// Copies every entry of `other` into `self`, with `prefix` in front of each key.
    pub fn extend_prefixed(&mut self, other: &Logs, prefix: &str) {
        for (k, v) in other.iter() {
            self.insert(format!("{prefix}{k}"), v);
        }
    }
}

impl<K: Into<String>> FromIterator<(K, f64)> for Logs {
    fn from_iter<T: IntoIterator<Item = (K, f64)>>(iter: T) -> Self {
        let mut logs = Logs::new();
        for (k, v) in iter {
            logs.insert(k, v);
        }
        logs
    }
}

impl fmt::Display for Logs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.iter().map(|(k, v)| format!("{k}: {v:.4}")).collect();
        write!(f, "{{{}}}", parts.join(", "))
    }
}
