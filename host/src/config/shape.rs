//! Step one: the manifest's TOML as a tree with spans, checked for shape
//! against the JSON Schema of the raw types (`manifest.rs`).
//!
//! Serde stops at the first problem; users want them all. So the document
//! is parsed into a [`Node`] tree (every value and key with its byte span),
//! `${env:…}` references are resolved in it, and the tree is walked along
//! the schema: every unknown key (with a did-you-mean), every value of the
//! wrong type, every integer out of range, every missing required key and
//! every unknown variant is reported, with the place it was found. What is
//! wrong is removed from the tree, so the items that remain deserialize
//! with serde and go on to step two (`validate.rs`); an item whose required
//! key is missing is skipped there (its error is already reported).
//!
//! The schema is the only list of known keys: nothing here names a field.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::ops::Range;

use serde_json::{Map, Value};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diagnostic::{Reporter, did_you_mean};
use super::secret::{self, EnvError, Environment};

/// A TOML value with its span.
#[derive(Clone, Debug)]
pub(super) struct Node {
    pub span: Range<usize>,
    pub kind: Kind,
}

/// The kinds of TOML value.
#[derive(Clone, Debug)]
pub(super) enum Kind {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<Node>),
    /// Entries in file order.
    Table(Vec<Entry>),
}

/// A key of a table, with its value.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub key: String,
    pub key_span: Range<usize>,
    pub value: Node,
}

/// One step of a path into the tree.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

impl From<&str> for Seg {
    fn from(key: &str) -> Self {
        Seg::Key(key.to_owned())
    }
}

impl From<&String> for Seg {
    fn from(key: &String) -> Self {
        Seg::Key(key.clone())
    }
}

impl From<usize> for Seg {
    fn from(index: usize) -> Self {
        Seg::Index(index)
    }
}

/// Builds a path: `at!["sinks", name, "topic"]`.
macro_rules! at {
    ($($seg:expr),* $(,)?) => {
        [$($crate::config::shape::Seg::from($seg)),*]
    };
}
pub(super) use at;

impl Node {
    /// Parses TOML. Syntax errors are all reported, and then nothing else
    /// is checked: the parser's recovery guesses, and errors about its
    /// guesses would be noise.
    pub(super) fn parse(source: &str, r: &mut Reporter<'_>) -> Option<Node> {
        let (table, errors) = DeTable::parse_recoverable(source);
        if !errors.is_empty() {
            for e in errors {
                let span = e.span().unwrap_or(0..0);
                r.error(span, format!("invalid TOML: {}", e.message()));
            }
            return None;
        }
        let root = Spanned::new(0..0, DeValue::Table(table.into_inner()));
        let before = r.error_count();
        let node = Node::from_toml(root, r);
        (r.error_count() == before).then_some(node)
    }

    fn from_toml(value: Spanned<DeValue<'_>>, r: &mut Reporter<'_>) -> Node {
        let span = value.span();
        let kind = match value.into_inner() {
            DeValue::String(s) => Kind::Str(s.into_owned()),
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(i) => Kind::Int(i),
                Err(_) => {
                    r.error(span.clone(), "integer out of range");
                    Kind::Int(0)
                }
            },
            DeValue::Float(f) => Kind::Float(f.as_str().parse().unwrap_or(f64::NAN)),
            DeValue::Boolean(b) => Kind::Bool(b),
            DeValue::Datetime(d) => Kind::Datetime(d.to_string()),
            DeValue::Array(items) => Kind::Array(
                items
                    .iter()
                    .cloned()
                    .map(|v| Node::from_toml(v, r))
                    .collect(),
            ),
            DeValue::Table(table) => {
                let mut entries: Vec<Entry> = table
                    .into_iter()
                    .map(|(k, v)| Entry {
                        key_span: k.span(),
                        key: k.into_inner().into_owned(),
                        value: Node::from_toml(v, r),
                    })
                    .collect();
                entries.sort_by_key(|e| e.key_span.start);
                Kind::Table(entries)
            }
        };
        Node { span, kind }
    }

    /// The entries, if this is a table.
    pub(super) fn entries(&self) -> &[Entry] {
        match &self.kind {
            Kind::Table(entries) => entries,
            _ => &[],
        }
    }

    /// The items, if this is an array.
    pub(super) fn items(&self) -> &[Node] {
        match &self.kind {
            Kind::Array(items) => items,
            _ => &[],
        }
    }

    /// The entry of a key, if this is a table that has it.
    pub(super) fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries().iter().find(|e| e.key == key)
    }

    pub(super) fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|e| &e.value)
    }

    pub(super) fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The node at a path.
    pub(super) fn at(&self, path: &[Seg]) -> Option<&Node> {
        path.iter().try_fold(self, |node, seg| match seg {
            Seg::Key(k) => node.get(k),
            Seg::Index(i) => node.items().get(*i),
        })
    }

    /// The span of the value at `path`, or of the deepest value on the way
    /// to it (the table that should have had it).
    pub(super) fn span_at(&self, path: &[Seg]) -> Range<usize> {
        let mut node = self;
        for seg in path {
            let next = match seg {
                Seg::Key(k) => node.get(k),
                Seg::Index(i) => node.items().get(*i),
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node.span.clone()
    }

    /// The span of the key at the end of `path` (the value's when the path
    /// ends with an index).
    pub(super) fn key_span_at(&self, path: &[Seg]) -> Range<usize> {
        if let Some((Seg::Key(k), parent)) = path.split_last()
            && let Some(e) = self.at(parent).and_then(|p| p.entry(k))
        {
            return e.key_span.clone();
        }
        self.span_at(path)
    }

    /// The value as JSON (dates become their TOML text).
    pub(super) fn to_json(&self) -> Value {
        match &self.kind {
            Kind::Str(s) | Kind::Datetime(s) => Value::String(s.clone()),
            Kind::Int(i) => Value::from(*i),
            Kind::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Kind::Bool(b) => Value::Bool(*b),
            Kind::Array(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            Kind::Table(entries) => Value::Object(
                entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.to_json()))
                    .collect(),
            ),
        }
    }

    fn type_name(&self) -> &'static str {
        match &self.kind {
            Kind::Str(_) => "a string",
            Kind::Int(_) => "an integer",
            Kind::Float(_) => "a float",
            Kind::Bool(_) => "a boolean",
            Kind::Datetime(_) => "a date-time",
            Kind::Array(_) => "an array",
            Kind::Table(_) => "a table",
        }
    }

    /// Replaces `${env:NAME}` in every string value. Each unset variable is
    /// reported at its string, which is muted so that nothing else is said
    /// about a value that was never really there.
    pub(super) fn resolve_env(&mut self, env: Environment<'_>, r: &mut Reporter<'_>) {
        match &mut self.kind {
            Kind::Str(s) => match secret::resolve(s, env) {
                None => {}
                Some(Ok(resolved)) => *s = resolved,
                Some(Err(errors)) => {
                    for e in errors {
                        match e {
                            EnvError::Unset(name) => {
                                r.error(
                                    self.span.clone(),
                                    format!("environment variable \"{name}\" is not set"),
                                )
                                .hint(format!(
                                    "set it in weir's environment (export {name}=...) or write the value here"
                                ));
                            }
                            EnvError::Malformed(text) => {
                                r.error(
                                    self.span.clone(),
                                    format!("malformed environment reference {text:?}"),
                                )
                                .hint("write ${env:NAME}, NAME made of letters, digits and `_`");
                            }
                        }
                    }
                    r.mute(self.span.clone());
                }
            },
            Kind::Array(items) => items.iter_mut().for_each(|n| n.resolve_env(env, r)),
            Kind::Table(entries) => entries.iter_mut().for_each(|e| e.value.resolve_env(env, r)),
            _ => {}
        }
    }
}

/// Walks a tree along a schema, reporting and removing what does not fit.
pub(super) struct Shape<'a, 'r, 's> {
    defs: &'a Map<String, Value>,
    r: &'r mut Reporter<'s>,
    rule_names: Vec<Option<String>>,
    /// Items (`["broker"]`, `["sinks", "x"]`, `["rules", 2]`) with a
    /// problem.
    pub bad_items: BTreeSet<Vec<Seg>>,
}

impl<'a, 'r, 's> Shape<'a, 'r, 's> {
    /// Checks `root` against `schema` (a whole-manifest schema with
    /// `$defs`).
    pub(super) fn check_manifest(
        schema: &'a Value,
        root: &mut Node,
        r: &'r mut Reporter<'s>,
    ) -> BTreeSet<Vec<Seg>> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        let defs = schema
            .get("$defs")
            .and_then(Value::as_object)
            .unwrap_or_else(|| EMPTY.get_or_init(Map::new));
        let rule_names = rule_names(root);
        let mut shape = Shape {
            defs,
            r,
            rule_names,
            bad_items: BTreeSet::new(),
        };
        shape.check(schema, root, &mut Vec::new());
        shape.bad_items
    }

    fn resolve(&self, mut schema: &'a Value) -> &'a Value {
        // `$ref` chains are short; the bound guards against a cyclic one.
        for _ in 0..16 {
            let Some(name) = schema
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/$defs/"))
            else {
                break;
            };
            match self.defs.get(name) {
                Some(def) => schema = def,
                None => break,
            }
        }
        schema
    }

    /// Returns whether the node may stay.
    fn check(&mut self, schema: &'a Value, node: &mut Node, path: &mut Vec<Seg>) -> bool {
        let schema = self.resolve(schema);
        let obj = match schema {
            Value::Bool(allowed) => return *allowed,
            Value::Object(obj) => obj,
            _ => return true,
        };
        if let Some(branches) = obj
            .get("oneOf")
            .or_else(|| obj.get("anyOf"))
            .and_then(Value::as_array)
        {
            return self.check_union(obj, branches, node, path);
        }
        if let Some(types) = obj.get("type")
            && !admits(types, node)
        {
            self.type_error(&expected(types), obj, node, path);
            return false;
        }
        if let Some(choices) = obj.get("enum").and_then(Value::as_array) {
            let choices: Vec<&str> = choices.iter().filter_map(Value::as_str).collect();
            return self.check_choice(&choices, node, path);
        }
        if let Some(choice) = obj.get("const").and_then(Value::as_str) {
            return self.check_choice(&[choice], node, path);
        }
        if matches!(node.kind, Kind::Table(_)) {
            self.check_table(obj, node, path);
            return true;
        }
        let span = node.span.clone();
        match &mut node.kind {
            Kind::Int(i) => {
                let i = *i;
                if let Some(min) = obj.get("minimum").and_then(Value::as_i64)
                    && i < min
                {
                    let what = self.value_label(path);
                    let text = if min == 0 {
                        format!("{what} cannot be negative")
                    } else {
                        format!("{what} must be at least {min}, not {i}")
                    };
                    self.error(path, span, text);
                    return false;
                }
                if let Some(max) = obj.get("maximum").and_then(Value::as_u64)
                    && i as u64 > max
                {
                    let what = self.value_label(path);
                    self.error(path, span, format!("{what} must be at most {max}, not {i}"));
                    return false;
                }
            }
            Kind::Float(f) if !f.is_finite() => {
                let what = self.value_label(path);
                self.error(path, span, format!("{what} must be a finite number"));
                return false;
            }
            Kind::Array(items) => {
                if let Some(item_schema) = obj.get("items") {
                    let mut kept = Vec::with_capacity(items.len());
                    for (i, mut item) in std::mem::take(items).into_iter().enumerate() {
                        path.push(Seg::Index(i));
                        if self.check(item_schema, &mut item, path) {
                            kept.push(item);
                        }
                        path.pop();
                    }
                    *items = kept;
                }
            }
            _ => {}
        }
        true
    }

    fn check_table(&mut self, obj: &'a Map<String, Value>, node: &mut Node, path: &mut Vec<Seg>) {
        let properties = obj.get("properties").and_then(Value::as_object);
        let additional = obj.get("additionalProperties");
        let Kind::Table(entries) = &mut node.kind else {
            return;
        };
        let present: Vec<String> = entries.iter().map(|e| e.key.clone()).collect();
        let mut kept = Vec::with_capacity(entries.len());
        for mut entry in std::mem::take(entries) {
            path.push(Seg::Key(entry.key.clone()));
            let keep = match properties.and_then(|p| p.get(&entry.key)) {
                Some(schema) => self.check(schema, &mut entry.value, path),
                None => match additional {
                    Some(Value::Bool(false)) => {
                        path.pop();
                        self.unknown_field(&entry, properties, path);
                        path.push(Seg::Key(entry.key.clone()));
                        false
                    }
                    Some(schema @ Value::Object(_)) => self.check(schema, &mut entry.value, path),
                    _ => true,
                },
            };
            path.pop();
            if keep {
                kept.push(entry);
            }
        }
        *entries = kept;
        let required = obj
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str);
        for key in required {
            if !present.iter().any(|p| p == key) {
                let table = self.table_label(path);
                self.error(
                    path,
                    node.span.clone(),
                    format!("missing field \"{key}\" in {table}"),
                );
            }
        }
    }

    fn check_union(
        &mut self,
        obj: &'a Map<String, Value>,
        branches: &'a [Value],
        node: &mut Node,
        path: &mut Vec<Seg>,
    ) -> bool {
        let branches: Vec<&'a Value> = branches.iter().map(|b| self.resolve(b)).collect();
        // A unit enum with documented variants: each branch is one `const`.
        let consts: Option<Vec<&str>> = branches
            .iter()
            .map(|b| b.get("const").and_then(Value::as_str))
            .collect();
        if let Some(choices) = consts {
            if !admits(&Value::from("string"), node) {
                self.type_error("a string", obj, node, path);
                return false;
            }
            return self.check_choice(&choices, node, path);
        }
        // An internally tagged enum: every branch has `properties.<tag>.const`.
        if let (Some(tag), Kind::Table(_)) = (discriminator(&branches), &node.kind) {
            let choices: Vec<&str> = branches
                .iter()
                .filter_map(|b| b["properties"][tag]["const"].as_str())
                .collect();
            let table = self.table_label(path);
            let Some(entry) = node.entry(tag) else {
                let span = node.span.clone();
                self.error(path, span, format!("missing field \"{tag}\" in {table}"))
                    .hint(format!("one of: {}", choices.join(", ")));
                return false;
            };
            let Some(value) = entry.value.as_str() else {
                let (span, found) = (entry.value.span.clone(), entry.value.type_name());
                self.error(
                    path,
                    span,
                    format!("\"{tag}\" in {table} must be a string, not {found}"),
                );
                return false;
            };
            return match choices.iter().position(|c| *c == value) {
                Some(i) => self.check(branches[i], node, path),
                None => {
                    let span = entry.value.span.clone();
                    let written = self.r.text(&span).to_owned();
                    let hint = match did_you_mean(value, choices.iter().copied()) {
                        Some(close) => format!("did you mean \"{close}\"?"),
                        None => format!("one of: {}", choices.join(", ")),
                    };
                    self.error(path, span, format!("unknown {tag} {written} in {table}"))
                        .hint(hint);
                    false
                }
            };
        }
        for branch in &branches {
            if branch.get("type").is_none_or(|t| admits(t, node)) {
                return self.check(branch, node, path);
            }
        }
        let wanted: Vec<String> = branches
            .iter()
            .filter_map(|b| b.get("type"))
            .filter(|t| *t != "null")
            .map(expected)
            .collect();
        // A branch's examples (a duration's) make the better hint.
        let hinted = branches
            .iter()
            .find(|b| b.get("examples").is_some())
            .and_then(|b| b.as_object())
            .unwrap_or(obj);
        self.type_error(&wanted.join(" or "), hinted, node, path);
        false
    }

    fn check_choice(&mut self, choices: &[&str], node: &mut Node, path: &[Seg]) -> bool {
        let Some(value) = node.as_str() else {
            self.type_error("a string", &Map::new(), node, path);
            return false;
        };
        if choices.contains(&value) {
            return true;
        }
        let what = self.value_label(path);
        let written = self.r.text(&node.span).to_owned();
        let listed = choices
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let suggestion = did_you_mean(value, choices.iter().copied());
        let span = node.span.clone();
        let d = self.error(
            path,
            span,
            format!("{what} must be one of {listed}, not {written}"),
        );
        if let Some(close) = suggestion {
            d.hint(format!("did you mean \"{close}\"?"));
        }
        false
    }

    fn unknown_field(
        &mut self,
        entry: &Entry,
        properties: Option<&Map<String, Value>>,
        table_path: &[Seg],
    ) {
        let known: Vec<&str> = properties
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let message = if table_path.is_empty() {
            format!("unknown section \"{}\"", entry.key)
        } else {
            format!(
                "unknown field \"{}\" in {}",
                entry.key,
                self.table_label(table_path)
            )
        };
        let hint = match did_you_mean(&entry.key, known.iter().copied()) {
            Some(close) => format!("did you mean \"{close}\"?"),
            None if known.is_empty() => "this table takes no fields".to_owned(),
            None => format!("known fields: {}", known.join(", ")),
        };
        let mut path = table_path.to_vec();
        path.push(Seg::Key(entry.key.clone()));
        self.error(&path, entry.key_span.clone(), message)
            .hint(hint);
    }

    fn type_error(&mut self, wanted: &str, schema: &Map<String, Value>, node: &Node, path: &[Seg]) {
        let what = self.value_label(path);
        let found = node.type_name();
        let written = self.r.text(&node.span).to_owned();
        let hint = if let Some(examples) = schema.get("examples").and_then(Value::as_array) {
            let examples: Vec<String> = examples
                .iter()
                .filter_map(Value::as_str)
                .map(|e| format!("\"{e}\""))
                .collect();
            Some(format!(
                "write it as a string with a unit, e.g. {}",
                examples.join(", ")
            ))
        } else if wanted.starts_with("an array") && matches!(node.kind, Kind::Str(_)) {
            Some(format!("write a list: [{written}]"))
        } else if wanted.starts_with("an array") && matches!(node.kind, Kind::Table(_)) {
            match path.last() {
                Some(Seg::Key(k)) => Some(format!("write each entry as [[{k}]]")),
                _ => None,
            }
        } else if wanted == "a string" && !matches!(node.kind, Kind::Array(_) | Kind::Table(_)) {
            Some(format!("put it in quotes: \"{written}\""))
        } else {
            None
        };
        let d = self.error(
            path,
            node.span.clone(),
            format!("{what} must be {wanted}, not {found}"),
        );
        if let Some(hint) = hint {
            d.hint(hint);
        }
    }

    fn error(
        &mut self,
        path: &[Seg],
        span: Range<usize>,
        message: String,
    ) -> &mut super::diagnostic::Diagnostic {
        let item_len = match path.first() {
            Some(Seg::Key(k)) if k == "plugins" || k == "sinks" || k == "rules" => 2,
            _ => 1,
        };
        self.bad_items
            .insert(path[..item_len.min(path.len())].to_vec());
        self.r.error(span, message)
    }

    /// How a table is named in messages: `[sinks.alerts]`,
    /// `[[rules]] "hot"`, `step 2 of [[rules]] "hot"`.
    pub(super) fn table_label(&self, path: &[Seg]) -> String {
        table_label(path, &self.rule_names)
    }

    /// How a value is named in messages: `"qos" in [[rules]] "hot"`.
    fn value_label(&self, path: &[Seg]) -> String {
        value_label(path, &self.rule_names)
    }
}

/// See [`Shape::table_label`].
pub(super) fn table_label(path: &[Seg], rule_names: &[Option<String>]) -> String {
    match path {
        [] => "the manifest".to_owned(),
        [Seg::Key(rules), Seg::Index(i)] if rules == "rules" => {
            match rule_names.get(*i).and_then(Option::as_ref) {
                Some(name) if !name.is_empty() => format!("[[rules]] \"{name}\""),
                _ => format!("[[rules]] #{}", i + 1),
            }
        }
        [rest @ .., Seg::Key(steps), Seg::Index(j)] if steps == "steps" => {
            format!("step {} of {}", j + 1, table_label(rest, rule_names))
        }
        _ if path.iter().all(|s| matches!(s, Seg::Key(_))) => {
            let mut out = String::from("[");
            for (i, seg) in path.iter().enumerate() {
                if let Seg::Key(k) = seg {
                    if i > 0 {
                        out.push('.');
                    }
                    out.push_str(&toml_key(k));
                }
            }
            out.push(']');
            out
        }
        [rest @ .., Seg::Key(k)] => format!("{} of {}", toml_key(k), table_label(rest, rule_names)),
        [rest @ .., Seg::Index(i)] => {
            format!("entry {} of {}", i + 1, value_label(rest, rule_names))
        }
    }
}

/// See [`Shape::value_label`].
pub(super) fn value_label(path: &[Seg], rule_names: &[Option<String>]) -> String {
    match path {
        [] => "the manifest".to_owned(),
        [rules, Seg::Index(_)] if *rules == Seg::Key("rules".into()) => {
            table_label(path, rule_names)
        }
        [Seg::Key(k)] => format!("\"{k}\""),
        [rest @ .., Seg::Key(k)] => format!("\"{k}\" in {}", table_label(rest, rule_names)),
        [rest @ .., Seg::Index(i)] => {
            format!("entry {} of {}", i + 1, value_label(rest, rule_names))
        }
    }
}

/// A key as TOML writes it in a header: bare when it can be.
fn toml_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_owned()
    } else {
        let mut out = String::new();
        let _ = write!(out, "{key:?}");
        out
    }
}

/// The key every branch pins with a `const`, if there is one.
fn discriminator<'v>(branches: &[&'v Value]) -> Option<&'v str> {
    let first = branches.first()?.get("properties")?.as_object()?;
    first
        .iter()
        .filter(|(_, s)| s.get("const").is_some())
        .map(|(k, _)| k.as_str())
        .find(|tag| {
            branches
                .iter()
                .all(|b| b["properties"][*tag].get("const").is_some())
        })
}

/// Whether a schema `type` (a name or a list of names) admits a node.
fn admits(types: &Value, node: &Node) -> bool {
    let admits_one = |t: &str| {
        matches!(
            (&node.kind, t),
            (Kind::Str(_), "string")
                | (Kind::Int(_), "integer" | "number")
                | (Kind::Float(_), "number")
                | (Kind::Bool(_), "boolean")
                | (Kind::Array(_), "array")
                | (Kind::Table(_), "object")
        )
    };
    match types {
        Value::String(t) => admits_one(t),
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).any(admits_one),
        _ => true,
    }
}

/// A schema `type` in words: `"an integer"`, `"a string or a table"`.
fn expected(types: &Value) -> String {
    let word = |t: &str| match t {
        "string" => "a string",
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "a boolean",
        "array" => "an array",
        "object" => "a table",
        _ => "a value",
    };
    match types {
        Value::String(t) => word(t).to_owned(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .map(word)
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "a value".to_owned(),
    }
}

/// The `name` of each `[[rules]]` entry, in order (`None` where it has none
/// or it is not a string), for naming rules in diagnostics.
pub(super) fn rule_names(root: &Node) -> Vec<Option<String>> {
    root.get("rules")
        .map(|rules| {
            rules
                .items()
                .iter()
                .map(|rule| rule.get("name").and_then(Node::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs step one over `source`; returns the cleaned tree and what was
    /// reported.
    fn shape(source: &str) -> (Option<Node>, Vec<String>) {
        let mut r = Reporter::new("weir.toml", source);
        let root = Node::parse(source, &mut r).map(|mut root| {
            root.resolve_env(&|name| (name == "SET").then(|| "value".to_owned()), &mut r);
            Shape::check_manifest(crate::config::schema(), &mut root, &mut r);
            root
        });
        let found = r.finish().0.iter().map(|d| d.to_string()).collect();
        (root, found)
    }

    #[test]
    fn a_well_shaped_manifest_passes_untouched_in_file_order() {
        let (root, found) = shape(
            "[sinks.b]\ntype = \"null\"\n[sinks.a]\ntype = \"console\"\n\
             [[rules]]\nname = \"r\"\nfrom = [\"x\"]\nto = [\"b\"]\nsteps = [\"p\", { plugin = \"q\", config = { any = [1, 2.5] } }]\n",
        );
        assert_eq!(found, Vec::<String>::new());
        let root = root.unwrap();
        let sinks: Vec<&str> = root
            .get("sinks")
            .unwrap()
            .entries()
            .iter()
            .map(|e| e.key.as_str())
            .collect();
        assert_eq!(sinks, ["b", "a"], "file order, not sorted");
        assert_eq!(
            root.at(&at!["rules", 0, "steps", 1, "config"])
                .unwrap()
                .to_json(),
            serde_json::json!({"any": [1, 2.5]})
        );
    }

    #[test]
    fn unknown_wrong_and_missing_keys_of_one_table_are_all_reported_and_removed() {
        let (root, found) =
            shape("[sinks.s]\ntype = \"mqtt\"\nqos = \"1\"\ntpoic = \"t\"\nretain = true\n");
        assert_eq!(
            found,
            [
                "weir.toml:1:1: error: missing field \"topic\" in [sinks.s]",
                "weir.toml:3:7: error: \"qos\" in [sinks.s] must be an integer, not a string",
                "weir.toml:4:1: error: unknown field \"tpoic\" in [sinks.s]\n  = hint: did you mean \"topic\"?",
            ]
        );
        let keys: Vec<String> = root
            .unwrap()
            .at(&at!["sinks", "s"])
            .unwrap()
            .entries()
            .iter()
            .map(|e| e.key.clone())
            .collect();
        assert_eq!(keys, ["type", "retain"], "bad entries leave the tree");
    }

    #[test]
    fn integers_are_checked_against_the_range_of_their_type() {
        let (_, found) = shape(
            "[broker.embedded]\nlisten = \"0.0.0.0:1\"\nmax_connections = -3\n[[rules]]\nname = \"r\"\nfrom = [\"x\"]\nto = [\"s\"]\nqos = 300\n",
        );
        assert_eq!(
            found,
            [
                "weir.toml:3:19: error: \"max_connections\" in [broker.embedded] cannot be negative",
                "weir.toml:8:7: error: \"qos\" in [[rules]] \"r\" must be at most 255, not 300",
            ]
        );
    }

    #[test]
    fn a_step_is_a_string_or_a_table_and_nothing_else() {
        let (_, found) =
            shape("[[rules]]\nname = \"r\"\nfrom = [\"x\"]\nto = [\"s\"]\nsteps = [3]\n");
        assert_eq!(
            found,
            [
                "weir.toml:5:10: error: entry 1 of \"steps\" in [[rules]] \"r\" must be a string or a table, not an integer"
            ]
        );
    }

    #[test]
    fn unset_environment_variables_are_reported_once_and_set_ones_replaced() {
        let (root, found) =
            shape("[broker]\nusername = \"${env:SET}\"\npassword = \"${env:UNSET}\"\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0]
                .starts_with("weir.toml:3:12: error: environment variable \"UNSET\" is not set")
        );
        let root = root.unwrap();
        assert_eq!(
            root.at(&at!["broker", "username"]).unwrap().as_str(),
            Some("value")
        );
    }

    #[test]
    fn syntax_errors_stop_the_check() {
        let (root, found) = shape("a = [1,\n");
        assert!(root.is_none());
        assert!(found[0].starts_with("weir.toml:"), "{found:?}");
        assert!(found.iter().all(|f| f.contains("invalid TOML")));
    }

    #[test]
    fn tables_are_named_the_way_they_are_written() {
        let names = vec![Some("hot".to_owned()), None, Some(String::new())];
        let label = |p: &[Seg]| table_label(p, &names);
        assert_eq!(label(&at!["sinks", "alerts"]), "[sinks.alerts]");
        assert_eq!(label(&at!["sinks", "my sink"]), "[sinks.\"my sink\"]");
        assert_eq!(label(&at!["rules", 0]), "[[rules]] \"hot\"");
        assert_eq!(label(&at!["rules", 1]), "[[rules]] #2");
        assert_eq!(label(&at!["rules", 2]), "[[rules]] #3");
        assert_eq!(
            label(&at!["rules", 0, "steps", 1]),
            "step 2 of [[rules]] \"hot\""
        );
        assert_eq!(
            value_label(&at!["rules", 0, "to", 0], &names),
            "entry 1 of \"to\" in [[rules]] \"hot\""
        );
    }
}
