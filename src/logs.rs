//! [`Logs`]: what steps return, metrics fill and callbacks read.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

/// A computation that gives a log value when first read (see [`Logs::insert_deferred`]).
pub type DeferredValue = Box<dyn FnOnce() -> f64 + Send>;

/// A value computed once, when first read.
struct Deferred {
    value: OnceLock<f64>,
    compute: Mutex<Option<DeferredValue>>,
}

impl Deferred {
    fn get(&self) -> f64 {
        *self.value.get_or_init(|| {
            let f = self
                .compute
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            f.map_or(f64::NAN, |f| f())
        })
    }
}

/// One entry: a number, or one whose computation (a read from a device) waits until it is read.
#[derive(Clone)]
enum Value {
    Ready(f64),
    Deferred(Arc<Deferred>),
}

impl Value {
    fn get(&self) -> f64 {
        match self {
            Value::Ready(v) => *v,
            Value::Deferred(d) => d.get(),
        }
    }
    fn is_pending(&self) -> bool {
        matches!(self, Value::Deferred(d) if d.value.get().is_none())
    }
}

/// An ordered map from a log name (`"loss"`, `"mae"`, `"val_loss"`) to its value.
///
/// Keys are kept sorted alphabetically, as Keras does when it hands logs to callbacks
/// (`pythonify_logs`): that is why the guide's first example prints `mae` before `loss`.
///
/// A value may be *deferred* ([`Logs::insert_deferred`]): it is computed when first read, and
/// then kept. Metrics on a GPU report their results that way, so that a training step waits for
/// the device only when a value is actually read (by the progress bar when it redraws, or by a
/// callback that looks), not at every step.
///
/// ```
/// use ferrokeras::Logs;
/// let mut logs = Logs::new();
/// logs.insert("loss", 0.5);
/// logs.insert("mae", 0.25);
/// assert_eq!(logs.get("loss"), Some(0.5));
/// assert_eq!(logs.keys().collect::<Vec<_>>(), vec!["loss", "mae"]);
/// ```
#[derive(Clone, Default)]
pub struct Logs {
    values: BTreeMap<String, Value>,
}

impl Logs {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }
    /// Inserts or replaces a value.
    pub fn insert(&mut self, key: impl Into<String>, value: f64) {
        self.values.insert(key.into(), Value::Ready(value));
    }
    /// Inserts or replaces a value that `compute` gives when the value is first read (by
    /// [`Logs::get`], [`Logs::iter`], formatting or comparison); copies of these logs share it,
    /// so it is computed at most once. A value never read is never computed.
    ///
    /// ```
    /// use ferrokeras::Logs;
    /// let mut logs = Logs::new();
    /// logs.insert_deferred("loss", || 0.5);
    /// assert!(logs.is_pending("loss"));
    /// let copy = logs.clone();
    /// assert_eq!(copy.get("loss"), Some(0.5));
    /// assert!(!logs.is_pending("loss"));
    /// ```
    pub fn insert_deferred(
        &mut self,
        key: impl Into<String>,
        compute: impl FnOnce() -> f64 + Send + 'static,
    ) {
        let d = Deferred {
            value: OnceLock::new(),
            compute: Mutex::new(Some(Box::new(compute))),
        };
        self.values.insert(key.into(), Value::Deferred(Arc::new(d)));
    }
    /// The value of `key`, if present (computed now if it was deferred and not yet read).
    pub fn get(&self, key: &str) -> Option<f64> {
        self.values.get(key).map(Value::get)
    }
    /// Whether `key` holds a deferred value that no one has read yet.
    pub fn is_pending(&self, key: &str) -> bool {
        self.values.get(key).is_some_and(Value::is_pending)
    }
    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }
    /// Keys in alphabetical order (reads no value).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }
    /// `(key, value)` pairs in alphabetical order of keys (reads every value).
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.get()))
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.values.len()
    }
    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
    /// Copies every entry of `other` into `self`, with `prefix` in front of each key (deferred
    /// values stay deferred, and shared).
    pub fn extend_prefixed(&mut self, other: &Logs, prefix: &str) {
        for (k, v) in &other.values {
            self.values.insert(format!("{prefix}{k}"), v.clone());
        }
    }
}

impl PartialEq for Logs {
    /// Same keys and equal values (reads every value).
    fn eq(&self, other: &Self) -> bool {
        self.values.len() == other.values.len()
            && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl fmt::Debug for Logs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
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
