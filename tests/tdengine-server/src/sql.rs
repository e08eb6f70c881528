//! The SQL the test server understands, and the store it runs against.
//!
//! Supported (TDengine 3 grammar, case-insensitive keywords, `db.name`
//! or `USE db` then `name`):
//!
//! - `CREATE DATABASE [IF NOT EXISTS] db [PRECISION 'ms'|'us'|'ns'] [KEEP n] …`
//!   (other options are accepted and ignored);
//! - `CREATE TABLE [IF NOT EXISTS] t (cols…) [TAGS (tags…)]`,
//!   `CREATE STABLE [IF NOT EXISTS] st (cols…) TAGS (tags…)`,
//!   `CREATE TABLE [IF NOT EXISTS] t USING st [(tags…)] TAGS (vals…)`;
//! - `USE db`;
//! - `INSERT INTO` with any number of items `t [USING st [(tags…)] TAGS
//!   (vals…)] [(cols…)] VALUES (…) [(…)…]`;
//! - `SELECT server_version()`, `SELECT server_status()`,
//!   `SELECT * | count(*) | col, … FROM t [ORDER BY ts [ASC|DESC]]`
//!   (`tbname` and tags selectable on super tables).
//!
//! Anything else is refused with `0x2600 syntax error near "…"`, the code
//! TDengine's parser gives. A statement is checked whole before any row is
//! stored, and rows are keyed by (table, timestamp): writing a row again
//! replaces it, as TDengine does.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// A TDengine error: code (as sent over WebSocket, `& 0xFFFF`) and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdError {
    /// E.g. `0x2603`.
    pub code: u16,
    /// E.g. `Table does not exist`.
    pub message: String,
}

impl TdError {
    /// An error with TDengine's code and message.
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        TdError {
            code,
            message: message.into(),
        }
    }

    fn syntax(near: &str) -> Self {
        let near: String = near.chars().take(40).collect();
        TdError::new(codes::SYNTAX_ERROR, format!("syntax error near \"{near}\""))
    }
}

/// TDengine error codes the server returns (`include/util/taoserror.h`).
pub mod codes {
    /// `TSDB_CODE_PAR_SYNTAX_ERROR`.
    pub const SYNTAX_ERROR: u16 = 0x2600;
    /// `TSDB_CODE_PAR_INVALID_COLUMN`.
    pub const INVALID_COLUMN: u16 = 0x2602;
    /// `TSDB_CODE_PAR_TABLE_NOT_EXIST`.
    pub const TABLE_NOT_EXIST: u16 = 0x2603;
    /// `TSDB_CODE_PAR_WRONG_VALUE_TYPE`.
    pub const WRONG_VALUE_TYPE: u16 = 0x2605;
    /// `TSDB_CODE_PAR_VALUE_TOO_LONG`.
    pub const VALUE_TOO_LONG: u16 = 0x2610;
    /// `TSDB_CODE_PAR_DB_NOT_SPECIFIED`.
    pub const DB_NOT_SPECIFIED: u16 = 0x2616;
    /// `TSDB_CODE_TSC_EXCEED_SQL_LIMIT`.
    pub const SQL_TOO_LONG: u16 = 0x0219;
    /// `TSDB_CODE_TSC_VALUE_OUT_OF_RANGE`.
    pub const VALUE_OUT_OF_RANGE: u16 = 0x0224;
    /// `TSDB_CODE_MND_AUTH_FAILURE`.
    pub const AUTH_FAILURE: u16 = 0x0357;
    /// `TSDB_CODE_MND_STB_NOT_EXIST`.
    pub const STB_NOT_EXIST: u16 = 0x0362;
    /// `TSDB_CODE_MND_DB_ALREADY_EXIST`.
    pub const DB_ALREADY_EXIST: u16 = 0x0381;
    /// `TSDB_CODE_MND_DB_NOT_EXIST`.
    pub const DB_NOT_EXIST: u16 = 0x0388;
    /// `TSDB_CODE_TDB_TABLE_ALREADY_EXIST`.
    pub const TABLE_ALREADY_EXIST: u16 = 0x0603;
    /// `TSDB_CODE_TDB_TIMESTAMP_OUT_OF_RANGE`.
    pub const TIMESTAMP_OUT_OF_RANGE: u16 = 0x060B;
    /// `TSDB_CODE_SYN_TIMEOUT`.
    pub const SYNC_TIMEOUT: u16 = 0x0903;
    /// taosAdapter's generic error.
    pub const ADAPTER: u16 = 0xFFFF;
}

/// The longest statement TDengine accepts (`TSDB_MAX_ALLOWED_SQL_LEN`).
pub const MAX_SQL_LEN: usize = 1 << 20;

/// Default `KEEP` of a database, days.
const DEFAULT_KEEP_DAYS: i64 = 3650;

/// Column and tag types (wire codes in [`Type::code`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    /// BOOL.
    Bool,
    /// TINYINT.
    TinyInt,
    /// SMALLINT.
    SmallInt,
    /// INT.
    Int,
    /// BIGINT.
    BigInt,
    /// FLOAT.
    Float,
    /// DOUBLE.
    Double,
    /// VARCHAR(n) / BINARY(n): n bytes.
    Varchar(u32),
    /// TIMESTAMP.
    Timestamp,
    /// NCHAR(n): n characters.
    NChar(u32),
}

impl Type {
    /// The type code of raw blocks and `fields_types`.
    pub fn code(self) -> u8 {
        match self {
            Type::Bool => 1,
            Type::TinyInt => 2,
            Type::SmallInt => 3,
            Type::Int => 4,
            Type::BigInt => 5,
            Type::Float => 6,
            Type::Double => 7,
            Type::Varchar(_) => 8,
            Type::Timestamp => 9,
            Type::NChar(_) => 10,
        }
    }

    /// The declared width (`fields_lengths`, schema `bytes`).
    pub fn bytes(self) -> u32 {
        match self {
            Type::Bool | Type::TinyInt => 1,
            Type::SmallInt => 2,
            Type::Int | Type::Float => 4,
            Type::BigInt | Type::Double | Type::Timestamp => 8,
            Type::Varchar(n) => n,
            Type::NChar(n) => n * 4,
        }
    }

    /// Bytes per value of a fixed-size type; `None` for var-size types.
    pub fn fixed_width(self) -> Option<usize> {
        match self {
            Type::Varchar(_) | Type::NChar(_) => None,
            other => Some(other.bytes() as usize),
        }
    }
}

/// A stored value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// NULL.
    Null,
    /// BOOL.
    Bool(bool),
    /// Integer types and TIMESTAMP.
    Int(i64),
    /// FLOAT and DOUBLE.
    Float(f64),
    /// VARCHAR and NCHAR.
    Str(String),
}

/// A column or tag.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    /// Lower-case name (unquoted names are case-insensitive).
    pub name: String,
    /// Its type.
    pub ty: Type,
}

/// Timestamp precision of a database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Milliseconds (the default).
    Ms,
    /// Microseconds.
    Us,
    /// Nanoseconds.
    Ns,
}

impl Precision {
    /// The `precision` field of a query reply.
    pub fn code(self) -> u8 {
        match self {
            Precision::Ms => 0,
            Precision::Us => 1,
            Precision::Ns => 2,
        }
    }

    fn per_day(self) -> i64 {
        86_400
            * match self {
                Precision::Ms => 1_000,
                Precision::Us => 1_000_000,
                Precision::Ns => 1_000_000_000,
            }
    }

    fn now(self) -> i64 {
        let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        match self {
            Precision::Ms => d.as_millis() as i64,
            Precision::Us => d.as_micros() as i64,
            Precision::Ns => d.as_nanos() as i64,
        }
    }
}

/// A super table.
#[derive(Clone, Debug)]
pub struct STable {
    /// Columns, the first a TIMESTAMP.
    pub columns: Vec<Column>,
    /// Tags.
    pub tags: Vec<Column>,
}

/// A table (normal, or child of a super table).
#[derive(Clone, Debug)]
pub struct Table {
    /// Columns, the first a TIMESTAMP.
    pub columns: Vec<Column>,
    /// The super table, for a child table.
    pub stable: Option<String>,
    /// Tag values of a child table, in the super table's tag order.
    pub tags: Vec<Value>,
    /// Rows by timestamp: a second write of a timestamp replaces the row.
    pub rows: BTreeMap<i64, Vec<Value>>,
}

/// A database.
#[derive(Clone, Debug)]
pub struct Database {
    /// Timestamp precision.
    pub precision: Precision,
    /// `KEEP`, days.
    pub keep_days: i64,
    /// Super tables by lower-case name.
    pub stables: BTreeMap<String, STable>,
    /// Tables by lower-case name.
    pub tables: BTreeMap<String, Table>,
}

impl Database {
    fn new(precision: Precision, keep_days: i64) -> Self {
        Database {
            precision,
            keep_days,
            stables: BTreeMap::new(),
            tables: BTreeMap::new(),
        }
    }
}

/// Everything the server stores.
#[derive(Clone, Debug, Default)]
pub struct Store {
    /// Databases by lower-case name.
    pub databases: BTreeMap<String, Database>,
}

/// What running a statement gives.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// INSERT, CREATE, USE: no result columns.
    Update {
        /// Rows written.
        affected_rows: usize,
    },
    /// A result set.
    Rows(ResultSet),
}

/// A result set.
#[derive(Clone, Debug, PartialEq)]
pub struct ResultSet {
    /// Column names and types.
    pub fields: Vec<(String, Type)>,
    /// Rows.
    pub rows: Vec<Vec<Value>>,
    /// Timestamp precision.
    pub precision: Precision,
}

// ----- tokens --------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    /// A name or keyword; `quoted` for a backquoted name.
    Ident(String, bool),
    /// A string literal, unescaped.
    Str(String),
    /// A number, as written (sign included).
    Num(String),
    /// Punctuation: `( ) , . * ; =`.
    P(char),
}

struct Token {
    tok: Tok,
    /// Byte offset in the statement.
    at: usize,
}

fn tokenize(sql: &str) -> Result<Vec<Token>, TdError> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let at = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' | b')' | b',' | b'.' | b'*' | b';' | b'=' => {
                out.push(Token {
                    tok: Tok::P(c as char),
                    at,
                });
                i += 1;
            }
            b'\'' | b'"' => {
                let quote = c;
                let mut s = Vec::new();
                i += 1;
                loop {
                    let Some(&d) = b.get(i) else {
                        return Err(TdError::syntax(&sql[at..]));
                    };
                    if d == b'\\' {
                        let Some(&e) = b.get(i + 1) else {
                            return Err(TdError::syntax(&sql[at..]));
                        };
                        match e {
                            b'n' => s.push(b'\n'),
                            b'r' => s.push(b'\r'),
                            b't' => s.push(b'\t'),
                            b'\\' | b'\'' | b'"' | b'%' | b'_' => s.push(e),
                            other => {
                                // An unknown escape is kept as written.
                                s.push(b'\\');
                                s.push(other);
                            }
                        }
                        i += 2;
                    } else if d == quote {
                        i += 1;
                        break;
                    } else {
                        s.push(d);
                        i += 1;
                    }
                }
                let s = String::from_utf8(s).map_err(|_| TdError::syntax(&sql[at..]))?;
                out.push(Token {
                    tok: Tok::Str(s),
                    at,
                });
            }
            b'`' => {
                let end = sql[i + 1..]
                    .find('`')
                    .ok_or_else(|| TdError::syntax(&sql[at..]))?;
                let name = &sql[i + 1..i + 1 + end];
                if name.contains('.') || name.is_empty() {
                    return Err(TdError::new(
                        0x2617,
                        format!("Invalid identifier name: {name}"),
                    ));
                }
                out.push(Token {
                    tok: Tok::Ident(name.to_owned(), true),
                    at,
                });
                i += end + 2;
            }
            b'-' | b'+' | b'0'..=b'9' => {
                let mut j = i + 1;
                while j < b.len()
                    && (b[j].is_ascii_digit()
                        || matches!(b[j], b'.' | b'e' | b'E')
                        || (matches!(b[j], b'-' | b'+') && matches!(b[j - 1], b'e' | b'E')))
                {
                    j += 1;
                }
                if j == i + 1 && !c.is_ascii_digit() {
                    return Err(TdError::syntax(&sql[at..]));
                }
                out.push(Token {
                    tok: Tok::Num(sql[i..j].to_owned()),
                    at,
                });
                i = j;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let mut j = i + 1;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                out.push(Token {
                    tok: Tok::Ident(sql[i..j].to_owned(), false),
                    at,
                });
                i = j;
            }
            _ => return Err(TdError::syntax(&sql[at..])),
        }
    }
    Ok(out)
}

struct Parser<'a> {
    sql: &'a str,
    toks: Vec<Token>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(sql: &'a str) -> Result<Self, TdError> {
        Ok(Parser {
            sql,
            toks: tokenize(sql)?,
            pos: 0,
        })
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.tok)
    }

    fn error(&self) -> TdError {
        let at = self.toks.get(self.pos).map_or(self.sql.len(), |t| t.at);
        TdError::syntax(&self.sql[at..])
    }

    fn next(&mut self) -> Result<Tok, TdError> {
        let t = self.toks.get(self.pos).ok_or_else(|| self.error())?;
        self.pos += 1;
        Ok(t.tok.clone())
    }

    fn at_end(&self) -> bool {
        self.pos >= self.toks.len()
            || (self.pos + 1 == self.toks.len() && self.toks[self.pos].tok == Tok::P(';'))
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(s, false)) if s.eq_ignore_ascii_case(kw))
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        let yes = self.is_kw(kw);
        if yes {
            self.pos += 1;
        }
        yes
    }

    fn kw(&mut self, kw: &str) -> Result<(), TdError> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(self.error())
        }
    }

    fn eat_p(&mut self, p: char) -> bool {
        let yes = self.peek() == Some(&Tok::P(p));
        if yes {
            self.pos += 1;
        }
        yes
    }

    fn p(&mut self, p: char) -> Result<(), TdError> {
        if self.eat_p(p) {
            Ok(())
        } else {
            Err(self.error())
        }
    }

    fn ident(&mut self) -> Result<String, TdError> {
        match self.next()? {
            Tok::Ident(s, true) => Ok(s),
            Tok::Ident(s, false) => Ok(s.to_ascii_lowercase()),
            _ => {
                self.pos -= 1;
                Err(self.error())
            }
        }
    }

    /// `[db.]name`.
    fn name(&mut self) -> Result<(Option<String>, String), TdError> {
        let first = self.ident()?;
        if self.eat_p('.') {
            Ok((Some(first), self.ident()?))
        } else {
            Ok((None, first))
        }
    }

    fn if_not_exists(&mut self) -> Result<bool, TdError> {
        if self.eat_kw("if") {
            self.kw("not")?;
            self.kw("exists")?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn ty(&mut self) -> Result<Type, TdError> {
        let name = match self.next()? {
            Tok::Ident(s, false) => s.to_ascii_lowercase(),
            _ => {
                self.pos -= 1;
                return Err(self.error());
            }
        };
        let width = |p: &mut Self| -> Result<u32, TdError> {
            p.p('(')?;
            let n = match p.next()? {
                Tok::Num(n) => n.parse::<u32>().map_err(|_| p.error())?,
                _ => return Err(p.error()),
            };
            p.p(')')?;
            Ok(n)
        };
        Ok(match name.as_str() {
            "bool" => Type::Bool,
            "tinyint" => Type::TinyInt,
            "smallint" => Type::SmallInt,
            "int" | "integer" => Type::Int,
            "bigint" => Type::BigInt,
            "float" => Type::Float,
            "double" => Type::Double,
            "timestamp" => Type::Timestamp,
            "varchar" | "binary" => Type::Varchar(width(self)?),
            "nchar" => Type::NChar(width(self)?),
            _ => {
                self.pos -= 1;
                return Err(self.error());
            }
        })
    }

    /// `( item , item … )`: one or more items in parentheses.
    fn paren_list<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, TdError>,
    ) -> Result<Vec<T>, TdError> {
        self.p('(')?;
        let mut items = Vec::new();
        loop {
            items.push(item(self)?);
            if self.eat_p(')') {
                return Ok(items);
            }
            self.p(',')?;
        }
    }

    fn column_defs(&mut self) -> Result<Vec<Column>, TdError> {
        self.paren_list(|p| {
            let name = p.ident()?;
            let ty = p.ty()?;
            Ok(Column { name, ty })
        })
    }

    fn name_list(&mut self) -> Result<Vec<String>, TdError> {
        self.paren_list(Self::ident)
    }

    fn literal(&mut self) -> Result<Lit, TdError> {
        Ok(match self.next()? {
            Tok::Str(s) => Lit::Str(s),
            Tok::Num(n) => Lit::Num(n),
            Tok::Ident(s, false) if s.eq_ignore_ascii_case("null") => Lit::Null,
            Tok::Ident(s, false) if s.eq_ignore_ascii_case("true") => Lit::Bool(true),
            Tok::Ident(s, false) if s.eq_ignore_ascii_case("false") => Lit::Bool(false),
            Tok::Ident(s, false) if s.eq_ignore_ascii_case("now") => {
                if self.eat_p('(') {
                    self.p(')')?;
                }
                Lit::Now
            }
            _ => {
                self.pos -= 1;
                return Err(self.error());
            }
        })
    }

    fn literal_list(&mut self) -> Result<Vec<Lit>, TdError> {
        self.paren_list(Self::literal)
    }
}

#[derive(Clone, Debug)]
enum Lit {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Now,
}

/// A session's state: its current database.
#[derive(Clone, Debug, Default)]
pub struct Session {
    /// After `USE db` (or `conn` with a db).
    pub db: Option<String>,
}

impl Store {
    /// Runs one statement.
    pub fn execute(&mut self, session: &mut Session, sql: &str) -> Result<Outcome, TdError> {
        if sql.len() > MAX_SQL_LEN {
            return Err(TdError::new(codes::SQL_TOO_LONG, "SQL statement too long"));
        }
        let mut p = Parser::new(sql)?;
        let outcome = if p.eat_kw("create") {
            self.create(&mut p, session)?
        } else if p.eat_kw("use") {
            let db = p.ident()?;
            if !self.databases.contains_key(&db) {
                return Err(TdError::new(codes::DB_NOT_EXIST, "Database not exist"));
            }
            session.db = Some(db);
            Outcome::Update { affected_rows: 0 }
        } else if p.eat_kw("insert") {
            p.kw("into")?;
            self.insert(&mut p, session)?
        } else if p.eat_kw("select") {
            self.select(&mut p, session)?
        } else {
            return Err(p.error());
        };
        if !p.at_end() {
            return Err(p.error());
        }
        Ok(outcome)
    }

    fn db_name(&self, session: &Session, db: Option<String>) -> Result<String, TdError> {
        let db = db
            .or_else(|| session.db.clone())
            .ok_or_else(|| TdError::new(codes::DB_NOT_SPECIFIED, "Database not specified"))?;
        if self.databases.contains_key(&db) {
            Ok(db)
        } else {
            Err(TdError::new(codes::DB_NOT_EXIST, "Database not exist"))
        }
    }

    fn create(&mut self, p: &mut Parser<'_>, session: &Session) -> Result<Outcome, TdError> {
        if p.eat_kw("database") {
            let if_not = p.if_not_exists()?;
            let name = p.ident()?;
            let mut precision = Precision::Ms;
            let mut keep = DEFAULT_KEEP_DAYS;
            while !p.at_end() {
                if p.eat_kw("precision") {
                    precision = match p.next()? {
                        Tok::Str(s) if s == "ms" => Precision::Ms,
                        Tok::Str(s) if s == "us" => Precision::Us,
                        Tok::Str(s) if s == "ns" => Precision::Ns,
                        _ => return Err(p.error()),
                    };
                } else if p.eat_kw("keep") {
                    keep = match p.next()? {
                        Tok::Num(n) => n.parse().map_err(|_| p.error())?,
                        _ => return Err(p.error()),
                    };
                } else {
                    // Other options: a name and a value.
                    p.ident()?;
                    p.literal()?;
                }
            }
            if self.databases.contains_key(&name) {
                if if_not {
                    return Ok(Outcome::Update { affected_rows: 0 });
                }
                return Err(TdError::new(
                    codes::DB_ALREADY_EXIST,
                    "Database already exists",
                ));
            }
            self.databases.insert(name, Database::new(precision, keep));
            return Ok(Outcome::Update { affected_rows: 0 });
        }
        let stable_kw = p.eat_kw("stable");
        if !stable_kw {
            p.kw("table")?;
        }
        let if_not = p.if_not_exists()?;
        let (db, name) = p.name()?;
        let db = self.db_name(session, db)?;
        if !stable_kw && p.eat_kw("using") {
            let (sdb, st) = p.name()?;
            let sdb = self.db_name(session, sdb.or(Some(db.clone())))?;
            let names = if p.peek() == Some(&Tok::P('(')) {
                Some(p.name_list()?)
            } else {
                None
            };
            p.kw("tags")?;
            let vals = p.literal_list()?;
            let database = self.databases.get_mut(&sdb).expect("checked");
            if database.tables.contains_key(&name) {
                return if if_not {
                    Ok(Outcome::Update { affected_rows: 0 })
                } else {
                    Err(TdError::new(
                        codes::TABLE_ALREADY_EXIST,
                        "Table already exists",
                    ))
                };
            }
            let child = child_table(database, &st, names.as_deref(), &vals)?;
            database.tables.insert(name, child);
            return Ok(Outcome::Update { affected_rows: 0 });
        }
        let columns = p.column_defs()?;
        let tags = if p.eat_kw("tags") {
            Some(p.column_defs()?)
        } else {
            None
        };
        if stable_kw && tags.is_none() {
            return Err(p.error());
        }
        if columns.first().map(|c| c.ty) != Some(Type::Timestamp) || columns.len() < 2 {
            return Err(TdError::new(
                0x2614,
                "The first column should be primary timestamp column",
            ));
        }
        let database = self.databases.get_mut(&db).expect("checked");
        if database.tables.contains_key(&name) || database.stables.contains_key(&name) {
            return if if_not {
                Ok(Outcome::Update { affected_rows: 0 })
            } else {
                Err(TdError::new(
                    codes::TABLE_ALREADY_EXIST,
                    "Table already exists",
                ))
            };
        }
        match tags {
            Some(tags) => {
                database.stables.insert(name, STable { columns, tags });
            }
            None => {
                database.tables.insert(
                    name,
                    Table {
                        columns,
                        stable: None,
                        tags: Vec::new(),
                        rows: BTreeMap::new(),
                    },
                );
            }
        }
        Ok(Outcome::Update { affected_rows: 0 })
    }

    fn insert(&mut self, p: &mut Parser<'_>, session: &Session) -> Result<Outcome, TdError> {
        // Checked whole first, then applied.
        let mut pending: Vec<Pending> = Vec::new();
        loop {
            let (db, name) = p.name()?;
            let db = self.db_name(session, db)?;
            let mut created = None;
            if p.eat_kw("using") {
                let (sdb, st) = p.name()?;
                let sdb = self.db_name(session, sdb.or(Some(db.clone())))?;
                let names = if p.peek() == Some(&Tok::P('(')) {
                    Some(p.name_list()?)
                } else {
                    None
                };
                p.kw("tags")?;
                let vals = p.literal_list()?;
                let database = &self.databases[&sdb];
                let exists = database.tables.contains_key(&name)
                    || pending
                        .iter()
                        .any(|(d, t, c, _)| *d == db && *t == name && c.is_some());
                let child = child_table(database, &st, names.as_deref(), &vals)?;
                if !exists {
                    created = Some(child);
                }
            }
            if created.is_none()
                && !self.databases[&db].tables.contains_key(&name)
                && self.databases[&db].stables.contains_key(&name)
            {
                self.insert_by_tbname(p, &db, &name, &mut pending)?;
                if p.at_end() {
                    break;
                }
                continue;
            }
            let table = created
                .as_ref()
                .or_else(|| {
                    pending
                        .iter()
                        .find_map(|(d, t, c, _)| (*d == db && *t == name).then_some(c.as_ref())?)
                })
                .or_else(|| self.databases[&db].tables.get(&name));
            let Some(table) = table else {
                return Err(TdError::new(codes::TABLE_NOT_EXIST, "Table does not exist"));
            };
            let columns = table.columns.clone();
            let order: Vec<usize> = if p.peek() == Some(&Tok::P('(')) {
                let names = p.name_list()?;
                let mut order = Vec::new();
                for n in names {
                    let i = columns.iter().position(|c| c.name == n).ok_or_else(|| {
                        TdError::new(codes::INVALID_COLUMN, format!("Invalid column name: {n}"))
                    })?;
                    order.push(i);
                }
                if order.first() != Some(&0) {
                    return Err(TdError::new(
                        0x2633,
                        "Primary timestamp column should not be null",
                    ));
                }
                order
            } else {
                (0..columns.len()).collect()
            };
            p.kw("values")?;
            let precision = self.databases[&db].precision;
            let keep = self.databases[&db].keep_days;
            let mut rows = Vec::new();
            while p.peek() == Some(&Tok::P('(')) {
                let lits = p.literal_list()?;
                if lits.len() != order.len() {
                    return Err(TdError::new(
                        codes::SYNTAX_ERROR,
                        "syntax error near \")\" (Illegal number of columns)",
                    ));
                }
                let mut row = vec![Value::Null; columns.len()];
                for (lit, &i) in lits.iter().zip(&order) {
                    row[i] = convert(lit, &columns[i], precision)?;
                }
                let Value::Int(ts) = row[0] else {
                    return Err(TdError::new(
                        0x2633,
                        "Primary timestamp column should not be null",
                    ));
                };
                check_timestamp(ts, precision, keep)?;
                rows.push((ts, row));
            }
            if rows.is_empty() {
                return Err(p.error());
            }
            pending.push((db, name, created, rows));
            if p.at_end() {
                break;
            }
        }
        let mut affected = 0;
        for (db, name, created, rows) in pending {
            let database = self.databases.get_mut(&db).expect("checked");
            if let Some(t) = created {
                database.tables.entry(name.clone()).or_insert(t);
            }
            let table = database.tables.get_mut(&name).expect("created or existing");
            affected += rows.len();
            for (ts, row) in rows {
                table.rows.insert(ts, row);
            }
        }
        Ok(Outcome::Update {
            affected_rows: affected,
        })
    }

    /// The super-table form, `INSERT INTO stb (tbname, cols…, tags…)
    /// VALUES ('d1', …)`: each row names its child table; tag values in
    /// the list create a missing child table (without them a missing one is
    /// `Table does not exist`). Only tags of a new table are used, as
    /// TDengine does not update the tags of an existing one.
    fn insert_by_tbname(
        &self,
        p: &mut Parser<'_>,
        db: &str,
        stable_name: &str,
        pending: &mut Vec<Pending>,
    ) -> Result<(), TdError> {
        let database = &self.databases[db];
        let stable = &database.stables[stable_name];
        if p.peek() != Some(&Tok::P('(')) {
            return Err(p.error());
        }
        let names = p.name_list()?;
        let tbname = names.iter().position(|n| n == "tbname").ok_or_else(|| {
            TdError::new(
                codes::SYNTAX_ERROR,
                "syntax error near \"values\" (tbname must be specified in super table insert)",
            )
        })?;
        enum Slot {
            Name,
            Column(usize),
            Tag(usize),
        }
        let mut slots = Vec::new();
        for (i, n) in names.iter().enumerate() {
            slots.push(if i == tbname {
                Slot::Name
            } else if let Some(c) = stable.columns.iter().position(|c| &c.name == n) {
                Slot::Column(c)
            } else if let Some(t) = stable.tags.iter().position(|t| &t.name == n) {
                Slot::Tag(t)
            } else {
                return Err(TdError::new(
                    codes::INVALID_COLUMN,
                    format!("Invalid column name: {n}"),
                ));
            });
        }
        if !slots.iter().any(|s| matches!(s, Slot::Column(0))) {
            return Err(TdError::new(
                0x2633,
                "Primary timestamp column should not be null",
            ));
        }
        p.kw("values")?;
        let mut any = false;
        while p.peek() == Some(&Tok::P('(')) {
            let lits = p.literal_list()?;
            if lits.len() != slots.len() {
                return Err(TdError::new(
                    codes::SYNTAX_ERROR,
                    "syntax error near \")\" (Illegal number of columns)",
                ));
            }
            let mut child = None;
            let mut row = vec![Value::Null; stable.columns.len()];
            let mut tags = vec![Value::Null; stable.tags.len()];
            let mut has_tags = false;
            for (lit, slot) in lits.iter().zip(&slots) {
                match slot {
                    Slot::Name => match lit {
                        Lit::Str(s) if !s.is_empty() => child = Some(s.to_ascii_lowercase()),
                        _ => {
                            return Err(TdError::new(
                                codes::SYNTAX_ERROR,
                                "syntax error near \")\" (Invalid tbname)",
                            ));
                        }
                    },
                    Slot::Column(c) => {
                        row[*c] = convert(lit, &stable.columns[*c], database.precision)?
                    }
                    Slot::Tag(t) => {
                        has_tags = true;
                        tags[*t] = convert(lit, &stable.tags[*t], database.precision)?;
                    }
                }
            }
            let child = child.expect("tbname is in the list");
            let Value::Int(ts) = row[0] else {
                return Err(TdError::new(
                    0x2633,
                    "Primary timestamp column should not be null",
                ));
            };
            check_timestamp(ts, database.precision, database.keep_days)?;
            let new_table = match database.tables.get(&child) {
                Some(t) if t.stable.as_deref() != Some(stable_name) => {
                    return Err(TdError::new(
                        codes::SYNTAX_ERROR,
                        "syntax error (the table is not a child table of the super table)",
                    ));
                }
                Some(_) => None,
                None if pending
                    .iter()
                    .any(|(d, t, c, _)| d == db && *t == child && c.is_some()) =>
                {
                    None
                }
                None if has_tags => Some(Table {
                    columns: stable.columns.clone(),
                    stable: Some(stable_name.to_owned()),
                    tags,
                    rows: BTreeMap::new(),
                }),
                None => {
                    return Err(TdError::new(codes::TABLE_NOT_EXIST, "Table does not exist"));
                }
            };
            pending.push((db.to_owned(), child, new_table, vec![(ts, row)]));
            any = true;
        }
        if !any {
            return Err(p.error());
        }
        Ok(())
    }

    fn select(&mut self, p: &mut Parser<'_>, session: &Session) -> Result<Outcome, TdError> {
        if p.eat_kw("server_version") {
            p.p('(')?;
            p.p(')')?;
            return Ok(Outcome::Rows(ResultSet {
                fields: vec![("server_version()".into(), Type::Varchar(64))],
                rows: vec![vec![Value::Str(String::new())]],
                precision: Precision::Ms,
            }));
        }
        if p.eat_kw("server_status") {
            p.p('(')?;
            p.p(')')?;
            return Ok(Outcome::Rows(ResultSet {
                fields: vec![("server_status()".into(), Type::Int)],
                rows: vec![vec![Value::Int(1)]],
                precision: Precision::Ms,
            }));
        }
        enum Sel {
            All,
            Count,
            Cols(Vec<String>),
        }
        let sel = if p.eat_p('*') {
            Sel::All
        } else if p.eat_kw("count") {
            p.p('(')?;
            p.p('*')?;
            p.p(')')?;
            Sel::Count
        } else {
            let mut cols = vec![p.ident()?];
            while p.eat_p(',') {
                cols.push(p.ident()?);
            }
            Sel::Cols(cols)
        };
        p.kw("from")?;
        let (db, name) = p.name()?;
        let db = self.db_name(session, db)?;
        let mut desc = false;
        if p.eat_kw("order") {
            p.kw("by")?;
            p.ident()?;
            if p.eat_kw("desc") {
                desc = true;
            } else {
                p.eat_kw("asc");
            }
        }
        let database = &self.databases[&db];
        // Rows with their tags and tbname appended.
        type Rows = Vec<(i64, Vec<Value>)>;
        let (columns, tags, mut rows): (Vec<Column>, Vec<Column>, Rows) =
            if let Some(st) = database.stables.get(&name) {
                let mut rows = Vec::new();
                for (tname, t) in &database.tables {
                    if t.stable.as_deref() != Some(name.as_str()) {
                        continue;
                    }
                    for (ts, r) in &t.rows {
                        let mut r = r.clone();
                        r.extend(t.tags.iter().cloned());
                        r.push(Value::Str(tname.clone()));
                        rows.push((*ts, r));
                    }
                }
                (st.columns.clone(), st.tags.clone(), rows)
            } else if let Some(t) = database.tables.get(&name) {
                let rows = t
                    .rows
                    .iter()
                    .map(|(ts, r)| {
                        let mut r = r.clone();
                        r.push(Value::Str(name.clone()));
                        (*ts, r)
                    })
                    .collect();
                (t.columns.clone(), Vec::new(), rows)
            } else {
                return Err(TdError::new(codes::TABLE_NOT_EXIST, "Table does not exist"));
            };
        rows.sort_by_key(|(ts, _)| *ts);
        if desc {
            rows.reverse();
        }
        let mut all: Vec<Column> = columns.iter().chain(&tags).cloned().collect();
        all.push(Column {
            name: "tbname".into(),
            ty: Type::Varchar(192),
        });
        let precision = database.precision;
        let set = match sel {
            Sel::Count => ResultSet {
                fields: vec![("count(*)".into(), Type::BigInt)],
                rows: vec![vec![Value::Int(rows.len() as i64)]],
                precision,
            },
            Sel::All => {
                let n = columns.len() + tags.len();
                ResultSet {
                    fields: all[..n].iter().map(|c| (c.name.clone(), c.ty)).collect(),
                    rows: rows
                        .into_iter()
                        .map(|(_, mut r)| {
                            r.truncate(n);
                            r
                        })
                        .collect(),
                    precision,
                }
            }
            Sel::Cols(names) => {
                let mut idx = Vec::new();
                for n in &names {
                    idx.push(all.iter().position(|c| &c.name == n).ok_or_else(|| {
                        TdError::new(codes::INVALID_COLUMN, format!("Invalid column name: {n}"))
                    })?);
                }
                ResultSet {
                    fields: idx
                        .iter()
                        .map(|&i| (all[i].name.clone(), all[i].ty))
                        .collect(),
                    rows: rows
                        .into_iter()
                        .map(|(_, r)| idx.iter().map(|&i| r[i].clone()).collect())
                        .collect(),
                    precision,
                }
            }
        };
        Ok(Outcome::Rows(set))
    }
}

/// Part of an INSERT, checked and waiting to be applied: database, table,
/// the table to create first (if new), rows by timestamp.
type Pending = (String, String, Option<Table>, Vec<(i64, Vec<Value>)>);

/// A child table of super table `st` with the given tags.
fn child_table(
    database: &Database,
    st: &str,
    names: Option<&[String]>,
    vals: &[Lit],
) -> Result<Table, TdError> {
    let stable = database
        .stables
        .get(st)
        .ok_or_else(|| TdError::new(codes::STB_NOT_EXIST, "STable not exist"))?;
    let order: Vec<usize> = match names {
        Some(names) => names
            .iter()
            .map(|n| {
                stable
                    .tags
                    .iter()
                    .position(|t| &t.name == n)
                    .ok_or_else(|| TdError::new(0x260E, format!("Invalid tag name: {n}")))
            })
            .collect::<Result<_, _>>()?,
        None => (0..stable.tags.len()).collect(),
    };
    if order.len() != vals.len() {
        return Err(TdError::new(0x260C, "Tags number not matched"));
    }
    let mut tags = vec![Value::Null; stable.tags.len()];
    for (lit, &i) in vals.iter().zip(&order) {
        tags[i] = convert(lit, &stable.tags[i], database.precision)?;
    }
    Ok(Table {
        columns: stable.columns.clone(),
        stable: Some(st.to_owned()),
        tags,
        rows: BTreeMap::new(),
    })
}

fn check_timestamp(ts: i64, precision: Precision, keep_days: i64) -> Result<(), TdError> {
    let now = precision.now();
    let oldest = now - keep_days * precision.per_day();
    // 1970 + 1000 years for ms/us; i64 (year 2262) for ns.
    let newest = match precision {
        Precision::Ns => i64::MAX,
        _ => 1000 * 365 * precision.per_day(),
    };
    if ts < oldest || ts > newest {
        return Err(TdError::new(
            codes::TIMESTAMP_OUT_OF_RANGE,
            "Timestamp data out of range",
        ));
    }
    Ok(())
}

fn convert(lit: &Lit, col: &Column, precision: Precision) -> Result<Value, TdError> {
    let wrong = || {
        TdError::new(
            codes::WRONG_VALUE_TYPE,
            format!("Invalid value type: {}", col.name),
        )
    };
    let range = || TdError::new(codes::VALUE_OUT_OF_RANGE, "Value out of range");
    let text = match lit {
        Lit::Null => return Ok(Value::Null),
        Lit::Now => {
            return match col.ty {
                Type::Timestamp => Ok(Value::Int(precision.now())),
                _ => Err(wrong()),
            };
        }
        Lit::Bool(b) => {
            return match col.ty {
                Type::Bool => Ok(Value::Bool(*b)),
                Type::Varchar(_) | Type::NChar(_) => Ok(Value::Str(b.to_string())),
                _ => Ok(Value::Int(i64::from(*b))),
            };
        }
        Lit::Num(n) => n.as_str(),
        Lit::Str(s) => s.as_str(),
    };
    match col.ty {
        Type::Varchar(n) => {
            if text.len() > n as usize {
                return Err(TdError::new(codes::VALUE_TOO_LONG, "Value is too long"));
            }
            Ok(Value::Str(text.to_owned()))
        }
        Type::NChar(n) => {
            if text.chars().count() > n as usize {
                return Err(TdError::new(codes::VALUE_TOO_LONG, "Value is too long"));
            }
            Ok(Value::Str(text.to_owned()))
        }
        Type::Bool => match text.to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(Value::Bool(true)),
            "false" | "0" => Ok(Value::Bool(false)),
            _ => Err(wrong()),
        },
        Type::Float | Type::Double => {
            let v: f64 = text.trim().parse().map_err(|_| wrong())?;
            if col.ty == Type::Float && v.is_finite() && v.abs() > f32::MAX as f64 {
                return Err(range());
            }
            Ok(Value::Float(v))
        }
        Type::Timestamp | Type::TinyInt | Type::SmallInt | Type::Int | Type::BigInt => {
            let v: i64 = match text.trim().parse::<i64>() {
                Ok(v) => v,
                Err(_) => {
                    let f: f64 = text.trim().parse().map_err(|_| wrong())?;
                    if f.fract() != 0.0 || f.abs() > i64::MAX as f64 {
                        return Err(range());
                    }
                    f as i64
                }
            };
            let (lo, hi) = match col.ty {
                Type::TinyInt => (i8::MIN as i64, i8::MAX as i64),
                Type::SmallInt => (i16::MIN as i64, i16::MAX as i64),
                Type::Int => (i32::MIN as i64, i32::MAX as i64),
                _ => (i64::MIN, i64::MAX),
            };
            if v < lo || v > hi {
                return Err(range());
            }
            Ok(Value::Int(v))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(store: &mut Store, s: &mut Session, sql: &str) -> Result<Outcome, TdError> {
        store.execute(s, sql)
    }

    #[test]
    fn multi_table_insert_with_using_and_escapes_is_stored_and_read_back() {
        let mut st = Store::default();
        let mut s = Session::default();
        run(&mut st, &mut s, "create database if not exists d").unwrap();
        run(
            &mut st,
            &mut s,
            "CREATE STABLE d.m (ts TIMESTAMP, v FLOAT, s NCHAR(20)) TAGS (dev VARCHAR(16))",
        )
        .unwrap();
        run(
            &mut st,
            &mut s,
            "CREATE TABLE d.t (ts TIMESTAMP, a BIGINT, b VARCHAR(10))",
        )
        .unwrap();
        let now = Precision::Ms.now();
        let sql = format!(
            r"INSERT INTO d.c1 USING d.m TAGS ('x') VALUES ({now}, 1.5, 'it\'s\\') ({}, NULL, 'b') d.t (ts, b) VALUES ({now}, 'q')",
            now + 1
        );
        assert_eq!(
            run(&mut st, &mut s, &sql).unwrap(),
            Outcome::Update { affected_rows: 3 }
        );
        let Outcome::Rows(r) = run(&mut st, &mut s, "select s, dev, tbname from d.m").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            r.rows[0],
            [
                Value::Str(r"it's\".into()),
                Value::Str("x".into()),
                Value::Str("c1".into())
            ]
        );
        let Outcome::Rows(r) = run(&mut st, &mut s, "select * from d.t").unwrap() else {
            panic!()
        };
        assert_eq!(
            r.rows[0],
            [Value::Int(now), Value::Null, Value::Str("q".into())]
        );
    }

    #[test]
    fn the_super_table_form_names_child_tables_per_row_and_creates_them_with_tags() {
        let mut st = Store::default();
        let mut s = Session::default();
        run(&mut st, &mut s, "create database d").unwrap();
        run(&mut st, &mut s, "use d").unwrap();
        run(
            &mut st,
            &mut s,
            "create stable m (ts timestamp, v int) tags (site varchar(8))",
        )
        .unwrap();
        let now = Precision::Ms.now();
        let sql = format!(
            "insert into m (tbname, ts, v, site) values ('d1', {now}, 1, 'a') ('d2', {now}, 2, 'b') ('d1', {}, 3, 'ignored')",
            now + 1
        );
        assert_eq!(
            run(&mut st, &mut s, &sql).unwrap(),
            Outcome::Update { affected_rows: 3 }
        );
        let Outcome::Rows(r) = run(&mut st, &mut s, "select tbname, v, site from m").unwrap()
        else {
            panic!()
        };
        let mut rows = r.rows;
        rows.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(
            rows,
            [
                vec![
                    Value::Str("d1".into()),
                    Value::Int(1),
                    Value::Str("a".into())
                ],
                vec![
                    Value::Str("d1".into()),
                    Value::Int(3),
                    Value::Str("a".into())
                ],
                vec![
                    Value::Str("d2".into()),
                    Value::Int(2),
                    Value::Str("b".into())
                ],
            ]
        );
        // Without tags a missing child table is not created; without
        // tbname the statement is refused.
        let no_tags = format!("insert into m (tbname, ts, v) values ('d3', {now}, 1)");
        assert_eq!(st.execute(&mut s, &no_tags).unwrap_err().code, 0x2603);
        let no_name = format!("insert into m (ts, v) values ({now}, 1)");
        assert_eq!(st.execute(&mut s, &no_name).unwrap_err().code, 0x2600);
    }

    #[test]
    fn errors_carry_tdengine_codes() {
        let mut st = Store::default();
        let mut s = Session::default();
        let code =
            |st: &mut Store, s: &mut Session, sql: &str| st.execute(s, sql).unwrap_err().code;
        assert_eq!(
            code(&mut st, &mut s, "insert into d.t values (1, 2)"),
            0x0388
        );
        run(&mut st, &mut s, "create database d").unwrap();
        assert_eq!(
            code(&mut st, &mut s, "insert into d.t values (1, 2)"),
            0x2603
        );
        assert_eq!(code(&mut st, &mut s, "insert into t values (1, 2)"), 0x2616);
        run(&mut st, &mut s, "create table d.t (ts timestamp, v int)").unwrap();
        assert_eq!(
            code(&mut st, &mut s, "insert into d.t values (0, 2)"),
            0x060B
        );
        assert_eq!(
            code(&mut st, &mut s, "insert into d.t valuse (1, 2)"),
            0x2600
        );
        assert_eq!(code(&mut st, &mut s, "delete from d.t"), 0x2600);
        let long = format!("insert into d.t values {}", "(1, 2) ".repeat(200_000));
        assert_eq!(code(&mut st, &mut s, &long), 0x0219);
    }
}
