//! The one template engine every sink uses: `${...}` placeholders in topics,
//! payloads, console lines and (later) SQL statements.
//!
//! A template is parsed once ([`Template::parse`]) and rendered per message
//! ([`Template::render`]). Syntax:
//!
//! - `${name}` or `${name.path.0.x}`: a variable (see below). A name is any
//!   run of characters other than `.`, `}`, `$`, `{` and whitespace; dots
//!   separate path segments; an all-digit segment also indexes arrays.
//! - `$${` renders as a literal `${` (the only escape). A `$` that is not
//!   followed by `{` is literal text, so `$$5` and `cost: $` need no escape.
//!
//! Resolution, in this order (what EMQX users expect when they write
//! `${temp}` for a payload field):
//!
//! 1. builtins: `topic`, `ts` (milliseconds since the epoch), `qos`,
//!    `clientid` (the field named `clientid` if there is one: an MQTT
//!    subscriber never sees the publisher's client id), `payload` (the whole
//!    payload: the decoded JSON when the caller gives it, else the raw text)
//!    and `payload.<path>` (a path into the decoded JSON);
//! 2. a message field (topic capture or plugin-set field) whose name is the
//!    whole text between the braces;
//! 3. the payload path `name.rest` in the decoded JSON.
//!
//! Anything else is undefined: [`Template::render`] returns [`Undefined`] and
//! the caller decides whether that is an error or a NULL (EMQX's
//! `undefined_vars_as_null`; [`Template::render_or_null`] is the NULL side).
//!
//! What this module must never do: escape. Literal text is copied as is and
//! every substituted value goes through the caller's `escape` function, so
//! SQL, JSON and topic rendering each own their quoting rules.
//! [`plain`] is the escape for text that needs none.
//!
//! SQL (the TDengine sink) is the one mode that also looks at the literal
//! text around a placeholder: [`Template::render_sql`] treats a placeholder
//! written between single quotes (`'${clientid}'`, as EMQX users write
//! string values) as one quoted value, so that a missing value becomes a
//! bare `NULL` rather than the string `'NULL'`. See [`sql_value`] for how
//! values become SQL literals.

use std::borrow::Cow;
use std::fmt;

use crate::message::Message;

/// A parsed template.
#[derive(Clone)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Clone, Debug)]
enum Part {
    /// Text copied as is (`$${` already turned into `${`).
    Literal(String),
    /// A placeholder.
    Var {
        variable: Variable,
        /// The text between the braces, for error messages.
        text: String,
        /// For [`Variable::Name`]: the payload path to fall back on.
        path: Vec<String>,
    },
}

/// A placeholder of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Variable {
    /// `${topic}`.
    Topic,
    /// `${ts}`: milliseconds since the Unix epoch.
    Ts,
    /// `${qos}`.
    Qos,
    /// `${clientid}`: the field named `clientid`, if any.
    ClientId,
    /// `${payload}` (empty path) or `${payload.a.0.b}`.
    Payload(Vec<String>),
    /// `${device}`, `${temp.x}`: a field named by the whole text, else that
    /// path into the payload.
    Name(String),
}

/// A template that cannot be parsed. Offsets are byte offsets into the
/// template text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `${` without a closing `}`.
    #[error("unterminated `${{` at byte {offset}")]
    Unterminated {
        /// Where the `${` starts.
        offset: usize,
    },
    /// `${}`.
    #[error("empty variable name at byte {offset}")]
    EmptyName {
        /// Where the `${` starts.
        offset: usize,
    },
    /// A name or path that is not allowed, e.g. `${a..b}` or `${topic.x}`.
    #[error("bad variable `${{{text}}}` at byte {offset}: {reason}")]
    BadPath {
        /// Where the `${` starts.
        offset: usize,
        /// The text between the braces.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// What a variable resolved to, handed to the caller's escape function.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    /// Text: the topic, a field, the raw payload.
    Str(&'a str),
    /// A JSON value from the payload (strings included: the escape decides
    /// whether to quote them).
    Json(&'a serde_json::Value),
    /// `${ts}` and `${qos}`.
    Int(i64),
    /// An undefined variable rendered by [`Template::render_or_null`].
    Null,
}

/// A variable that resolved to nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undefined {
    /// The text between the braces.
    pub variable: String,
}

impl fmt::Display for Undefined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "variable ${{{}}} is undefined", self.variable)
    }
}

impl std::error::Error for Undefined {}

/// The decoded payload, as placeholders look into it.
///
/// [`Template::render`] and its siblings take a `serde_json::Value`; a
/// caller that decodes payloads into a form of its own (the Tablestore
/// sink borrows strings from the payload instead of building a `Value`)
/// implements this and calls [`Template::render_payload`]. Such a form may
/// hand strings over as [`Value::Str`] rather than `Value::Json(String)`,
/// so it is only for escapes that treat the two alike, as [`plain`] does.
pub trait Payload {
    /// `${payload}`: the whole payload.
    fn whole(&self) -> Value<'_>;
    /// The value at `path` (at least one segment): object keys, and array
    /// indexes for all-digit segments.
    fn get(&self, path: &[String]) -> Option<Value<'_>>;
}

impl Payload for serde_json::Value {
    fn whole(&self) -> Value<'_> {
        Value::Json(self)
    }

    fn get(&self, path: &[String]) -> Option<Value<'_>> {
        json_path(self, path).map(Value::Json)
    }
}

/// A message's payload, decoded as JSON the first time a placeholder looks
/// into it: a template whose variables all resolve from the topic, the
/// fields or the timestamp (`alerts/${device}`) costs no decoding. It
/// renders as [`Template::render`] does with the decoded payload when it
/// is JSON, and with `None` when it is not.
pub struct LazyJson<'m> {
    bytes: &'m [u8],
    decoded: std::cell::OnceCell<Decoded>,
}

enum Decoded {
    Json(serde_json::Value),
    /// Not JSON: `${payload}` is its text, lossily.
    Text(String),
}

impl<'m> LazyJson<'m> {
    /// The payload `bytes`, not decoded yet.
    pub fn new(bytes: &'m [u8]) -> Self {
        LazyJson {
            bytes,
            decoded: std::cell::OnceCell::new(),
        }
    }

    fn decoded(&self) -> &Decoded {
        self.decoded
            .get_or_init(|| match serde_json::from_slice(self.bytes) {
                Ok(json) => Decoded::Json(json),
                Err(_) => Decoded::Text(String::from_utf8_lossy(self.bytes).into_owned()),
            })
    }
}

impl Payload for LazyJson<'_> {
    fn whole(&self) -> Value<'_> {
        match self.decoded() {
            Decoded::Json(json) => Payload::whole(json),
            Decoded::Text(text) => Value::Str(text),
        }
    }

    fn get(&self, path: &[String]) -> Option<Value<'_>> {
        match self.decoded() {
            Decoded::Json(json) => Payload::get(json, path),
            Decoded::Text(_) => None,
        }
    }
}

/// The escape for plain text: strings (JSON strings included) as they are,
/// other JSON values compact, integers in decimal, NULL as `null`.
pub fn plain(value: Value<'_>, out: &mut String) {
    match value {
        Value::Str(s) => out.push_str(s),
        Value::Json(serde_json::Value::String(s)) => out.push_str(s),
        Value::Json(json) => {
            use fmt::Write as _;
            let _ = write!(out, "{json}");
        }
        Value::Int(i) => {
            use fmt::Write as _;
            let _ = write!(out, "{i}");
        }
        Value::Null => out.push_str("null"),
    }
}

/// Appends `s` as the body of a single-quoted SQL string (TDengine's
/// grammar): `\` and `'` are backslash-escaped, and newline, carriage
/// return and tab are written as `\n`, `\r`, `\t`, which TDengine reads
/// back as the same characters. Everything else (double quotes, emoji, any
/// other Unicode) is copied as is.
pub fn sql_escape(s: &str, out: &mut String) {
    let bytes = s.as_bytes();
    let mut copied = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped = match b {
            b'\\' => "\\\\",
            b'\'' => "\\'",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            _ => continue,
        };
        out.push_str(&s[copied..i]);
        out.push_str(escaped);
        copied = i + 1;
    }
    out.push_str(&s[copied..]);
}

/// Appends `value` as a TDengine SQL literal.
///
/// - Text (topic, fields, JSON strings) becomes a quoted, escaped string
///   ([`sql_escape`]), so a value can never end the string or the statement.
/// - Numbers (JSON numbers, `${ts}`, `${qos}`) are written as numbers and
///   JSON booleans as `TRUE` / `FALSE` — unless `quoted`, when the template
///   already put the placeholder between quotes and they are written as
///   quoted text (`'23'`), which TDengine converts to the column's type.
/// - JSON objects and arrays become their compact JSON text, quoted.
/// - JSON `null` and undefined variables ([`Value::Null`]) are `NULL`,
///   without quotes even when the placeholder is quoted.
pub fn sql_value(value: Value<'_>, quoted: bool, out: &mut String) {
    use fmt::Write as _;
    let text = match value {
        Value::Null | Value::Json(serde_json::Value::Null) => return out.push_str("NULL"),
        Value::Str(s) => s,
        Value::Json(serde_json::Value::String(s)) => s.as_str(),
        Value::Int(i) => {
            if quoted {
                let _ = write!(out, "'{i}'");
            } else {
                let _ = write!(out, "{i}");
            }
            return;
        }
        Value::Json(serde_json::Value::Number(n)) => {
            if quoted {
                let _ = write!(out, "'{n}'");
            } else {
                let _ = write!(out, "{n}");
            }
            return;
        }
        Value::Json(serde_json::Value::Bool(b)) => {
            return out.push_str(match (quoted, *b) {
                (true, true) => "'true'",
                (true, false) => "'false'",
                (false, true) => "TRUE",
                (false, false) => "FALSE",
            });
        }
        Value::Json(json) => {
            out.push('\'');
            sql_escape(&json.to_string(), out);
            out.push('\'');
            return;
        }
    };
    out.push('\'');
    sql_escape(text, out);
    out.push('\'');
}

/// Scans SQL text for string quotes (`'` or `"`, backslash escapes inside),
/// starting with `open` already open. Returns the quote open at the end,
/// and whether the text's last byte opened it.
fn scan_quotes(text: &str, mut open: Option<u8>) -> (Option<u8>, bool) {
    let bytes = text.as_bytes();
    let mut opened_at = None;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match open {
            Some(_) if c == b'\\' => i += 1,
            Some(q) if c == q => open = None,
            Some(_) => {}
            None if c == b'\'' || c == b'"' => {
                open = Some(c);
                opened_at = Some(i);
            }
            None => {}
        }
        i += 1;
    }
    let last = open.is_some() && opened_at.is_some_and(|at| at + 1 == bytes.len());
    (open, last)
}

/// Appends `value`'s text for the inside of a string the template opened
/// with `quote`: escaped as [`sql_escape`] does (plus `"` inside a
/// double-quoted string), and not quoted again.
fn sql_text(value: Value<'_>, quote: u8, out: &mut String) {
    let mut text = String::new();
    plain(value, &mut text);
    let start = out.len();
    sql_escape(&text, out);
    if quote == b'"' && out[start..].contains('"') {
        let escaped = out[start..].replace('"', "\\\"");
        out.truncate(start);
        out.push_str(&escaped);
    }
}

impl Template {
    /// Parses a template. See the module doc for the syntax.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let bytes = text.as_bytes();
        let mut i = 0;
        let mut copied = 0;
        while i < bytes.len() {
            if bytes[i] != b'$' {
                i += 1;
                continue;
            }
            // `$${` → literal `${`.
            if bytes[i..].starts_with(b"$${") {
                literal.push_str(&text[copied..i]);
                literal.push_str("${");
                i += 3;
                copied = i;
                continue;
            }
            if !bytes[i..].starts_with(b"${") {
                i += 1;
                continue;
            }
            literal.push_str(&text[copied..i]);
            let offset = i;
            let start = i + 2;
            let end = text[start..]
                .find('}')
                .map(|e| start + e)
                .ok_or(TemplateError::Unterminated { offset })?;
            let inner = &text[start..end];
            let (variable, path) = parse_variable(inner, offset)?;
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Var {
                variable,
                text: inner.to_owned(),
                path,
            });
            i = end + 1;
            copied = i;
        }
        literal.push_str(&text[copied..]);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template {
            source: text.to_owned(),
            parts,
        })
    }

    /// The text the template was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The variables, in order of appearance.
    pub fn variables(&self) -> impl Iterator<Item = &Variable> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var { variable, .. } => Some(variable),
            Part::Literal(_) => None,
        })
    }

    /// Whether rendering may look into the payload's JSON, i.e. whether the
    /// caller should decode the payload before rendering.
    pub fn uses_json(&self) -> bool {
        self.variables()
            .any(|v| matches!(v, Variable::Payload(_) | Variable::Name(_)))
    }

    /// Whether the template has no variables (it renders to its literal text).
    pub fn is_literal(&self) -> bool {
        self.variables().next().is_none()
    }

    /// Renders with `escape` applied to each substituted value; literal text
    /// is copied as is. `json` is the message's decoded payload, if the
    /// caller decoded it. On an undefined variable, `out` holds a partial
    /// rendering.
    pub fn render(
        &self,
        msg: &Message,
        json: Option<&serde_json::Value>,
        escape: &mut dyn FnMut(Value<'_>, &mut String),
        out: &mut String,
    ) -> Result<(), Undefined> {
        self.render_inner(msg, json.map(as_payload), escape, out, false)
    }

    /// Like [`render`](Self::render) (or [`render_or_null`](Self::render_or_null)
    /// when `null_undefined`), with payload variables looked up in
    /// `payload` (see [`Payload`]).
    pub fn render_payload(
        &self,
        msg: &Message,
        payload: &dyn Payload,
        escape: &mut dyn FnMut(Value<'_>, &mut String),
        out: &mut String,
        null_undefined: bool,
    ) -> Result<(), Undefined> {
        self.render_inner(msg, Some(payload), escape, out, null_undefined)
    }

    /// Like [`render`](Self::render), but an undefined variable is rendered
    /// as `escape(Value::Null)` instead of failing (`undefined_vars_as_null`).
    pub fn render_or_null(
        &self,
        msg: &Message,
        json: Option<&serde_json::Value>,
        escape: &mut dyn FnMut(Value<'_>, &mut String),
        out: &mut String,
    ) {
        let rendered = self.render_inner(msg, json.map(as_payload), escape, out, true);
        debug_assert!(rendered.is_ok());
    }

    /// Renders with [`plain`] escaping into a new string.
    pub fn render_plain(
        &self,
        msg: &Message,
        json: Option<&serde_json::Value>,
    ) -> Result<String, Undefined> {
        let mut out = String::new();
        self.render(msg, json, &mut plain, &mut out)?;
        Ok(out)
    }

    /// Renders a SQL statement (fragment): every value goes through
    /// [`sql_value`], according to where the template put it:
    ///
    /// - outside quotes (`${temp}`): a literal of its own (numbers bare,
    ///   text quoted and escaped, missing values `NULL`);
    /// - as the whole of a quoted string (`'${clientid}'`, as EMQX users
    ///   write string values): one quoted value — the template's quotes are
    ///   replaced by the value's own, so text is escaped once and a missing
    ///   value is a bare `NULL`, not `'NULL'`;
    /// - inside a longer quoted string (`'dev-${id}'`): the value's text,
    ///   escaped for that string and not quoted again. A missing value
    ///   cannot be `NULL` there, so it fails the message even with
    ///   `null_undefined`.
    ///
    /// Undefined variables are `NULL` when `null_undefined`
    /// (`undefined_vars_as_null`), else an error naming the variable.
    pub fn render_sql(
        &self,
        msg: &Message,
        json: Option<&serde_json::Value>,
        null_undefined: bool,
        out: &mut String,
    ) -> Result<(), Undefined> {
        let parts = &self.parts;
        let json = json.map(as_payload);
        // The quote the template's literal text left open, if any.
        let mut open: Option<u8> = None;
        // The literal after a whole-string placeholder starts with that
        // string's closing quote, already written with the value.
        let mut skip_quote = false;
        // The placeholder at hand is a whole quoted string.
        let mut whole = false;
        for (i, part) in parts.iter().enumerate() {
            match part {
                Part::Literal(text) => {
                    let text = if std::mem::take(&mut skip_quote) {
                        &text[1..]
                    } else {
                        text.as_str()
                    };
                    let (state, opened_last) = scan_quotes(text, open);
                    whole = match (state, parts.get(i + 1), parts.get(i + 2)) {
                        (Some(q), Some(Part::Var { .. }), Some(Part::Literal(after))) => {
                            opened_last && after.as_bytes().first() == Some(&q)
                        }
                        _ => false,
                    };
                    if whole {
                        out.push_str(&text[..text.len() - 1]);
                        open = None;
                    } else {
                        out.push_str(text);
                        open = state;
                    }
                }
                Part::Var {
                    variable,
                    text,
                    path,
                } => {
                    let in_string = if whole { None } else { open };
                    let resolved = match in_string {
                        None => {
                            resolve(variable, path, msg, json, &mut |v| sql_value(v, whole, out))
                        }
                        Some(quote) => {
                            let found = resolve(variable, path, msg, json, &mut |v| {
                                sql_text(v, quote, out)
                            });
                            if !found {
                                return Err(Undefined {
                                    variable: text.clone(),
                                });
                            }
                            found
                        }
                    };
                    skip_quote = whole;
                    whole = false;
                    if !resolved {
                        if null_undefined {
                            out.push_str("NULL");
                        } else {
                            return Err(Undefined {
                                variable: text.clone(),
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn render_inner(
        &self,
        msg: &Message,
        json: Option<&dyn Payload>,
        escape: &mut dyn FnMut(Value<'_>, &mut String),
        out: &mut String,
        null_undefined: bool,
    ) -> Result<(), Undefined> {
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Var {
                    variable,
                    text,
                    path,
                } => {
                    let resolved =
                        resolve(variable, path, msg, json, &mut |value| escape(value, out));
                    if !resolved {
                        if null_undefined {
                            escape(Value::Null, out);
                        } else {
                            return Err(Undefined {
                                variable: text.clone(),
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn as_payload(json: &serde_json::Value) -> &dyn Payload {
    json
}

/// Resolves one variable and hands its value to `emit`; false if undefined.
fn resolve(
    variable: &Variable,
    path: &[String],
    msg: &Message,
    json: Option<&dyn Payload>,
    emit: &mut dyn FnMut(Value<'_>),
) -> bool {
    match variable {
        Variable::Topic => emit(Value::Str(&msg.topic)),
        Variable::Ts => emit(Value::Int(msg.timestamp_ms)),
        Variable::Qos => emit(Value::Int(i64::from(msg.qos))),
        Variable::ClientId => match msg.fields.get("clientid") {
            Some(id) => emit(Value::Str(id)),
            None => return false,
        },
        Variable::Payload(path) if path.is_empty() => match json {
            Some(json) => emit(json.whole()),
            None => {
                let text: Cow<'_, str> = String::from_utf8_lossy(&msg.payload);
                emit(Value::Str(&text))
            }
        },
        Variable::Payload(path) => match json.and_then(|j| j.get(path)) {
            Some(value) => emit(value),
            None => return false,
        },
        Variable::Name(name) => {
            if let Some(field) = msg.fields.get(name) {
                emit(Value::Str(field));
            } else {
                match json.and_then(|j| j.get(path)) {
                    Some(value) => emit(value),
                    None => return false,
                }
            }
        }
    }
    true
}

/// Follows `path` into `json`: object keys, and array indexes for all-digit
/// segments.
pub fn json_path<'j>(
    json: &'j serde_json::Value,
    path: &[String],
) -> Option<&'j serde_json::Value> {
    path.iter().try_fold(json, |node, segment| match node {
        serde_json::Value::Object(map) => map.get(segment),
        serde_json::Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

fn parse_variable(inner: &str, offset: usize) -> Result<(Variable, Vec<String>), TemplateError> {
    let bad = |reason| TemplateError::BadPath {
        offset,
        text: inner.to_owned(),
        reason,
    };
    if inner.is_empty() {
        return Err(TemplateError::EmptyName { offset });
    }
    if inner
        .chars()
        .any(|c| c.is_whitespace() || c == '$' || c == '{')
    {
        return Err(bad("names contain no whitespace, `$` or `{`"));
    }
    let segments: Vec<&str> = inner.split('.').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(bad("empty path segment"));
    }
    let rest = || segments[1..].iter().map(|s| (*s).to_owned()).collect();
    let builtin = |v: Variable| {
        if segments.len() > 1 {
            Err(bad("this builtin has no fields"))
        } else {
            Ok((v, Vec::new()))
        }
    };
    match segments[0] {
        "topic" => builtin(Variable::Topic),
        "ts" => builtin(Variable::Ts),
        "qos" => builtin(Variable::Qos),
        "clientid" => builtin(Variable::ClientId),
        "payload" => Ok((Variable::Payload(rest()), Vec::new())),
        _ => Ok((
            Variable::Name(inner.to_owned()),
            segments.iter().map(|s| (*s).to_owned()).collect(),
        )),
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Template").field(&self.source).finish()
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl PartialEq for Template {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Template {}

impl std::str::FromStr for Template {
    type Err = TemplateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Template::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::message::Fields;

    fn message(payload: &str) -> Message {
        let mut m = Message::new("devices/d1/temp_hum", payload.to_owned(), 1_700_000_000_123);
        m.qos = 1;
        m.fields = Fields::from_pairs([("device", "d1"), ("temp", "from-field")]);
        m
    }

    fn render(template: &str, msg: &Message) -> Result<String, Undefined> {
        let json = serde_json::from_slice::<serde_json::Value>(&msg.payload).ok();
        Template::parse(template)
            .unwrap()
            .render_plain(msg, json.as_ref())
    }

    /// Renders through [`LazyJson`]; also says whether it decoded.
    fn render_lazy(template: &str, msg: &Message) -> (Result<String, Undefined>, bool) {
        let json = LazyJson::new(&msg.payload);
        let mut out = String::new();
        let rendered = Template::parse(template)
            .unwrap()
            .render_payload(msg, &json, &mut plain, &mut out, false)
            .map(|()| out);
        (rendered, json.decoded.get().is_some())
    }

    #[test]
    fn a_lazy_payload_renders_as_the_decoded_one_and_decodes_only_when_looked_into() {
        let json = message(r#"{"hum": 90, "device": "from-payload", "a": [1, "x"]}"#);
        let text = message("not json \u{1}");
        let bytes = {
            let mut m = message("");
            m.payload = vec![b'a', 0xff, b'b'].into();
            m
        };
        for msg in [&json, &text, &bytes] {
            for template in [
                "${device}/${topic}/${ts}",
                "${hum}",
                "${payload}",
                "${payload.a.1}",
                "t/${device}/${payload.hum}",
                "${missing}",
            ] {
                let (lazy, _) = render_lazy(template, msg);
                assert_eq!(lazy, render(template, msg), "{template:?}");
            }
        }
        let decoded = |template: &str, msg: &Message| render_lazy(template, msg).1;
        assert!(!decoded("alerts/${device}/${qos}", &json));
        assert!(!decoded("${temp}", &json), "a field");
        assert!(decoded("${hum}", &json));
        assert!(decoded("${payload}", &text));
    }

    #[test]
    fn builtins_render_topic_timestamp_and_qos() {
        let msg = message("{}");
        assert_eq!(
            render("${topic}|${ts}|${qos}", &msg).unwrap(),
            "devices/d1/temp_hum|1700000000123|1"
        );
    }

    #[test]
    fn a_field_wins_over_a_payload_key_of_the_same_name() {
        let msg = message(r#"{"temp": 31, "device": "from-payload"}"#);
        assert_eq!(render("${temp}/${device}", &msg).unwrap(), "from-field/d1");
    }

    #[test]
    fn a_name_that_is_no_field_is_looked_up_in_the_payload() {
        let msg = message(r#"{"hum": 90, "nested": {"x": [1, {"b": "deep"}]}}"#);
        assert_eq!(render("${hum}", &msg).unwrap(), "90");
        assert_eq!(render("${nested.x.1.b}", &msg).unwrap(), "deep");
    }

    #[test]
    fn payload_paths_index_arrays_and_objects() {
        let msg = message(r#"{"a": [{"b": 7}, {"b": 8}], "0": "key-zero"}"#);
        assert_eq!(render("${payload.a.0.b}", &msg).unwrap(), "7");
        assert_eq!(render("${payload.a.1}", &msg).unwrap(), r#"{"b":8}"#);
        assert_eq!(render("${payload.0}", &msg).unwrap(), "key-zero");
        assert!(render("${payload.a.2.b}", &msg).is_err());
        assert!(render("${payload.a.x}", &msg).is_err());
    }

    #[test]
    fn whole_payload_is_json_when_decoded_and_raw_text_otherwise() {
        let msg = message(r#"{ "temp" : 31 }"#);
        assert_eq!(render("${payload}", &msg).unwrap(), r#"{"temp":31}"#);
        let raw = message("not json ü");
        assert_eq!(render("<${payload}>", &raw).unwrap(), "<not json ü>");
    }

    #[test]
    fn undefined_variables_are_reported_by_name() {
        let msg = message(r#"{"temp": 31}"#);
        let err = render("x ${missing.path} y", &msg).unwrap_err();
        assert_eq!(err.variable, "missing.path");
        assert_eq!(err.to_string(), "variable ${missing.path} is undefined");
        assert_eq!(
            render("${clientid}", &msg).unwrap_err().variable,
            "clientid"
        );
        // Without decoded JSON, payload paths are undefined.
        let t = Template::parse("${payload.temp}").unwrap();
        assert!(t.render_plain(&msg, None).is_err());
    }

    #[test]
    fn undefined_variables_render_as_null_when_asked() {
        let msg = message("{}");
        let t = Template::parse("a=${nope},t=${topic}").unwrap();
        let mut out = String::new();
        t.render_or_null(&msg, None, &mut plain, &mut out);
        assert_eq!(out, "a=null,t=devices/d1/temp_hum");
    }

    #[test]
    fn clientid_comes_from_a_field_of_that_name() {
        let mut msg = message("{}");
        msg.fields = Fields::from_pairs([("clientid", "c-7")]);
        assert_eq!(render("${clientid}", &msg).unwrap(), "c-7");
    }

    #[test]
    fn escaping_is_applied_to_values_only() {
        let msg = message(r#"{"name": "it's"}"#);
        let t = Template::parse("INSERT '${name}' -- it's literal").unwrap();
        let json: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        let mut out = String::new();
        let mut sql = |v: Value<'_>, out: &mut String| {
            let mut s = String::new();
            plain(v, &mut s);
            out.push_str(&s.replace('\'', "''"));
        };
        t.render(&msg, Some(&json), &mut sql, &mut out).unwrap();
        assert_eq!(out, "INSERT 'it''s' -- it's literal");
    }

    #[test]
    fn escape_sees_typed_values() {
        let msg = message(r#"{"n": 1.5, "s": "x", "z": null}"#);
        let json: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        let t = Template::parse("${ts}${n}${s}${z}${topic}").unwrap();
        let mut seen = Vec::new();
        let mut escape = |v: Value<'_>, _: &mut String| seen.push(format!("{v:?}"));
        t.render(&msg, Some(&json), &mut escape, &mut String::new())
            .unwrap();
        assert_eq!(
            seen,
            [
                "Int(1700000000123)",
                "Json(Number(1.5))",
                "Json(String(\"x\"))",
                "Json(Null)",
                "Str(\"devices/d1/temp_hum\")"
            ]
        );
    }

    #[test]
    fn unicode_text_and_names_survive() {
        let mut msg = message(r#"{"température": "31°", "ключ": ["значение"]}"#);
        msg.fields = Fields::from_pairs([("appareil", "capteur-é")]);
        assert_eq!(
            render("«${appareil}» ${température} ${ключ.0} ✓", &msg).unwrap(),
            "«capteur-é» 31° значение ✓"
        );
    }

    #[test]
    fn a_dollar_not_before_a_brace_is_literal_and_double_dollar_brace_escapes() {
        let msg = message("{}");
        assert_eq!(render("cost: $5 $ $$", &msg).unwrap(), "cost: $5 $ $$");
        assert_eq!(render("$${topic} ${qos}", &msg).unwrap(), "${topic} 1");
        // Scanned left to right: a literal `$`, then the escape.
        assert_eq!(render("$$${qos}", &msg).unwrap(), "$${qos}");
        assert!(Template::parse("$${").unwrap().is_literal());
    }

    #[test]
    fn malformed_templates_are_refused_with_their_offset() {
        assert_eq!(
            Template::parse("ab${topic").unwrap_err(),
            TemplateError::Unterminated { offset: 2 }
        );
        assert_eq!(
            Template::parse("x${}").unwrap_err(),
            TemplateError::EmptyName { offset: 1 }
        );
        for (text, offset) in [
            ("${a..b}", 0),
            ("${payload.}", 0),
            ("é${topic.x}", 2),
            ("${ a }", 0),
            ("${.a}", 0),
        ] {
            match Template::parse(text).unwrap_err() {
                TemplateError::BadPath { offset: o, .. } => assert_eq!(o, offset, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn variables_are_listed_in_order() {
        let t = Template::parse("${topic}/${payload}/${payload.a.0}/${dev}/${x.y}").unwrap();
        assert_eq!(
            t.variables().cloned().collect::<Vec<_>>(),
            [
                Variable::Topic,
                Variable::Payload(vec![]),
                Variable::Payload(vec!["a".into(), "0".into()]),
                Variable::Name("dev".into()),
                Variable::Name("x.y".into()),
            ]
        );
        assert_eq!(
            t.source(),
            "${topic}/${payload}/${payload.a.0}/${dev}/${x.y}"
        );
        assert!(t.uses_json());
        assert!(!Template::parse("${topic}").unwrap().uses_json());
    }

    #[test]
    fn json_values_are_compact_and_strings_unquoted_in_plain_text() {
        let mut out = String::new();
        plain(Value::Json(&json!({"a": [1, "b"]})), &mut out);
        plain(Value::Json(&json!("s")), &mut out);
        plain(Value::Null, &mut out);
        assert_eq!(out, r#"{"a":[1,"b"]}snull"#);
    }

    fn sql(template: &str, msg: &Message, null_undefined: bool) -> Result<String, Undefined> {
        let json = serde_json::from_slice::<serde_json::Value>(&msg.payload).ok();
        let mut out = String::new();
        Template::parse(template).unwrap().render_sql(
            msg,
            json.as_ref(),
            null_undefined,
            &mut out,
        )?;
        Ok(out)
    }

    #[test]
    fn sql_mode_escapes_quotes_and_backslashes_and_writes_numbers_as_literals() {
        let msg = message(r#"{"t": 23.5, "hum": 90, "on": true, "s": "it's C:\\dir\n"}"#);
        assert_eq!(
            sql("(${ts}, ${t}, ${hum}, ${on}, ${s}, ${device})", &msg, false).unwrap(),
            r"(1700000000123, 23.5, 90, TRUE, 'it\'s C:\\dir\n', 'd1')"
        );
    }

    #[test]
    fn sql_mode_quotes_a_placeholder_the_template_quoted_exactly_once() {
        let msg = message(r#"{"name": "O'Brien", "n": 7}"#);
        assert_eq!(
            sql("VALUES ('${name}', '${n}', '${device}')", &msg, false).unwrap(),
            r"VALUES ('O\'Brien', '7', 'd1')"
        );
        // Inside a longer string the value is escaped, not quoted again.
        assert_eq!(
            sql(r#"('x${name}', "a ${name} \" ${n}")"#, &msg, false).unwrap(),
            r#"('xO\'Brien', "a O\'Brien \" 7")"#
        );
        // ... and cannot be NULL.
        assert_eq!(
            sql("('x${missing}')", &msg, true).unwrap_err().to_string(),
            "variable ${missing} is undefined"
        );
        // One quote between two placeholders belongs to the first.
        assert_eq!(sql("'${n}'${n}'", &msg, false).unwrap(), "'7'7'");
    }

    #[test]
    fn sql_mode_renders_missing_values_as_bare_null_or_names_them() {
        let msg = message(r#"{"t": null}"#);
        assert_eq!(
            sql("(${t}, '${missing}', ${gone})", &msg, true).unwrap(),
            "(NULL, NULL, NULL)"
        );
        let err = sql("(${t}, '${missing}')", &msg, false).unwrap_err();
        assert_eq!(err.to_string(), "variable ${missing} is undefined");
    }

    #[test]
    fn sql_mode_cannot_be_broken_out_of_by_a_value() {
        let mut msg = message(r#"{"evil": "x'); DROP DATABASE d; --", "obj": {"a": "'"}}"#);
        msg.fields = Fields::from_pairs([("device", r"\'")]);
        assert_eq!(
            sql("('${evil}', ${obj}, ${device})", &msg, false).unwrap(),
            r#"('x\'); DROP DATABASE d; --', '{"a":"\'"}', '\\\'')"#
        );
    }
}
