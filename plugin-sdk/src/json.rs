//! Dotted paths into JSON values, the one path syntax every weir plugin
//! config uses (`field = "sensor.temps.0"`).
//!
//! A path is split on `.`. Each segment is an object key; when the current
//! value is an array and the segment is a non-empty run of ASCII digits, it
//! is an index instead. The empty path means the whole value. Keys that
//! contain a `.` cannot be addressed.
//!
//! Two readers share that syntax: [`lookup`] walks a parsed [`Value`], and
//! the crate-private `find` reads one path straight from the payload bytes
//! without building a tree (what `Message::get_f64` and friends use). `find`
//! must accept, refuse and report exactly what `serde_json::from_slice::<Value>`
//! followed by [`lookup`] would, error texts included. It first runs a
//! small scanner of its own (`scan`) that answers the common case in one
//! plain pass; whenever that scanner is not sure (an error, a `\u`
//! escape, an exponent, …) it drives `serde_json`'s own parser over the
//! whole document instead, with visitors that keep nothing but the value
//! the path leads to.

mod scan;

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
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

/// The value a path leads to, as [`find`] reports it: scalars are kept,
/// containers only named (their contents were parsed and dropped).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Found<'a> {
    Null,
    Bool(bool),
    /// A non-negative integer (`Number::PosInt`).
    PosInt(u64),
    /// A negative integer (`Number::NegInt`).
    NegInt(i64),
    Float(f64),
    /// A string without escapes, borrowed from the payload.
    Str(&'a str),
    /// A string with escapes: only a parsed [`Value`] holds its text.
    EscapedStr,
    Array,
    Object,
}

impl Found<'_> {
    /// As `Value::as_f64`.
    pub(crate) fn as_f64(self) -> Option<f64> {
        match self {
            // The casts are `serde_json::Number::as_f64`'s own conversions.
            Found::PosInt(n) => Some(n as f64),
            Found::NegInt(n) => Some(n as f64),
            Found::Float(n) => Some(n),
            _ => None,
        }
    }

    /// As `Value::as_i64`.
    pub(crate) fn as_i64(self) -> Option<i64> {
        match self {
            Found::PosInt(n) => i64::try_from(n).ok(),
            Found::NegInt(n) => Some(n),
            _ => None,
        }
    }

    /// As `Value::as_bool`.
    pub(crate) fn as_bool(self) -> Option<bool> {
        match self {
            Found::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// Reads what `path` leads to in the JSON document `payload`: `Ok(None)` if
/// it leads nowhere, the parser's error if `payload` is not one valid JSON
/// document (even when the path was found before the error).
///
/// Same answer as `lookup(&serde_json::from_slice(payload)?, path)`,
/// without allocating: object keys and strings are borrowed, numbers parsed
/// and dropped. The whole document is still parsed, numbers and UTF-8
/// included, because validity is part of the answer, and a later duplicate
/// key replaces an earlier one as it does in a [`Value`].
pub(crate) fn find<'a>(
    payload: &'a [u8],
    path: &str,
) -> Result<Option<Found<'a>>, serde_json::Error> {
    // Measured on the boundary bench's payloads: the scanner takes about
    // half the instructions `serde_json` takes, natively and in wasm.
    scan::find(payload, path).or_else(|scan::Unsure| find_exact(payload, path))
}

/// [`find`] through `serde_json`'s parser: slower, exact by construction.
fn find_exact<'a>(payload: &'a [u8], path: &str) -> Result<Option<Found<'a>>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let found = Walk::new(path).deserialize(&mut de)?;
    de.end()?;
    Ok(found)
}

/// Visits one value on the way along a path: `rest` is what remains of the
/// path below this value, `None` once the value is the target.
struct Walk<'p> {
    rest: Option<&'p str>,
}

impl<'p> Walk<'p> {
    fn new(path: &'p str) -> Self {
        // The empty path is the whole value.
        Walk {
            rest: (!path.is_empty()).then_some(path),
        }
    }

    /// The segment to look up in this value, and the walk below it; `None`
    /// if this value is the target.
    fn step(&self) -> Option<(&'p str, Walk<'p>)> {
        let path = self.rest?;
        Some(match path.split_once('.') {
            Some((segment, rest)) => (segment, Walk { rest: Some(rest) }),
            None => (path, Walk { rest: None }),
        })
    }

    /// A scalar is the answer if it is the target; no path reaches into one.
    fn scalar<'de, E>(&self, found: Found<'de>) -> Result<Option<Found<'de>>, E> {
        Ok(self.rest.is_none().then_some(found))
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = Option<Found<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = Option<Found<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.scalar(Found::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        self.scalar(Found::Bool(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.scalar(Found::PosInt(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        // `Number::from(i64)` keeps a non-negative value as `PosInt`.
        self.scalar(match u64::try_from(v) {
            Ok(v) => Found::PosInt(v),
            Err(_) => Found::NegInt(v),
        })
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // A `Value` holds a non-finite float as `null`.
        self.scalar(if v.is_finite() {
            Found::Float(v)
        } else {
            Found::Null
        })
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        self.scalar(Found::Str(v))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        // The unescaped text lives in the parser's scratch buffer, briefly.
        self.scalar(Found::EscapedStr)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let Some((segment, below)) = self.step() else {
            Skip.visit_seq(seq)?;
            return Ok(Some(Found::Array));
        };
        let Some(wanted) = index(segment) else {
            Skip.visit_seq(seq)?;
            return Ok(None);
        };
        let mut found = None;
        let mut at = 0;
        loop {
            if at == wanted {
                match seq.next_element_seed(Walk { rest: below.rest })? {
                    Some(value) => found = value,
                    None => break,
                }
            } else if seq.next_element::<Skip>()?.is_none() {
                break;
            }
            at += 1;
        }
        Ok(found)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let Some((segment, below)) = self.step() else {
            Skip.visit_map(map)?;
            return Ok(Some(Found::Object));
        };
        let mut found = None;
        while let Some(matches) = map.next_key_seed(KeyIs(segment))? {
            if matches {
                // A later duplicate key wins, as in a `Value`'s map.
                found = map.next_value_seed(Walk { rest: below.rest })?;
            } else {
                map.next_value::<Skip>()?;
            }
        }
        Ok(found)
    }
}

/// Parses any value and keeps nothing. Unlike `serde::de::IgnoredAny`
/// (which `serde_json` skips without checking a number's range or a
/// string's UTF-8) it goes through `deserialize_any`, so it refuses exactly
/// what a `Value` refuses.
struct Skip;

impl<'de> de::Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_key::<Skip>()?.is_some() {
            map.next_value::<Skip>()?;
        }
        Ok(Skip)
    }
}

/// Reads an object key and tells whether it is `self.0`, without copying
/// it (unless it has escapes, which the parser unescapes into its scratch
/// buffer).
struct KeyIs<'p>(&'p str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
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

    /// `lookup` on the parsed payload, errors as text.
    fn via_tree(payload: &[u8], path: &str) -> Result<Option<Value>, String> {
        let root: Value = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        Ok(lookup(&root, path).cloned())
    }

    /// `find`, its scalars turned back into values. Containers and escaped
    /// strings are only named by `find`: their kind is checked against the
    /// tree, which then supplies the value. The scanner, when it is sure,
    /// must agree with `serde_json` to the bit.
    fn via_find(payload: &[u8], path: &str) -> Result<Option<Value>, String> {
        let exact = find_exact(payload, path);
        if let Ok(scanned) = scan::find(payload, path) {
            let exact = exact.as_ref().expect("the scanner accepts only valid JSON");
            assert_eq!(bits(scanned), bits(*exact), "{scanned:?} vs {exact:?}");
        }
        let found = exact.map_err(|e| e.to_string())?;
        Ok(found.map(|found| match found {
            Found::Null => Value::Null,
            Found::Bool(b) => json!(b),
            Found::PosInt(n) => json!(n),
            Found::NegInt(n) => json!(n),
            Found::Float(n) => json!(n),
            Found::Str(s) => json!(s),
            Found::EscapedStr | Found::Array | Found::Object => {
                let root: Value = serde_json::from_slice(payload).unwrap();
                let value = lookup(&root, path).unwrap().clone();
                let kind_matches = match found {
                    Found::EscapedStr => value.is_string(),
                    Found::Array => value.is_array(),
                    _ => value.is_object(),
                };
                assert!(kind_matches, "{found:?} is not {value}");
                value
            }
        }))
    }

    /// Compares floats by their bits: `-0.0` is not `0.0` here.
    fn bits(found: Option<Found<'_>>) -> Option<(Found<'_>, u64)> {
        found.map(|found| match found {
            Found::Float(f) => (Found::Null, f.to_bits()),
            other => (other, 0),
        })
    }

    #[test]
    fn find_answers_and_fails_exactly_as_parsing_then_lookup_does() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let payloads: &[&[u8]] = &[
            br#"{"temp": 31.5, "hum": 40, "status": "ok", "seq": 7}"#,
            br#" {"a": {"b": [1, -2, 2.5e3, "x\ty", null, true, {"c": "d"}]}} "#,
            br#"{"a": 1, "a": {"b": 2}}"#,
            br#"{"a": {"b": 2}, "a": 3}"#,
            br#"{"k\u00e9y": "v", "0": [10, 20], "": {"": 5}}"#,
            br#"[{"a": 1}, 18446744073709551615, 18446744073709551616, -9223372036854775808, -0, -0.0]"#,
            br#"{"n": 9223372036854775808, "m": -9223372036854775809, "e": 1e-400}"#,
            "\"caf\u{e9}\"".as_bytes(),
            b"42",
            b"",
            b"   ",
            b"not json",
            br#"{"temp": 31} trailing"#,
            br#"{"temp": 31,}"#,
            br#"{"temp": 1e400}"#,
            br#"{"temp": 31, "x": 1e400}"#,
            br#"{"temp": 31, "x": "\ud800"}"#,
            b"{\"temp\": 31, \"x\": \"\xff\"}",
            b"{\"temp\": 31, \"x\xff\": 1}",
            br#"{"temp": 31, "x": "\q"}"#,
            b"{\"temp\": 31, \"x\": \"a\x01\"}",
            br#"{"temp": 31, "x": [1, 2,]}"#,
            br#"{"temp": 31 "x": 1}"#,
            br#"{"temp": 01}"#,
            b"{\"temp\": 31",
            br#"{"temp": -}"#,
            br#"{temp: 31}"#,
            br#"{"temp" : -0 , "a":-0.0,"b":-9223372036854775809,"0":[0.1e1]}"#,
            br#"{"temp": 0.0000000000000000000000001, "a": 12345678901234567890.5}"#,
            br#"{"temp": 1.8446744073709551615, "a": 18446744073709551615.0}"#,
            br#"{"temp": "x\"y\\z\/\b\f\n\r\t", "a": {"b\n": 1}}"#,
            "{\"temp\": \"h\u{e9}llo \u{1f600}\", \"a\": [\"\u{e9}\"]}".as_bytes(),
            b"{\"temp\": \"\xe9\"}",
            b"{\"temp\": 1}\x00",
            b"\t\r\n {\"temp\"\t:\r\n[ ]\n}\n",
            br#"{"temp": [1, [2, [3]], {"x": []}, {}], "a": true, "b": false, "c": null}"#,
            br#"{"temp": tru}"#,
            br#"{"temp": nul, "x": 1}"#,
            br#"{"temp": 1.}"#,
            br#"{"temp": .5}"#,
            br#"{"temp": +1}"#,
            br#"{"temp": 1, }"#,
            br#"[1 2]"#,
            br#"{"temp": 1}}"#,
            deep.as_bytes(),
        ];
        let paths = [
            "",
            ".",
            "..",
            "temp",
            "temp.x",
            "hum",
            "status",
            "seq",
            "a",
            "a.b",
            "a.c",
            "a.b.0",
            "a.b.1",
            "a.b.2",
            "a.b.3",
            "a.b.4",
            "a.b.5",
            "a.b.6",
            "a.b.6.c",
            "a.b.7",
            "a.b.+1",
            "a.b.99999999999999999999999",
            "k\u{e9}y",
            "0",
            "0.1",
            "0.a",
            "1",
            "2",
            "3",
            "4",
            "5",
            "n",
            "m",
            "e",
            "x",
        ];
        for payload in payloads {
            for path in paths {
                assert_eq!(
                    via_find(payload, path),
                    via_tree(payload, path),
                    "payload {:?}, path {path:?}",
                    String::from_utf8_lossy(payload)
                );
            }
        }
    }

    #[test]
    fn the_scanner_converts_numbers_to_the_bit_as_serde_json_does() {
        // A fixed-seed generator: numbers of every length and scale.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut compared = 0;
        for _ in 0..20_000 {
            let digits = (next() % 21) as usize + 1;
            let mut text: String = (0..digits)
                .map(|_| char::from(b'0' + (next() % 10) as u8))
                .collect();
            let point = (next() % (digits as u64 + 2)) as usize;
            if point < digits {
                text.insert(point, '.');
            }
            if text.starts_with('.') {
                text.insert(0, '0');
            }
            if next() % 2 == 0 {
                text.insert(0, '-');
            }
            let payload = format!("{{\"n\": {text}}}");
            let exact = find_exact(payload.as_bytes(), "n");
            if let Ok(scanned) = scan::find(payload.as_bytes(), "n") {
                assert_eq!(bits(scanned), bits(exact.unwrap()), "{text}");
                compared += 1;
            }
        }
        assert!(compared > 10_000, "only {compared} numbers compared");
    }

    #[test]
    fn lookup_mut_reaches_the_same_value_as_lookup() {
        let mut v = json!({"a": [{"b": 1}]});
        *lookup_mut(&mut v, "a.0.b").unwrap() = json!(2);
        assert_eq!(v, json!({"a": [{"b": 2}]}));
    }
}
