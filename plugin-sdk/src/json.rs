//! Dotted paths into JSON values, the one path syntax every weir plugin
//! config uses (`field = "sensor.temps.0"`).
//!
//! A path is split on `.`. Each segment is an object key; when the current
//! value is an array and the segment is a non-empty run of ASCII digits, it
//! is an index instead. The empty path means the whole value. Keys that
//! contain a `.` cannot be addressed.

use serde_json::Value;

/// The value at `path` inside `root`, if there is one.
///
/// ```
/// # use serde_json::json;
/// let v = json!({"a": {"b": [10, 20]}});
/// assert_eq!(weir_sdk::json::lookup(&v, "a.b.1"), Some(&json!(20)));
/// assert_eq!(weir_sdk::json::lookup(&v, "a.c"), None);
/// assert_eq!(weir_sdk::json::lookup(&v, ""), Some(&v));
/// ```
pub fn lookup<'v>(root: &'v Value, path: &str) -> Option<&'v Value> {
    if path.is_empty() {
        return Some(root);
    }
    path.split('.')
        .try_fold(root, |value, segment| match value {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => items.get(index(segment)?),
            _ => None,
        })
}

/// Like [`lookup`], for changing the value in place.
pub fn lookup_mut<'v>(root: &'v mut Value, path: &str) -> Option<&'v mut Value> {
    if path.is_empty() {
        return Some(root);
    }
    path.split('.')
        .try_fold(root, |value, segment| match value {
            Value::Object(map) => map.get_mut(segment),
            Value::Array(items) => items.get_mut(index(segment)?),
            _ => None,
        })
}

/// A segment is an index only if it is all digits: `usize::from_str` alone
/// would also take `+1`.
fn index(segment: &str) -> Option<usize> {
    if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
        segment.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn digits_index_arrays_but_are_plain_keys_in_objects() {
        let v = json!({"0": "key", "list": ["a", "b"]});
        assert_eq!(lookup(&v, "0"), Some(&json!("key")));
        assert_eq!(lookup(&v, "list.1"), Some(&json!("b")));
        assert_eq!(lookup(&v, "list.+1"), None);
        assert_eq!(lookup(&v, "list.2"), None);
        assert_eq!(lookup(&v, "list.x"), None);
        assert_eq!(lookup(&v, "0.x"), None);
    }

    #[test]
    fn lookup_mut_reaches_the_same_value_as_lookup() {
        let mut v = json!({"a": [{"b": 1}]});
        *lookup_mut(&mut v, "a.0.b").unwrap() = json!(2);
        assert_eq!(v, json!({"a": [{"b": 2}]}));
    }
}
