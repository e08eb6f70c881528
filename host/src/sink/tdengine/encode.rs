//! Messages → TDengine requests: multi-row, multi-table `INSERT`
//! statements under the 1 MiB limit, or schemaless line-protocol chunks.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::message::Message;
use crate::sink::Rejected;
use crate::template::{Template, Value, plain};

/// TDengine's statement limit (`TSDB_MAX_ALLOWED_SQL_LEN`): 1 MiB.
pub const MAX_STATEMENT_BYTES: usize = 1 << 20;

/// One statement (or one schemaless write) and the messages it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// The SQL, or the lines joined by `\n`.
    pub text: String,
    /// Indexes (in the encoded batch) of the messages in it.
    pub indexes: Vec<usize>,
}

/// What one write sends: statements, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// The statements.
    pub statements: Vec<Statement>,
}

/// The SQL template split where its parts are rendered differently:
/// `INSERT INTO <table> [USING … TAGS (<tags>)] [(cols)] VALUES <row>`.
#[derive(Clone, Debug)]
pub struct SqlTemplate {
    /// The table name: placeholders render as identifiers.
    table: Template,
    /// From `USING` up to `VALUES` (tags, column list): SQL values.
    middle: Template,
    /// After `VALUES`: one row, SQL values.
    row: Template,
}

/// Why a SQL template cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SqlTemplateError {
    /// Does not start with `INSERT INTO`.
    #[error("the statement must start with INSERT INTO")]
    NotInsert,
    /// No `VALUES`.
    #[error("the statement has no VALUES")]
    NoValues,
    /// A part is not a template.
    #[error("{0}")]
    Template(#[from] crate::template::TemplateError),
}

/// The byte offset of keyword `kw` (case-insensitive, as a whole word, not
/// inside `${…}` or quotes) in `text`, searching from `from`.
fn keyword(text: &str, kw: &str, from: usize) -> Option<usize> {
    let b = text.as_bytes();
    let mut i = from;
    let mut quote: Option<u8> = None;
    let mut brace = false;
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        let c = b[i];
        match (quote, brace) {
            (Some(q), _) => {
                if c == b'\\' {
                    i += 1;
                } else if c == q {
                    quote = None;
                }
            }
            (None, true) => brace = c != b'}',
            (None, false) => {
                if c == b'$' && b.get(i + 1) == Some(&b'{') {
                    brace = true;
                } else if c == b'\'' || c == b'"' {
                    quote = Some(c);
                } else if b.len() - i >= kw.len()
                    && text[i..i + kw.len()].eq_ignore_ascii_case(kw)
                    && (i == 0 || !word(b[i - 1]))
                    && b.get(i + kw.len()).is_none_or(|&n| !word(n))
                {
                    return Some(i);
                }
            }
        }
        i += 1;
    }
    None
}

impl SqlTemplate {
    /// Splits an `INSERT INTO …` template.
    pub fn parse(sql: &str) -> Result<SqlTemplate, SqlTemplateError> {
        let trimmed = sql.trim();
        let insert = keyword(trimmed, "insert", 0).filter(|&i| i == 0);
        let into = insert.and_then(|_| keyword(trimmed, "into", 6));
        let Some(into) = into.filter(|&i| trimmed[6..i].trim().is_empty()) else {
            return Err(SqlTemplateError::NotInsert);
        };
        let body = &trimmed[into + 4..];
        let values = keyword(body, "values", 0).ok_or(SqlTemplateError::NoValues)?;
        let head = &body[..values];
        // The table name ends at USING, or at the column list's `(`.
        let table_end = keyword(head, "using", 0)
            .or_else(|| head.find('('))
            .unwrap_or(head.len());
        Ok(SqlTemplate {
            table: Template::parse(head[..table_end].trim())?,
            middle: Template::parse(head[table_end..].trim())?,
            row: Template::parse(body[values + 6..].trim())?,
        })
    }

    /// Builds the super-table form: `INSERT INTO <table> USING <stable>
    /// TAGS (<tags>) [<columns>] VALUES <values>`.
    pub fn super_table(
        table: &str,
        stable: &str,
        tags: &[String],
        columns: Option<&str>,
        values: &str,
    ) -> Result<SqlTemplate, SqlTemplateError> {
        let mut sql = format!(
            "INSERT INTO {table} USING {stable} TAGS ({})",
            tags.join(", ")
        );
        if let Some(c) = columns {
            sql.push(' ');
            sql.push_str(c);
        }
        sql.push_str(" VALUES ");
        sql.push_str(values);
        SqlTemplate::parse(&sql)
    }

    /// The templates, for validation against the rule's fields.
    pub fn templates(&self) -> [&Template; 3] {
        [&self.table, &self.middle, &self.row]
    }

    fn uses_json(&self) -> bool {
        self.templates().iter().any(|t| t.uses_json())
    }
}

/// Schemaless line-protocol settings.
#[derive(Clone, Debug)]
pub struct LineTemplate {
    /// Measurement name.
    pub measurement: Template,
    /// Tags: name → value (rendered as text).
    pub tags: Vec<(String, Template)>,
    /// Fields: name → value (JSON numbers as DOUBLE, booleans, strings).
    pub fields: Vec<(String, Template)>,
    /// Timestamps in nanoseconds (`true`) or milliseconds.
    pub nanoseconds: bool,
}

/// How messages become requests.
#[derive(Clone, Debug)]
pub enum Encoder {
    /// `INSERT` statements.
    Sql {
        /// The split template.
        template: SqlTemplate,
        /// `undefined_vars_as_null`.
        null_undefined: bool,
        /// Statement budget (1 MiB; smaller in tests).
        max_bytes: usize,
    },
    /// Schemaless lines.
    Line {
        /// The line settings.
        template: LineTemplate,
        /// `undefined_vars_as_null`: a missing field or tag is left out.
        null_undefined: bool,
        /// Budget per write.
        max_bytes: usize,
    },
}

const INSERT_INTO: &str = "INSERT INTO";

impl Encoder {
    /// Encodes a batch; messages that cannot be written are rejected.
    pub fn encode(&self, batch: &[Message], rejected: &mut Vec<Rejected>) -> Request {
        match self {
            Encoder::Sql {
                template,
                null_undefined,
                max_bytes,
            } => encode_sql(template, *null_undefined, *max_bytes, batch, rejected),
            Encoder::Line {
                template,
                null_undefined,
                max_bytes,
            } => encode_lines(template, *null_undefined, *max_bytes, batch, rejected),
        }
    }
}

fn decode(uses_json: bool, m: &Message) -> Option<serde_json::Value> {
    if uses_json {
        serde_json::from_slice(&m.payload).ok()
    } else {
        None
    }
}

/// Identifier escape: a table name part may only hold `[A-Za-z0-9_]`.
fn identifier(value: Value<'_>, out: &mut String, bad: &mut Option<String>) {
    let start = out.len();
    plain(value, out);
    let part = &out[start..];
    if part.is_empty() || !part.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
        bad.get_or_insert_with(|| part.to_owned());
    }
}

/// One table's part of a statement being built.
struct Item {
    head: String,
    rows: String,
    indexes: Vec<usize>,
}

struct Builder {
    items: Vec<Item>,
    by_head: HashMap<String, usize>,
    bytes: usize,
}

impl Builder {
    fn new() -> Self {
        Builder {
            items: Vec::new(),
            by_head: HashMap::new(),
            bytes: INSERT_INTO.len(),
        }
    }

    fn finish(&mut self, out: &mut Vec<Statement>) {
        if self.items.is_empty() {
            return;
        }
        let mut text = String::with_capacity(self.bytes);
        text.push_str(INSERT_INTO);
        let mut indexes = Vec::new();
        for item in self.items.drain(..) {
            text.push(' ');
            text.push_str(&item.head);
            text.push_str(" VALUES");
            text.push_str(&item.rows);
            indexes.extend(item.indexes);
        }
        debug_assert_eq!(text.len(), self.bytes);
        self.by_head.clear();
        self.bytes = INSERT_INTO.len();
        out.push(Statement { text, indexes });
    }
}

fn encode_sql(
    template: &SqlTemplate,
    null_undefined: bool,
    max_bytes: usize,
    batch: &[Message],
    rejected: &mut Vec<Rejected>,
) -> Request {
    let uses_json = template.uses_json();
    // A head without placeholders (one table, the seed scenario) is the
    // same for every message: rendered once.
    let literal_head = template.table.is_literal() && template.middle.is_literal();
    let mut statements = Vec::new();
    let mut b = Builder::new();
    let mut head = String::new();
    let mut row = String::new();
    for (index, m) in batch.iter().enumerate() {
        let json = decode(uses_json, m);
        row.clear();
        if literal_head && !head.is_empty() {
            let rendered = template
                .row
                .render_sql(m, json.as_ref(), null_undefined, &mut row);
            if let Err(e) = rendered {
                rejected.push(Rejected {
                    index,
                    reason: e.to_string(),
                });
                continue;
            }
            add_row(
                &mut b,
                &mut statements,
                head.trim_end(),
                &row,
                index,
                max_bytes,
                rejected,
            );
            continue;
        }
        head.clear();
        // Table name: identifiers only.
        let mut bad = None;
        let rendered = template.table.render(
            m,
            json.as_ref(),
            &mut |v, out| identifier(v, out, &mut bad),
            &mut head,
        );
        let reason = match (rendered, bad) {
            (Err(e), _) => Some(e.to_string()),
            (Ok(()), Some(bad)) => Some(format!(
                "table name part {bad:?} is not a TDengine name (letters, digits and _ only)"
            )),
            (Ok(()), None) => None,
        };
        let reason = reason.or_else(|| {
            if !template.middle.source().is_empty() {
                head.push(' ');
            }
            let middle = template
                .middle
                .render_sql(m, json.as_ref(), null_undefined, &mut head);
            let row_result = template
                .row
                .render_sql(m, json.as_ref(), null_undefined, &mut row);
            middle.and(row_result).err().map(|e| e.to_string())
        });
        if let Some(reason) = reason {
            rejected.push(Rejected { index, reason });
            continue;
        }
        let trimmed = head.trim_end().len();
        head.truncate(trimmed);
        add_row(
            &mut b,
            &mut statements,
            &head,
            &row,
            index,
            max_bytes,
            rejected,
        );
    }
    b.finish(&mut statements);
    Request { statements }
}

/// Adds one rendered row to the statement being built, starting a new
/// statement first when it would pass `max_bytes`; a row that can never
/// fit is rejected.
fn add_row(
    b: &mut Builder,
    statements: &mut Vec<Statement>,
    head_text: &str,
    row: &str,
    index: usize,
    max_bytes: usize,
    rejected: &mut Vec<Rejected>,
) {
    // " VALUES" once per item, " " + row per row.
    let row_cost = 1 + row.len();
    let item_cost = 1 + head_text.len() + " VALUES".len();
    if INSERT_INTO.len() + item_cost + row_cost > max_bytes {
        rejected.push(Rejected {
            index,
            reason: format!(
                "the row takes {} bytes of SQL, more than the {max_bytes}-byte statement limit",
                item_cost + row_cost
            ),
        });
        return;
    }
    let existing = b.by_head.get(head_text).copied();
    let cost = row_cost + if existing.is_some() { 0 } else { item_cost };
    if b.bytes + cost > max_bytes {
        b.finish(statements);
    }
    match b.by_head.get(head_text).copied() {
        Some(i) => {
            let item = &mut b.items[i];
            item.rows.push(' ');
            item.rows.push_str(row);
            item.indexes.push(index);
            b.bytes += row_cost;
        }
        None => {
            b.by_head.insert(head_text.to_owned(), b.items.len());
            let mut rows = String::with_capacity(row.len() + 1);
            rows.push(' ');
            rows.push_str(row);
            b.items.push(Item {
                head: head_text.to_owned(),
                rows,
                indexes: vec![index],
            });
            b.bytes += item_cost + row_cost;
        }
    }
}

/// Escapes a measurement, tag key, tag value or field key.
fn line_escape(s: &str, measurement: bool, out: &mut String) {
    for c in s.chars() {
        let escape = match c {
            ',' | ' ' | '\\' => true,
            '=' | '"' => !measurement,
            _ => false,
        };
        if escape {
            out.push('\\');
        }
        // A newline would end the line: TDengine has no escape for it.
        out.push(if c == '\n' { ' ' } else { c });
    }
}

fn line_field(value: Value<'_>, out: &mut String) -> bool {
    let string = |s: &str, out: &mut String| {
        out.push('"');
        for c in s.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    };
    match value {
        Value::Null | Value::Json(serde_json::Value::Null) => return false,
        Value::Str(s) => string(s, out),
        Value::Json(serde_json::Value::String(s)) => string(s, out),
        Value::Json(serde_json::Value::Bool(b)) => out.push_str(if *b { "true" } else { "false" }),
        // Every number is a DOUBLE: a field that is 23 in one message and
        // 23.5 in the next must keep one type.
        Value::Json(serde_json::Value::Number(n)) => {
            let _ = write!(out, "{}", n.as_f64().unwrap_or(f64::NAN));
        }
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Json(other) => string(&other.to_string(), out),
    }
    true
}

fn encode_lines(
    template: &LineTemplate,
    null_undefined: bool,
    max_bytes: usize,
    batch: &[Message],
    rejected: &mut Vec<Rejected>,
) -> Request {
    let uses_json = template.measurement.uses_json()
        || template.tags.iter().any(|(_, t)| t.uses_json())
        || template.fields.iter().any(|(_, t)| t.uses_json());
    let mut statements: Vec<Statement> = Vec::new();
    let mut current = Statement {
        text: String::new(),
        indexes: Vec::new(),
    };
    let mut line = String::new();
    let mut value = String::new();
    'messages: for (index, m) in batch.iter().enumerate() {
        let json = decode(uses_json, m);
        line.clear();
        value.clear();
        let mut reject = |reason: String| rejected.push(Rejected { index, reason });
        if let Err(e) = template
            .measurement
            .render_plain(m, json.as_ref())
            .map(|s| {
                line_escape(&s, true, &mut line);
            })
        {
            reject(e.to_string());
            continue;
        }
        for (key, t) in &template.tags {
            value.clear();
            match t.render(m, json.as_ref(), &mut plain, &mut value) {
                Ok(()) if value.is_empty() => continue,
                Ok(()) => {
                    line.push(',');
                    line_escape(key, false, &mut line);
                    line.push('=');
                    line_escape(&value, false, &mut line);
                }
                Err(_) if null_undefined => continue,
                Err(e) => {
                    reject(format!("tag {key:?}: {e}"));
                    continue 'messages;
                }
            }
        }
        let mut first = true;
        for (key, t) in &template.fields {
            value.clear();
            let mut present = true;
            let rendered = t.render(
                m,
                json.as_ref(),
                &mut |v, out| present &= line_field(v, out),
                &mut value,
            );
            match rendered {
                Ok(()) if present && !value.is_empty() => {
                    line.push(if first { ' ' } else { ',' });
                    first = false;
                    line_escape(key, false, &mut line);
                    line.push('=');
                    line.push_str(&value);
                }
                Ok(()) => {}
                Err(_) if null_undefined => {}
                Err(e) => {
                    reject(format!("field {key:?}: {e}"));
                    continue 'messages;
                }
            }
        }
        if first {
            reject("no field has a value: a line needs at least one".to_owned());
            continue;
        }
        let ts = if template.nanoseconds {
            i128::from(m.timestamp_ms) * 1_000_000
        } else {
            i128::from(m.timestamp_ms)
        };
        let _ = write!(line, " {ts}");
        if line.len() + 1 > max_bytes {
            reject(format!(
                "the line takes {} bytes, more than the {max_bytes}-byte write limit",
                line.len()
            ));
            continue;
        }
        if !current.text.is_empty() && current.text.len() + 1 + line.len() > max_bytes {
            statements.push(std::mem::replace(
                &mut current,
                Statement {
                    text: String::new(),
                    indexes: Vec::new(),
                },
            ));
        }
        if !current.text.is_empty() {
            current.text.push('\n');
        }
        current.text.push_str(&line);
        current.indexes.push(index);
    }
    if !current.indexes.is_empty() {
        statements.push(current);
    }
    Request { statements }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Fields;

    fn msg(client: &str, payload: &str, ts: i64) -> Message {
        let mut m = Message::new(format!("devices/{client}/temp_hum"), payload.to_owned(), ts);
        m.fields = Fields::from_pairs([("clientid", client)]);
        m
    }

    fn sql_encoder(sql: &str, max_bytes: usize) -> Encoder {
        Encoder::Sql {
            template: SqlTemplate::parse(sql).unwrap(),
            null_undefined: false,
            max_bytes,
        }
    }

    const SEED: &str = "INSERT INTO iot_data.temp_hum(ts, temp, hum, clientid) VALUES (${ts}, ${temp}, ${hum}, '${clientid}')";

    #[test]
    fn rows_of_one_table_share_one_values_clause() {
        let batch = [
            msg("c1", r#"{"temp": 23, "hum": 90}"#, 1),
            msg("c'2", r#"{"temp": 24.5, "hum": 91}"#, 2),
        ];
        let mut rejected = Vec::new();
        let r = sql_encoder(SEED, MAX_STATEMENT_BYTES).encode(&batch, &mut rejected);
        assert!(rejected.is_empty());
        assert_eq!(
            r.statements,
            [Statement {
                text: r"INSERT INTO iot_data.temp_hum (ts, temp, hum, clientid) VALUES (1, 23, 90, 'c1') (2, 24.5, 91, 'c\'2')".into(),
                indexes: vec![0, 1],
            }]
        );
    }

    #[test]
    fn super_table_mode_groups_rows_by_child_table() {
        let template = SqlTemplate::super_table(
            "iot.d_${clientid}",
            "iot.meters",
            &["'${clientid}'".to_owned()],
            None,
            "(${ts}, ${temp})",
        )
        .unwrap();
        let encoder = Encoder::Sql {
            template,
            null_undefined: false,
            max_bytes: MAX_STATEMENT_BYTES,
        };
        let batch = [
            msg("a", r#"{"temp": 1}"#, 1),
            msg("b", r#"{"temp": 2}"#, 2),
            msg("a", r#"{"temp": 3}"#, 3),
            msg("x-y", r#"{"temp": 4}"#, 4),
        ];
        let mut rejected = Vec::new();
        let r = encoder.encode(&batch, &mut rejected);
        assert_eq!(
            r.statements[0].text,
            "INSERT INTO iot.d_a USING iot.meters TAGS ('a') VALUES (1, 1) (3, 3) iot.d_b USING iot.meters TAGS ('b') VALUES (2, 2)"
        );
        assert_eq!(r.statements[0].indexes, [0, 2, 1]);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].index, 3);
        assert!(
            rejected[0].reason.contains("\"x-y\""),
            "{}",
            rejected[0].reason
        );
    }

    #[test]
    fn statements_are_split_before_the_limit_and_never_pass_it() {
        let batch: Vec<Message> = (0..500)
            .map(|i| msg("c1", &format!(r#"{{"temp": {i}, "hum": 1}}"#), i))
            .collect();
        let mut rejected = Vec::new();
        let max = 2_000;
        let r = sql_encoder(SEED, max).encode(&batch, &mut rejected);
        assert!(rejected.is_empty());
        assert!(r.statements.len() > 5);
        for s in &r.statements {
            assert!(s.text.len() <= max, "{}", s.text.len());
            assert!(s.text.starts_with("INSERT INTO iot_data.temp_hum"));
        }
        let all: Vec<usize> = r
            .statements
            .iter()
            .flat_map(|s| s.indexes.clone())
            .collect();
        assert_eq!(all, (0..500).collect::<Vec<_>>());
    }

    #[test]
    fn a_missing_variable_rejects_only_its_message() {
        let batch = [
            msg("c1", r#"{"temp": 1}"#, 1),
            msg("c2", r#"{"temp": 2, "hum": 3}"#, 2),
        ];
        let mut rejected = Vec::new();
        let r = sql_encoder(SEED, MAX_STATEMENT_BYTES).encode(&batch, &mut rejected);
        assert_eq!(
            rejected,
            [Rejected {
                index: 0,
                reason: "variable ${hum} is undefined".into()
            }]
        );
        assert_eq!(r.statements[0].indexes, [1]);
    }

    #[test]
    fn templates_that_are_not_inserts_are_refused() {
        assert_eq!(
            SqlTemplate::parse("SELECT 1").unwrap_err(),
            SqlTemplateError::NotInsert
        );
        assert_eq!(
            SqlTemplate::parse("insert into t (a)").unwrap_err(),
            SqlTemplateError::NoValues
        );
        // `values` inside a placeholder or a string is not the keyword.
        let t = SqlTemplate::parse("insert into t VALUES ('values', ${values})").unwrap();
        assert_eq!(t.row.source(), "('values', ${values})");
    }

    #[test]
    fn lines_escape_and_type_their_values() {
        let encoder = Encoder::Line {
            template: LineTemplate {
                measurement: Template::parse("temp hum").unwrap(),
                tags: vec![("client".into(), Template::parse("${clientid}").unwrap())],
                fields: vec![
                    ("temp".into(), Template::parse("${temp}").unwrap()),
                    ("note".into(), Template::parse("${note}").unwrap()),
                ],
                nanoseconds: true,
            },
            null_undefined: true,
            max_bytes: MAX_STATEMENT_BYTES,
        };
        let batch = [
            msg("a b,c", r#"{"temp": 23, "note": "say \"hi\""}"#, 5),
            msg("d", r#"{"temp": 1.5}"#, 6),
        ];
        let mut rejected = Vec::new();
        let r = encoder.encode(&batch, &mut rejected);
        assert!(rejected.is_empty());
        assert_eq!(
            r.statements[0].text,
            "temp\\ hum,client=a\\ b\\,c temp=23,note=\"say \\\"hi\\\"\" 5000000\ntemp\\ hum,client=d temp=1.5 6000000"
        );
    }
}
