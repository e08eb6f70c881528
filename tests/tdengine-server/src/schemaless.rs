//! Schemaless writes (the `insert` action), InfluxDB line protocol only:
//! `measurement,tag=v,… field=v,… timestamp`, with `\` escaping space,
//! `,`, `=`, `"` and `\`.
//!
//! As TDengine does: the measurement becomes a super table with a `_ts`
//! TIMESTAMP column, one column per field (typed by its suffix: none or
//! `f64` DOUBLE, `f32` FLOAT, `i`/`i64` BIGINT, `i32` INT, `t`/`f`/`true`/
//! `false` BOOL, `"…"` VARCHAR, `L"…"` NCHAR) and NCHAR tags; each tag set
//! gets a child table `t_<md5>`. Columns and tags are added as new ones
//! appear. The line protocol needs an explicit precision: `""` and the
//! crate's broken `"us"` are refused.

use std::collections::BTreeMap;

use md5::{Digest, Md5};

use crate::sql::{Column, Database, Precision, STable, Store, Table, TdError, Type, Value};

/// `TSDB_CODE_SML_INVALID_PRECISION_TYPE`.
pub const INVALID_PRECISION: u16 = 0x3001;
/// `TSDB_CODE_SML_INVALID_DATA`.
pub const INVALID_DATA: u16 = 0x3003;

/// Writes `data` (lines) into `db`; returns the rows written.
pub fn insert(
    store: &mut Store,
    db: Option<&str>,
    protocol: u64,
    precision: &str,
    data: &str,
) -> Result<usize, TdError> {
    if protocol != 1 {
        return Err(TdError::new(INVALID_DATA, "Invalid data format"));
    }
    let db = db.ok_or_else(|| TdError::new(0x2616, "Database not specified"))?;
    let database = store
        .databases
        .get_mut(db)
        .ok_or_else(|| TdError::new(0x0388, "Database not exist"))?;
    // From the line's unit to the database's.
    let (num, den): (i64, i64) = match (precision, database.precision) {
        ("ns", Precision::Ns) | ("ms", Precision::Ms) => (1, 1),
        ("ns", Precision::Ms) => (1, 1_000_000),
        ("ms", Precision::Ns) => (1_000_000, 1),
        ("ns", Precision::Us) => (1, 1_000),
        ("ms", Precision::Us) => (1_000, 1),
        _ => {
            return Err(TdError::new(
                INVALID_PRECISION,
                "Invalid timestamp precision type",
            ));
        }
    };
    let mut lines = Vec::new();
    for line in data.split('\n').filter(|l| !l.trim().is_empty()) {
        lines.push(parse(line)?);
    }
    let n = lines.len();
    for line in lines {
        let ts = line.ts * num / den;
        write(database, line, ts);
    }
    Ok(n)
}

struct Line {
    measurement: String,
    tags: Vec<(String, String)>,
    fields: Vec<(String, Type, Value)>,
    ts: i64,
}

/// Splits at unescaped `sep` outside double quotes.
fn split(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut escaped = false;
    let mut quoted = false;
    for c in s.chars() {
        if escaped {
            out.last_mut().unwrap().push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
            out.last_mut().unwrap().push(c);
        } else if c == '"' {
            quoted = !quoted;
            out.last_mut().unwrap().push(c);
        } else if c == sep && !quoted {
            out.push(String::new());
        } else {
            out.last_mut().unwrap().push(c);
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn parse(line: &str) -> Result<Line, TdError> {
    let bad = || TdError::new(INVALID_DATA, "Invalid data format");
    let parts = split(line, ' ');
    let [head, fields, ts] = parts.as_slice() else {
        return Err(bad());
    };
    let mut head = split(head, ',').into_iter();
    let measurement = unescape(&head.next().ok_or_else(bad)?);
    let mut tags = Vec::new();
    for kv in head {
        let kv = split(&kv, '=');
        let [k, v] = kv.as_slice() else {
            return Err(bad());
        };
        tags.push((unescape(k).to_ascii_lowercase(), unescape(v)));
    }
    let mut out = Vec::new();
    for kv in split(fields, ',') {
        let kv = split(&kv, '=');
        let [k, v] = kv.as_slice() else {
            return Err(bad());
        };
        out.push((unescape(k).to_ascii_lowercase(), field(v).ok_or_else(bad)?));
    }
    let ts: i64 = ts.trim().parse().map_err(|_| bad())?;
    if measurement.is_empty() || out.is_empty() {
        return Err(bad());
    }
    Ok(Line {
        measurement,
        tags,
        fields: out.into_iter().map(|(k, (t, v))| (k, t, v)).collect(),
        ts,
    })
}

fn field(v: &str) -> Option<(Type, Value)> {
    let string = |s: &str| {
        let body = s.strip_prefix('"')?.strip_suffix('"')?;
        Some(unescape(body))
    };
    if let Some(rest) = v.strip_prefix('L') {
        let s = string(rest)?;
        return Some((Type::NChar(s.chars().count().max(1) as u32), Value::Str(s)));
    }
    if v.starts_with('"') {
        let s = string(v)?;
        return Some((Type::Varchar(s.len().max(1) as u32), Value::Str(s)));
    }
    match v {
        "t" | "T" | "true" | "True" | "TRUE" => return Some((Type::Bool, Value::Bool(true))),
        "f" | "F" | "false" | "False" | "FALSE" => return Some((Type::Bool, Value::Bool(false))),
        _ => {}
    }
    for (suffix, ty) in [
        ("i64", Type::BigInt),
        ("i32", Type::Int),
        ("i16", Type::SmallInt),
        ("i8", Type::TinyInt),
        ("i", Type::BigInt),
    ] {
        if let Some(n) = v.strip_suffix(suffix) {
            return Some((ty, Value::Int(n.parse().ok()?)));
        }
    }
    if let Some(n) = v.strip_suffix("f32") {
        return Some((Type::Float, Value::Float(n.parse().ok()?)));
    }
    let n = v.strip_suffix("f64").unwrap_or(v);
    Some((Type::Double, Value::Float(n.parse().ok()?)))
}

fn write(database: &mut Database, line: Line, ts: i64) {
    let mut tags = line.tags;
    tags.sort();
    let stable = database
        .stables
        .entry(line.measurement.clone())
        .or_insert_with(|| STable {
            columns: vec![Column {
                name: "_ts".into(),
                ty: Type::Timestamp,
            }],
            tags: Vec::new(),
        });
    for (name, ty, _) in &line.fields {
        widen(&mut stable.columns, name, *ty);
    }
    for (name, value) in &tags {
        widen(
            &mut stable.tags,
            name,
            Type::NChar(value.chars().count().max(1) as u32),
        );
    }
    let columns = stable.columns.clone();
    let tag_columns = stable.tags.clone();
    let mut key = line.measurement.clone();
    for (k, v) in &tags {
        key.push_str(&format!(",{k}={v}"));
    }
    let name = format!("t_{:x}", Md5::digest(key.as_bytes()));
    let table = database.tables.entry(name).or_insert_with(|| Table {
        columns: columns.clone(),
        stable: Some(line.measurement.clone()),
        tags: Vec::new(),
        rows: BTreeMap::new(),
    });
    // Columns added since the table was created: older rows get NULL.
    for row in table.rows.values_mut() {
        row.resize(columns.len(), Value::Null);
    }
    table.columns = columns.clone();
    table.tags = tag_columns
        .iter()
        .map(|c| {
            tags.iter()
                .find(|(k, _)| *k == c.name)
                .map_or(Value::Null, |(_, v)| Value::Str(v.clone()))
        })
        .collect();
    let mut row = vec![Value::Null; columns.len()];
    row[0] = Value::Int(ts);
    for (name, _, value) in line.fields {
        if let Some(i) = columns.iter().position(|c| c.name == name) {
            row[i] = value;
        }
    }
    table.rows.insert(ts, row);
}

/// Adds column `name`, or widens a string column to fit.
fn widen(columns: &mut Vec<Column>, name: &str, ty: Type) {
    match columns.iter_mut().find(|c| c.name == name) {
        Some(c) => {
            if let (Type::Varchar(a), Type::Varchar(b)) | (Type::NChar(a), Type::NChar(b)) =
                (&mut c.ty, ty)
            {
                *a = (*a).max(b);
            }
        }
        None => columns.push(Column {
            name: name.to_owned(),
            ty,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::Session;

    #[test]
    fn lines_become_a_super_table_and_child_tables_per_tag_set() {
        let mut store = Store::default();
        store
            .execute(&mut Session::default(), "create database d")
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let data = format!(
            "m,dev=a temp=1.5,s=\"x y\\\"\" {now}\nm,dev=b temp=2i64 {}",
            now + 1
        );
        assert_eq!(insert(&mut store, Some("d"), 1, "ms", &data).unwrap(), 2);
        let db = &store.databases["d"];
        assert_eq!(db.stables["m"].columns.len(), 3);
        assert_eq!(db.tables.len(), 2);
        assert_eq!(
            insert(&mut store, Some("d"), 1, "us", &data)
                .unwrap_err()
                .code,
            INVALID_PRECISION
        );
    }
}
