//! The `/ws` endpoint: one task per connection, answering as taosAdapter
//! does (reference §2): every text reply carries `code`, `message`,
//! `action`, `req_id` (echoed) and `timing`; `free_result` gets no reply;
//! nothing is sent before the client's `version`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value as Json, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;

use crate::sql::{self, Outcome, ResultSet, Session, TdError, codes};
use crate::{Fault, Logged, Options, State, block, schemaless};

pub(crate) async fn serve(listener: TcpListener, state: Arc<Mutex<State>>, options: Arc<Options>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(connection(stream, state.clone(), options.clone()));
    }
}

fn refuse(status: StatusCode, body: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(body.to_owned()));
    *response.status_mut() = status;
    response
}

async fn connection(stream: TcpStream, state: Arc<Mutex<State>>, options: Arc<Options>) {
    let _ = stream.set_nodelay(true);
    let token = options.token.clone();
    // The handshake callback's signature is tungstenite's.
    #[allow(clippy::result_large_err)]
    let check = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != "/ws" {
            return Err(refuse(StatusCode::NOT_FOUND, "404 page not found"));
        }
        if let Some(expected) = &token {
            let given = req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("token="));
            if given != Some(expected.as_str()) {
                return Err(refuse(StatusCode::UNAUTHORIZED, "invalid token"));
            }
        }
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, check).await else {
        return;
    };
    state.lock().unwrap().connections += 1;
    let mut conn = Conn {
        state,
        options,
        connected: false,
        session: Session::default(),
        results: HashMap::new(),
        next_id: 1,
    };
    while let Some(Ok(frame)) = ws.next().await {
        let started = Instant::now();
        let replies = match frame {
            Message::Text(text) => conn.text(text.as_str(), started).await,
            Message::Binary(bytes) => conn.binary(&bytes, started).await,
            Message::Close(_) => break,
            // tungstenite answers pings itself.
            _ => continue,
        };
        let replies = match replies {
            Ok(replies) => replies,
            // A dropped connection: no Close frame, no reply.
            Err(Dropped) => return,
        };
        for reply in replies {
            if ws.send(reply).await.is_err() {
                return;
            }
        }
    }
}

/// The connection is to be dropped without a reply.
struct Dropped;

/// What to do with a statement, after fault injection.
enum Plan {
    /// Run it and answer.
    Run,
    /// Answer with this error instead.
    Fail(TdError),
    /// Run it, then drop the connection without answering.
    RunThenDrop,
    /// Drop the connection without running it.
    Drop,
}

struct Conn {
    state: Arc<Mutex<State>>,
    options: Arc<Options>,
    connected: bool,
    session: Session,
    /// Open result sets: (set, fetched already).
    results: HashMap<u64, (ResultSet, bool)>,
    next_id: u64,
}

fn reply(action: &str, req_id: u64, started: Instant, code: u16, message: &str) -> Json {
    json!({
        "code": code,
        "message": message,
        "action": action,
        "req_id": req_id,
        "timing": started.elapsed().as_nanos() as u64,
    })
}

/// The code a statement's result is logged with (0 = success).
fn code_of<T>(result: &Result<T, TdError>) -> u16 {
    result.as_ref().err().map_or(0, |e| e.code)
}

fn text(value: Json) -> Message {
    Message::text(value.to_string())
}

impl Conn {
    async fn text(&mut self, frame: &str, started: Instant) -> Result<Vec<Message>, Dropped> {
        let Ok(request) = serde_json::from_str::<Json>(frame) else {
            return Ok(vec![text(reply(
                "",
                0,
                started,
                codes::ADAPTER,
                "unmarshal request error",
            ))]);
        };
        let action = request["action"].as_str().unwrap_or("").to_owned();
        let args = &request["args"];
        let req_id = args["req_id"].as_u64().unwrap_or(0);
        let version = self.options.version.clone();
        match action.as_str() {
            "version" => {
                let mut r = reply("version", req_id, started, 0, "");
                r["version"] = json!(version);
                return Ok(vec![text(r)]);
            }
            "conn" => return Ok(vec![text(self.conn(args, req_id, started))]),
            _ if !self.connected => {
                return Ok(vec![text(reply(
                    &action,
                    req_id,
                    started,
                    codes::ADAPTER,
                    "server not connected",
                ))]);
            }
            _ => {}
        }
        match action.as_str() {
            "query" => {
                let sql = args["sql"].as_str().unwrap_or("").to_owned();
                let r = self.query(&sql, "query", req_id, started).await?;
                Ok(vec![text(r)])
            }
            "fetch" => {
                let id = args["id"].as_u64().unwrap_or(0);
                let mut r = reply("fetch", req_id, started, 0, "");
                match self.results.get_mut(&id) {
                    None => {
                        r["code"] = json!(codes::ADAPTER);
                        r["message"] = json!("result is nil");
                    }
                    Some((set, fetched)) => {
                        r["id"] = json!(id);
                        if *fetched {
                            r["completed"] = json!(true);
                            r["lengths"] = Json::Null;
                            r["rows"] = json!(0);
                        } else {
                            *fetched = true;
                            r["completed"] = json!(false);
                            r["lengths"] = json!(
                                set.fields
                                    .iter()
                                    .map(|(_, t)| t.bytes())
                                    .collect::<Vec<_>>()
                            );
                            r["rows"] = json!(set.rows.len());
                        }
                    }
                }
                Ok(vec![text(r)])
            }
            "fetch_block" => {
                let id = args["id"].as_u64().unwrap_or(0);
                match self.results.get(&id) {
                    None => Ok(vec![text(reply(
                        "fetch_block",
                        req_id,
                        started,
                        codes::ADAPTER,
                        "result is nil",
                    ))]),
                    Some((set, _)) => {
                        let mut out = Vec::new();
                        out.extend_from_slice(&(started.elapsed().as_nanos() as u64).to_le_bytes());
                        out.extend_from_slice(&id.to_le_bytes());
                        out.extend_from_slice(&block::encode(set));
                        Ok(vec![Message::binary(out)])
                    }
                }
            }
            "free_result" => {
                let id = args["id"].as_u64().unwrap_or(0);
                self.results.remove(&id);
                Ok(Vec::new())
            }
            "insert" => {
                let data = args["data"].as_str().unwrap_or("").to_owned();
                let protocol = args["protocol"].as_u64().unwrap_or(0);
                let precision = args["precision"].as_str().unwrap_or("").to_owned();
                let plan = self.plan(&data, true).await;
                let result = match plan {
                    Plan::Drop => return Err(Dropped),
                    Plan::Fail(ref e) => Err(e.clone()),
                    Plan::Run | Plan::RunThenDrop => {
                        let mut state = self.state.lock().unwrap();
                        let db = self.session.db.clone();
                        schemaless::insert(
                            &mut state.store,
                            db.as_deref(),
                            protocol,
                            &precision,
                            &data,
                        )
                    }
                };
                self.log(&data, code_of(&result));
                if matches!(plan, Plan::RunThenDrop) {
                    return Err(Dropped);
                }
                let mut r = reply("insert", req_id, started, 0, "");
                match result {
                    Ok(n) => {
                        r["affected_rows"] = json!(n);
                        r["total_rows"] = json!(n);
                    }
                    Err(e) => {
                        r["code"] = json!(e.code);
                        r["message"] = json!(e.message);
                    }
                }
                Ok(vec![text(r)])
            }
            other => Ok(vec![text(reply(
                other,
                req_id,
                started,
                codes::ADAPTER,
                &format!("unknown action {other}"),
            ))]),
        }
    }

    fn conn(&mut self, args: &Json, req_id: u64, started: Instant) -> Json {
        let mut r = reply("conn", req_id, started, 0, "");
        if self.connected {
            r["code"] = json!(codes::ADAPTER);
            r["message"] = json!("duplicate connections");
            return r;
        }
        let user = args["user"].as_str().unwrap_or("");
        let password = args["password"].as_str().unwrap_or("");
        if user != self.options.user || password != self.options.password {
            r["code"] = json!(codes::AUTH_FAILURE);
            r["message"] = json!("Authentication failure");
            return r;
        }
        let db = args["db"].as_str().unwrap_or("").to_ascii_lowercase();
        if !db.is_empty() {
            if !self.state.lock().unwrap().store.databases.contains_key(&db) {
                r["code"] = json!(codes::DB_NOT_EXIST);
                r["message"] = json!("Database not exist");
                return r;
            }
            self.session.db = Some(db);
        }
        self.connected = true;
        r["version"] = json!(self.options.version);
        r
    }

    /// Takes the queued fault for `sql`, waits out a delay, and says what
    /// to do with the statement.
    async fn plan(&mut self, sql: &str, schemaless: bool) -> Plan {
        let fault = self.state.lock().unwrap().take_fault(sql, schemaless);
        match fault {
            None => Plan::Run,
            Some(Fault::Error(e)) => Plan::Fail(e),
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                Plan::Run
            }
            Some(Fault::Drop { applied: true }) => Plan::RunThenDrop,
            Some(Fault::Drop { applied: false }) => Plan::Drop,
        }
    }

    fn log(&self, sql: &str, code: u16) {
        self.state.lock().unwrap().log.push(Logged {
            sql: sql.to_owned(),
            bytes: sql.len(),
            code,
        });
    }

    /// Runs a statement and builds the `query` / `binary_query` reply.
    async fn query(
        &mut self,
        sql: &str,
        action: &str,
        req_id: u64,
        started: Instant,
    ) -> Result<Json, Dropped> {
        let plan = self.plan(sql, false).await;
        let result = match plan {
            Plan::Drop => return Err(Dropped),
            Plan::Fail(ref e) => Err(e.clone()),
            Plan::Run | Plan::RunThenDrop => {
                let mut state = self.state.lock().unwrap();
                state.store.execute(&mut self.session, sql)
            }
        };
        self.log(sql, code_of(&result));
        if matches!(plan, Plan::RunThenDrop) {
            return Err(Dropped);
        }
        let mut r = reply(action, req_id, started, 0, "");
        match result {
            Err(e) => {
                r["code"] = json!(e.code);
                r["message"] = json!(e.message);
            }
            Ok(Outcome::Update { affected_rows }) => {
                r["id"] = json!(0);
                r["is_update"] = json!(true);
                r["affected_rows"] = json!(affected_rows);
                r["fields_count"] = json!(0);
                r["fields_names"] = Json::Null;
                r["fields_types"] = Json::Null;
                r["fields_lengths"] = Json::Null;
                r["precision"] = json!(0);
            }
            Ok(Outcome::Rows(mut set)) => {
                if set
                    .fields
                    .first()
                    .is_some_and(|(n, _)| n == "server_version()")
                {
                    set.rows = vec![vec![sql::Value::Str(self.options.version.clone())]];
                }
                let id = self.next_id;
                self.next_id += 1;
                r["id"] = json!(id);
                r["is_update"] = json!(false);
                r["affected_rows"] = json!(0);
                r["fields_count"] = json!(set.fields.len());
                r["fields_names"] = json!(set.fields.iter().map(|(n, _)| n).collect::<Vec<_>>());
                r["fields_types"] =
                    json!(set.fields.iter().map(|(_, t)| t.code()).collect::<Vec<_>>());
                r["fields_lengths"] = json!(
                    set.fields
                        .iter()
                        .map(|(_, t)| t.bytes())
                        .collect::<Vec<_>>()
                );
                r["precision"] = json!(set.precision.code());
                self.results.insert(id, (set, false));
            }
        }
        Ok(r)
    }

    async fn binary(&mut self, frame: &[u8], started: Instant) -> Result<Vec<Message>, Dropped> {
        let u64_at = |at: usize| {
            frame
                .get(at..at + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        };
        let (Some(req_id), Some(resource), Some(action)) = (u64_at(0), u64_at(8), u64_at(16))
        else {
            return Ok(Vec::new());
        };
        if !self.connected {
            return Ok(vec![text(reply(
                "binary_query",
                req_id,
                started,
                codes::ADAPTER,
                "server not connected",
            ))]);
        }
        match action {
            6 => {
                let len = frame
                    .get(26..30)
                    .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize)
                    .unwrap_or(0);
                let sql = frame
                    .get(30..30 + len)
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .unwrap_or("")
                    .to_owned();
                let r = self.query(&sql, "binary_query", req_id, started).await?;
                Ok(vec![text(r)])
            }
            7 => {
                let mut out = Vec::new();
                out.extend_from_slice(&u64::MAX.to_le_bytes());
                out.extend_from_slice(&7u64.to_le_bytes());
                out.extend_from_slice(&1u16.to_le_bytes());
                out.extend_from_slice(&(started.elapsed().as_nanos() as u64).to_le_bytes());
                out.extend_from_slice(&req_id.to_le_bytes());
                match self.results.get_mut(&resource) {
                    None => {
                        let message = b"result is nil";
                        out.extend_from_slice(&u32::from(codes::ADAPTER).to_le_bytes());
                        out.extend_from_slice(&(message.len() as u32).to_le_bytes());
                        out.extend_from_slice(message);
                        out.extend_from_slice(&resource.to_le_bytes());
                        out.push(1);
                    }
                    Some((set, fetched)) => {
                        out.extend_from_slice(&0u32.to_le_bytes());
                        out.extend_from_slice(&0u32.to_le_bytes());
                        out.extend_from_slice(&resource.to_le_bytes());
                        if *fetched {
                            out.push(1);
                            self.results.remove(&resource);
                        } else {
                            *fetched = true;
                            out.push(0);
                            let raw = block::encode(set);
                            out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
                            out.extend_from_slice(&raw);
                        }
                    }
                }
                Ok(vec![Message::binary(out)])
            }
            other => Ok(vec![text(reply(
                "",
                req_id,
                started,
                codes::ADAPTER,
                &format!("unknown binary action {other}"),
            ))]),
        }
    }
}
