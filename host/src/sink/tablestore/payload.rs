//! The payload's top-level JSON object, read for [`super::encode`]: keys
//! and strings borrowed from the payload, in the order and with the
//! duplicates a decoded `serde_json::Map` has, and looked into by templates
//! through [`Payload`].
//!
//! What this module must never do: read a payload to anything other than
//! what decoding it into a `serde_json::Value` gives, or word a refusal
//! differently (the tests in `encode` and here hold it to that).

use std::borrow::Cow;
use std::cell::OnceCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value as Json;

use crate::template::{self, Payload, json_path};

/// A top-level payload value, as read from the payload.
#[derive(Clone, Debug)]
pub(super) enum Entry<'b> {
    /// A string: borrowed from the payload unless it has escapes.
    Str(Cow<'b, str>),
    /// Anything else: null, a boolean or a number (none of which
    /// allocates), or a nested object or array.
    Json(Json),
}

impl From<Json> for Entry<'_> {
    fn from(value: Json) -> Self {
        match value {
            Json::String(s) => Entry::Str(Cow::Owned(s)),
            other => Entry::Json(other),
        }
    }
}

impl Entry<'_> {
    fn to_json(&self) -> Json {
        match self {
            Entry::Str(s) => Json::String(s.clone().into_owned()),
            Entry::Json(v) => v.clone(),
        }
    }
}

/// Reads the top-level JSON object of `payload` into `entries`, sorted by
/// key with the last of equal keys kept: what iterating a decoded
/// `serde_json::Map` gives.
///
/// Three readers, each taking over what the one before leaves: [`scan`]
/// for the common flat object, `serde_json` visiting the object
/// ([`TopLevel`]) for escapes and nested values, and `serde_json` decoding
/// a `Value` for the rest, which also words every reason a payload is
/// refused, as it always has.
pub(super) fn read_object<'b>(
    payload: &'b [u8],
    entries: &mut Vec<(Cow<'b, str>, Entry<'b>)>,
) -> Result<(), String> {
    entries.clear();
    let read = scan::object(payload, entries).is_some() || {
        entries.clear();
        let mut de = serde_json::Deserializer::from_slice(payload);
        TopLevel(entries)
            .deserialize(&mut de)
            .and_then(|()| de.end())
            .is_ok()
    };
    if read {
        entries.sort_by(|a, b| by_name(&a.0, &b.0));
        entries.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        return Ok(());
    }
    entries.clear();
    let json: Json =
        serde_json::from_slice(payload).map_err(|e| format!("the payload is not JSON: {e}"))?;
    let Json::Object(object) = json else {
        return Err("the payload is not a JSON object: its fields become the row's fields".into());
    };
    // An object comes here only when its first key is `serde_json`'s
    // raw-value token (see `TopLevel`): take it as `Value` read it.
    entries.extend(object.into_iter().map(|(k, v)| (Cow::Owned(k), v.into())));
    Ok(())
}

/// The fast reader of a flat top-level object: keys and strings without
/// escapes, numbers, booleans and nulls, nothing nested. It reads what
/// `serde_json` reads, to the same values, and gives up (`None`) on
/// anything else, valid or not, for `serde_json` to read or refuse.
mod scan {
    use std::borrow::Cow;

    use serde_json::{Number, Value as Json};

    use super::{Entry, RAW_VALUE_TOKEN};

    pub(super) fn object<'b>(
        payload: &'b [u8],
        entries: &mut Vec<(Cow<'b, str>, Entry<'b>)>,
    ) -> Option<()> {
        // Valid as a whole, the text is valid between any two ASCII
        // delimiters: strings are sliced without checking them again.
        let text = std::str::from_utf8(payload).ok()?;
        let p = text.as_bytes();
        let mut i = blank(p, 0);
        if p.get(i) != Some(&b'{') {
            return None;
        }
        i = blank(p, i + 1);
        if p.get(i) == Some(&b'}') {
            return (blank(p, i + 1) == p.len()).then_some(());
        }
        loop {
            if p.get(i) != Some(&b'"') {
                return None;
            }
            let (key, next) = string(text, i + 1)?;
            if entries.is_empty() && key == RAW_VALUE_TOKEN {
                return None;
            }
            i = blank(p, next);
            if p.get(i) != Some(&b':') {
                return None;
            }
            i = blank(p, i + 1);
            let (entry, next) = match *p.get(i)? {
                b'"' => {
                    let (s, next) = string(text, i + 1)?;
                    (Entry::Str(Cow::Borrowed(s)), next)
                }
                b't' if p[i..].starts_with(b"true") => (Entry::Json(Json::Bool(true)), i + 4),
                b'f' if p[i..].starts_with(b"false") => (Entry::Json(Json::Bool(false)), i + 5),
                b'n' if p[i..].starts_with(b"null") => (Entry::Json(Json::Null), i + 4),
                b'-' | b'0'..=b'9' => number(text, i)?,
                _ => return None,
            };
            entries.push((Cow::Borrowed(key), entry));
            i = blank(p, next);
            match *p.get(i)? {
                b',' => i = blank(p, i + 1),
                b'}' => return (blank(p, i + 1) == p.len()).then_some(()),
                _ => return None,
            }
        }
    }

    /// Past JSON whitespace from `i`.
    fn blank(p: &[u8], mut i: usize) -> usize {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = p.get(i) {
            i += 1;
        }
        i
    }

    /// The string whose text starts at `start`, and the index past its
    /// closing quote; `None` if it has an escape or a control character.
    fn string(text: &str, start: usize) -> Option<(&str, usize)> {
        const ONES: u64 = u64::from_ne_bytes([1; 8]);
        const HIGH: u64 = ONES * 0x80;
        let p = text.as_bytes();
        let mut i = start;
        // Eight bytes at a time while none is `"`, `\\` or below 0x20.
        while let Some(chunk) = p.get(i..i + 8) {
            let v = u64::from_ne_bytes(chunk.try_into().unwrap());
            let quote = (v ^ (ONES * u64::from(b'"'))).wrapping_sub(ONES);
            let backslash = (v ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES);
            let control = v.wrapping_sub(ONES * 0x20);
            if (quote | backslash | control) & !v & HIGH != 0 {
                break;
            }
            i += 8;
        }
        loop {
            match *p.get(i)? {
                b'"' => break,
                b'\\' | 0..0x20 => return None,
                _ => i += 1,
            }
        }
        Some((&text[start..i], i + 1))
    }

    /// The number at `start` as `serde_json` reads it, and the index past
    /// it; `None` for what it reads another way (integers beyond 64 bits)
    /// or refuses.
    fn number(text: &str, start: usize) -> Option<(Entry<'static>, usize)> {
        let p = text.as_bytes();
        let digit = |i: usize| p.get(i).is_some_and(u8::is_ascii_digit);
        // The index past the digits from `i` on; `None` when there is none.
        let digits = |mut i: usize| {
            if !digit(i) {
                return None;
            }
            while digit(i) {
                i += 1;
            }
            Some(i)
        };
        let mut i = start;
        let negative = p[i] == b'-';
        if negative {
            i += 1;
        }
        match p.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => i = digits(i)?,
            _ => return None,
        }
        let mut float = false;
        if p.get(i) == Some(&b'.') {
            i = digits(i + 1)?;
            float = true;
        }
        if let Some(b'e' | b'E') = p.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = p.get(i) {
                i += 1;
            }
            i = digits(i)?;
            float = true;
        }
        let text = &text[start..i];
        let number = if float {
            // Both parse to the nearest double (`serde_json` with
            // `float_roundtrip`, which weir turns on); it refuses what
            // overflows.
            let f: f64 = text.parse().ok()?;
            Number::from_f64(f)?
        } else if negative {
            match text.parse::<i64>().ok()? {
                // `serde_json` reads `-0` as the double -0.0.
                0 => Number::from_f64(-0.0)?,
                n => Number::from(n),
            }
        } else {
            Number::from(text.parse::<u64>().ok()?)
        };
        Some((Entry::Json(Json::Number(number)), i))
    }
}

/// `a.cmp(b)`, settled on the first byte when it can be: names mostly
/// differ there, and this spares a `memcmp` call per comparison.
pub(super) fn by_name(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.as_bytes().first(), b.as_bytes().first()) {
        (Some(x), Some(y)) if x != y => x.cmp(y),
        _ => a.cmp(b),
    }
}

/// The entry named `key` (entries are sorted by key).
pub(super) fn find(entries: &[(Cow<'_, str>, Entry<'_>)], key: &str) -> Option<usize> {
    entries.binary_search_by(|(k, _)| k.as_ref().cmp(key)).ok()
}

/// The key `serde_json` reads a raw value from, when it is an object's
/// first key (feature `raw_value`, which weir's dependencies turn on).
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Reads a top-level object into entries.
struct TopLevel<'v, 'b>(&'v mut Vec<(Cow<'b, str>, Entry<'b>)>);

impl<'b> DeserializeSeed<'b> for TopLevel<'_, 'b> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'b>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'b> Visitor<'b> for TopLevel<'_, 'b> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'b>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(Text)? {
            if self.0.is_empty() && key == RAW_VALUE_TOKEN {
                // `Value` would read this object as a raw value; leave it
                // to `Value`.
                return Err(de::Error::custom("raw value"));
            }
            let entry = map.next_value_seed(EntrySeed)?;
            self.0.push((key, entry));
        }
        Ok(())
    }
}

/// A string, borrowed when it has no escapes.
struct Text;

impl<'b> DeserializeSeed<'b> for Text {
    type Value = Cow<'b, str>;

    fn deserialize<D: de::Deserializer<'b>>(self, d: D) -> Result<Cow<'b, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'b> Visitor<'b> for Text {
    type Value = Cow<'b, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, s: &'b str) -> Result<Cow<'b, str>, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E>(self, s: &str) -> Result<Cow<'b, str>, E> {
        Ok(Cow::Owned(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Cow<'b, str>, E> {
        Ok(Cow::Owned(s))
    }
}

/// One top-level value. Scalars are taken as `Value` takes them; nested
/// objects and arrays are handed to `Value` itself.
struct EntrySeed;

impl<'b> DeserializeSeed<'b> for EntrySeed {
    type Value = Entry<'b>;

    fn deserialize<D: de::Deserializer<'b>>(self, d: D) -> Result<Entry<'b>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'b> Visitor<'b> for EntrySeed {
    type Value = Entry<'b>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Entry<'b>, E> {
        Ok(Entry::Json(Json::Null))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Entry<'b>, E> {
        Ok(Entry::Json(Json::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Entry<'b>, E> {
        Ok(Entry::Json(Json::Number(v.into())))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Entry<'b>, E> {
        Ok(Entry::Json(Json::Number(v.into())))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Entry<'b>, E> {
        Ok(Entry::Json(
            serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number),
        ))
    }

    fn visit_borrowed_str<E>(self, s: &'b str) -> Result<Entry<'b>, E> {
        Ok(Entry::Str(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Entry<'b>, E> {
        Ok(Entry::Str(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Entry<'b>, E> {
        Ok(Entry::Str(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'b>>(self, seq: A) -> Result<Entry<'b>, A::Error> {
        let d = de::value::SeqAccessDeserializer::new(seq);
        serde::Deserialize::deserialize(d).map(Entry::Json)
    }

    fn visit_map<A: MapAccess<'b>>(self, map: A) -> Result<Entry<'b>, A::Error> {
        let d = de::value::MapAccessDeserializer::new(map);
        serde::Deserialize::deserialize(d).map(Entry::Json)
    }
}

/// The entries as templates look into them.
pub(super) struct Object<'e, 'b> {
    pub(super) entries: &'e [(Cow<'b, str>, Entry<'b>)],
    /// `${payload}`, built only when a template asks for it.
    pub(super) whole: OnceCell<Json>,
}

impl Payload for Object<'_, '_> {
    fn whole(&self) -> template::Value<'_> {
        template::Value::Json(self.whole.get_or_init(|| {
            Json::Object(
                self.entries
                    .iter()
                    .map(|(k, e)| (k.clone().into_owned(), e.to_json()))
                    .collect(),
            )
        }))
    }

    fn get(&self, path: &[String]) -> Option<template::Value<'_>> {
        let (key, rest) = path.split_first()?;
        match &self.entries[find(self.entries, key)?].1 {
            // `plain` writes a string as the same text either way.
            Entry::Str(s) => rest.is_empty().then_some(template::Value::Str(s)),
            Entry::Json(json) => json_path(json, rest).map(template::Value::Json),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_numbers_read_to_the_values_serde_json_reads() {
        let mut next = super::super::random(0x2545_f491_4f6c_dd1d);
        let mut compared = 0;
        for _ in 0..200_000 {
            let mut text = String::new();
            if next(2) == 0 {
                text.push('-');
            }
            let digits = 1 + next(25);
            for d in 0..digits {
                let c = if d == 0 && digits > 1 {
                    1 + next(9)
                } else {
                    next(10)
                };
                text.push(char::from(b'0' + c as u8));
            }
            if next(2) == 0 {
                text.push('.');
                for _ in 0..1 + next(20) {
                    text.push(char::from(b'0' + next(10) as u8));
                }
            }
            if next(3) == 0 {
                text.push_str(["e", "E", "e+", "e-"][next(4) as usize]);
                text.push_str(&next(400).to_string());
            }
            let payload = format!(r#"{{"n": {text}}}"#);
            let mut entries = Vec::new();
            let scanned = scan::object(payload.as_bytes(), &mut entries);
            let decoded = serde_json::from_str::<Json>(&payload);
            match (scanned, decoded) {
                (Some(()), Ok(json)) => {
                    let Entry::Json(n) = &entries[0].1 else {
                        panic!("{text}")
                    };
                    assert_eq!(Some(n), json.get("n"), "{text}");
                    // -0.0 == 0.0: compare the bits too.
                    assert_eq!(
                        n.as_f64().map(f64::to_bits),
                        json["n"].as_f64().map(f64::to_bits),
                        "{text}"
                    );
                    assert_eq!(n.is_f64(), json["n"].is_f64(), "{text}");
                    compared += 1;
                }
                (Some(()), Err(e)) => panic!("{text}: scanned, but serde_json says {e}"),
                // Left to serde_json: integers beyond 64 bits, overflows.
                (None, _) => {}
            }
        }
        assert!(compared > 150_000, "{compared}");
    }
}
