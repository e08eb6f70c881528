//! `chaos`: a test guest that misbehaves on request, so host tests can
//! check that a trap, a runaway loop, a memory hog or a sandbox probe
//! costs one batch and never the process.
//!
//! The payload text picks the behaviour:
//!
//! | payload | behaviour |
//! | --- | --- |
//! | `panic` | panics (a trap) |
//! | `spin` | loops forever |
//! | `hog` | allocates and touches 1 MiB blocks forever |
//! | `fail` | fails the message: `chaos: asked to fail` |
//! | `file` | reads `/etc/hostname` and lists `.`; emits `file: denied: <err>` or `file: allowed` |
//! | `env` | reads `HOME` and counts variables; emits `env: denied` or `env: allowed: <seen>` |
//! | `socket` | connects TCP to `127.0.0.1:80` and binds UDP; emits `socket: denied: <err>` or `socket: allowed` |
//! | `print` | writes a line to stdout and one to stderr, then passes |
//! | `log` | logs `Chaos probe.` at info with `probe=yes`, then passes |
//! | `clock` | emits `clock: <now_ms>` |
//! | `describe…` | emits `<topic> <payload> [<key>=<value>,…] <timestamp ms> <qos>`: what the guest was handed |
//! | anything else | passes unchanged |
//!
//! It is a flat-map so it may both drop and rewrite, and takes no config.

use std::hint::black_box;

use weir_sdk::{Emitter, Kind, Message, NoConfig, Output, Result, Transform};

/// Size of each block `hog` allocates.
const HOG_BLOCK_BYTES: usize = 1 << 20;

/// Distance between the bytes `hog` writes: one per wasm page (64 KiB) is
/// enough to make the memory resident, and natively 4 KiB covers every
/// page size in use.
const TOUCH_STRIDE_BYTES: usize = 4096;

struct Chaos;

impl Transform for Chaos {
    type Config = NoConfig;
    const KIND: Kind = Kind::FlatMap;

    fn init(_: NoConfig) -> Result<Self> {
        Ok(Chaos)
    }

    fn process(&mut self, msg: &Message, out: &mut Emitter) -> Result<()> {
        match msg.payload() {
            b"panic" => panic!("chaos: asked to panic"),
            b"spin" => spin(),
            b"hog" => hog(),
            b"fail" => return Err("chaos: asked to fail".into()),
            b"file" => out.emit(text(probe_files())),
            b"env" => out.emit(text(probe_env())),
            b"socket" => out.emit(text(probe_sockets())),
            b"print" => {
                println!("chaos: to stdout");
                eprintln!("chaos: to stderr");
                out.pass();
            }
            b"log" => {
                weir_sdk::log::info("Chaos probe.", &[("probe", "yes")]);
                out.pass();
            }
            b"clock" => out.emit(text(format!("clock: {}", weir_sdk::now_ms()))),
            p if p.starts_with(b"describe") => out.emit(text(describe(msg))),
            _ => out.pass(),
        }
        Ok(())
    }
}

weir_sdk::export!(Chaos);

/// Everything the guest was handed for `msg`, for tests that check the
/// host's encoding of a batch.
fn describe(msg: &Message) -> String {
    let fields: Vec<String> = msg.fields().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{} {} [{}] {} {}",
        msg.topic(),
        String::from_utf8_lossy(msg.payload()),
        fields.join(","),
        msg.timestamp_ms(),
        msg.qos()
    )
}

fn text(payload: String) -> Output {
    Output::new().payload(payload)
}

/// Burns CPU until the host's deadline stops it; `black_box` keeps the
/// optimiser from proving the loop useless.
fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// Grows memory until the host's cap (or the allocator) stops it.
fn hog() -> ! {
    let mut kept = Vec::new();
    loop {
        let mut block = vec![0u8; HOG_BLOCK_BYTES];
        for i in (0..HOG_BLOCK_BYTES).step_by(TOUCH_STRIDE_BYTES) {
            block[i] = 1;
        }
        kept.push(black_box(block));
    }
}

fn probe_files() -> String {
    let read = std::fs::read("/etc/hostname");
    let list = std::fs::read_dir(".");
    match (read, list) {
        (Err(e), Err(_)) => format!("file: denied: {e}"),
        _ => "file: allowed".to_owned(),
    }
}

fn probe_env() -> String {
    let home = std::env::var("HOME");
    let count = std::env::vars().count();
    match home {
        Err(_) if count == 0 => "env: denied".to_owned(),
        Ok(home) => format!("env: allowed: HOME={home}, {count} variables"),
        Err(_) => format!("env: allowed: {count} variables"),
    }
}

fn probe_sockets() -> String {
    let tcp = std::net::TcpStream::connect("127.0.0.1:80");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0");
    match (tcp, udp) {
        (Err(e), Err(_)) => format!("socket: denied: {e}"),
        _ => "socket: allowed".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use weir_sdk::testing::{Harness, TestMessage};

    use super::*;

    fn run(payload: &str) -> weir_sdk::testing::Run {
        Harness::<Chaos>::new(json!({}))
            .unwrap()
            .run_one(TestMessage::text("t", payload))
    }

    #[test]
    fn harmless_requests_pass_or_answer_and_fail_fails() {
        assert!(run("anything").outputs[0].is_passthrough());
        assert!(run("print").outputs[0].is_passthrough());
        assert_eq!(run("fail").failure(0), Some("chaos: asked to fail"));
        let clock = run("clock");
        let millis: i64 = clock.outputs[0].payload_str()["clock: ".len()..]
            .parse()
            .unwrap();
        assert!(millis > 1_600_000_000_000);
    }

    #[test]
    fn log_writes_one_info_record_with_the_probe_field() {
        let run = run("log");
        assert_eq!(run.logs.len(), 1);
        assert_eq!(run.logs[0].level, weir_sdk::log::Level::Info);
        assert_eq!(run.logs[0].fields, [("probe".to_owned(), "yes".to_owned())]);
    }

    #[test]
    fn sandbox_probes_answer_in_the_documented_shape() {
        // Natively the sandbox is the test process, so only the shape is
        // checked; the host tests check the answers under wasm.
        for (payload, prefix) in [("file", "file: "), ("env", "env: "), ("socket", "socket: ")] {
            let answer = run(payload).outputs[0].payload_str().to_owned();
            assert!(answer.starts_with(prefix), "{answer}");
        }
    }

    #[test]
    #[should_panic(expected = "chaos: asked to panic")]
    fn panic_panics() {
        run("panic");
    }
}
