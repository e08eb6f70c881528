//! The whole pipeline end to end: a real Mosquitto, the real `weir` binary,
//! the `threshold` plugin, and MQTT clients on both sides.
//!
//! weir runs one rule: `devices/+/t` (QoS 1) → `threshold` (`temp > 30`,
//! half the readings pass) → an MQTT sink (QoS 1, `out/<device>`) and a null
//! sink. Payloads look like `{"temp": 31.5, "hum": 40, "seq": n, "ts": …}`
//! (`ts`: nanoseconds since the epoch at publish), the same size throughout.
//!
//! Measured, in one run, for each broker setting (Mosquitto's default
//! `max_inflight_messages` of 20, and a raised one), in rounds (five unless
//! `WEIR_BENCH_ROUNDS` says otherwise) of N / rounds messages where the
//! ceiling and weir take turns, so that a busy or quiet spell of the
//! machine falls on both:
//!
//! - **ceiling**: messages from one publisher (QoS 1) to one subscriber
//!   (QoS 1) through the same broker, no weir: messages / (first publish →
//!   last message received); the median of the rounds;
//! - **weir in-rate**: the same messages published to weir: messages /
//!   (first publish → last passing message received by a subscriber of
//!   weir's output), the median of the rounds. weir's messages take two
//!   broker hops (in and out), the ceiling's one;
//! - **ratio**: weir's rate over the ceiling's in each round (printed), and
//!   their median (in the table);
//! - **CPU µs/msg**: utime + stime of the weir process (`/proc/<pid>/stat`,
//!   all threads) over weir's rounds, divided by their messages; the
//!   broker's and the bench's own (publisher + subscriber) alongside, since
//!   all share the machine;
//! - **bench clients' CPU µs/msg**: the bench's subscriber thread
//!   (`/proc/self/task/<tid>/stat`) and its publisher's two threads
//!   (`CLOCK_THREAD_CPUTIME_ID`), per message. In the ceiling run the
//!   subscriber is a bare rumqttc QoS 1 client that reads each message and
//!   acknowledges it: what any MQTT client pays per message on this
//!   machine, and the floor for weir's network side. weir's CPU per message
//!   is printed as a multiple of it;
//! - **context switches per message**: weir's voluntary (a thread went to
//!   sleep waiting) and involuntary (preempted) switches over that run, all
//!   threads (`/proc/<pid>/task/*/status`), per message: handing messages
//!   between threads one by one shows here;
//! - **RSS**: weir's `VmRSS` idle (subscribed, 1 s after start) and its
//!   `VmHWM` (peak) after its rounds (`/proc/<pid>/status`). The
//!   first weir starts with an empty compile cache, the others with the
//!   cache the first filled (a restart);
//! - with the raised window, weir runs a second time with two I/O threads
//!   (`--io-threads 2`) instead of its default one: the row `1000, 2 io`;
//! - **latency** (default broker setting only): messages published at a
//!   fixed 2000 msg/s for a few seconds; p50/p99/max of (receipt at the
//!   subscriber of weir's output − `ts`), and the same for the broker alone.
//!
//! `WEIR_BENCH_N` sets N (default 100 000); `WEIR_BENCH_LINGER` sets the
//! rule's `linger` and `WEIR_BENCH_IO_LINGER` weir's `--io-linger` (unset:
//! the defaults). Runs the `weir` binary cargo builds for benches
//! (`CARGO_BIN_EXE_weir`, the release profile).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{Client, Event, MqttOptions, Outgoing, Packet, QoS};
use weir_test_support::Mosquitto;
use weir_test_support::mosquitto::MosquittoOptions;

const DEFAULT_N: usize = 100_000;
/// The raised `max_inflight_messages`.
const RAISED_INFLIGHT: u16 = 1000;
/// The ceiling and weir each run N / rounds messages, this many times in
/// turn (`WEIR_BENCH_ROUNDS` sets another count).
const DEFAULT_ROUNDS: usize = 5;
const LATENCY_RATE: u64 = 2000;
const LATENCY_SECONDS: u64 = 5;
const WAIT: Duration = Duration::from_secs(120);

fn main() {
    // `cargo bench` passes `--bench`; nothing else is understood.
    let n = std::env::var("WEIR_BENCH_N")
        .ok()
        .map(|v| v.parse::<usize>().expect("WEIR_BENCH_N is a number"))
        .unwrap_or(DEFAULT_N);
    let rounds = std::env::var("WEIR_BENCH_ROUNDS")
        .ok()
        .map(|v| v.parse::<usize>().expect("WEIR_BENCH_ROUNDS is a number"))
        .unwrap_or(DEFAULT_ROUNDS)
        .max(1);
    let weir_bin = Path::new(env!("CARGO_BIN_EXE_weir"));
    assert!(
        weir_bin.is_file(),
        "{} is missing: run `cargo build --release -p weir` first",
        weir_bin.display()
    );
    eprintln!(
        "pipeline bench: N = {n}, payload {} bytes, QoS 1, weir = {}",
        payload(0, 0).len(),
        weir_bin.display()
    );

    let mut rows = Vec::new();
    let mut latency = None;
    // One compile cache for the whole run: the first weir starts with it
    // empty (it compiles the plugin), the second finds it warm, as a
    // restarted weir does.
    let cache = tempfile::tempdir().expect("a temporary directory");
    for inflight in [None, Some(RAISED_INFLIGHT)] {
        let mut options = MosquittoOptions::default();
        if let Some(k) = inflight {
            options = options.max_inflight_messages(k);
        }
        let broker = Mosquitto::start_with(options);
        let label = match inflight {
            None => "20 (default)".to_owned(),
            Some(k) => k.to_string(),
        };
        eprintln!("broker max_inflight_messages = {label}");
        // With the raised window, also with two I/O threads instead of
        // the default one, so the choice of default is measured in the
        // same run.
        let variants: &[Option<&str>] = match inflight {
            None => &[None],
            Some(_) => &[None, Some("2")],
        };
        for &io_threads in variants {
            let weir = Weir::start(weir_bin, &broker, cache.path(), io_threads);
            let idle_rss = weir.status_kb("VmRSS");
            // The ceiling and weir take turns, so that a spell when the
            // machine is busy or quiet falls on both.
            let (mut ceilings, mut runs) = (Vec::new(), Vec::new());
            for round in 1..=rounds {
                let c = ceiling(&broker, n / rounds);
                let w = through_weir(&broker, &weir, n / rounds);
                eprintln!(
                    "  round {round}: ceiling {:.0} msg/s, weir {:.0} msg/s",
                    c.rate, w.rate
                );
                ceilings.push(c);
                runs.push(w);
            }
            let peak_rss = weir.status_kb("VmHWM");
            if inflight.is_none() {
                eprintln!("latency at {LATENCY_RATE} msg/s for {LATENCY_SECONDS} s…");
                let direct = paced(&broker, "lat/d1/t", "lat/+/t", |_| true);
                let through = paced(&broker, "devices/lat/t", "out/+", passes);
                latency = Some((direct, through));
            }
            drop(weir);
            rows.push(Row {
                label: match io_threads {
                    None => label.clone(),
                    Some(t) => format!("{label}, {t} io"),
                },
                ratios: (ceilings.iter().zip(&runs))
                    .map(|(c, w)| w.rate / c.rate)
                    .collect(),
                ceiling: Throughput::combine(&ceilings),
                weir: Throughput::combine(&runs),
                idle_rss,
                peak_rss,
            });
        }
    }

    print_table(n, &rows, latency.as_ref());
    println!(
        "RSS idle: the first weir compiled the plugin at start (empty cache), the others loaded it from the cache."
    );
}

struct Row {
    label: String,
    /// weir's rate over the ceiling's, round by round.
    ratios: Vec<f64>,
    ceiling: Throughput,
    weir: Throughput,
    idle_rss: u64,
    peak_rss: u64,
}

struct Throughput {
    rate: f64,
    /// CPU µs per message: weir (None for the ceiling), broker, bench.
    weir_cpu: Option<f64>,
    broker_cpu: f64,
    bench_cpu: f64,
    /// weir's CPU by thread name, µs per message.
    threads: Vec<(String, f64)>,
    /// weir's context switches per message, voluntary (a thread waited)
    /// and involuntary (it was preempted), all threads.
    switches: [f64; 2],
    /// CPU µs per message of the bench's two MQTT clients: the subscriber's
    /// thread and the publisher's (its event loop and its producer).
    clients: Clients,
}

#[derive(Clone, Copy)]
struct Clients {
    subscriber: f64,
    publisher: f64,
}

impl Throughput {
    /// Rounds of the same size as one: the median rate, and the mean of
    /// each per-message figure (over equal rounds, total / total).
    fn combine(rounds: &[Throughput]) -> Throughput {
        let mean = |f: &dyn Fn(&Throughput) -> f64| {
            rounds.iter().map(f).sum::<f64>() / rounds.len() as f64
        };
        let mut threads: Vec<(String, f64)> = Vec::new();
        for (name, us) in rounds.iter().flat_map(|r| &r.threads) {
            let share = us / rounds.len() as f64;
            match threads.iter_mut().find(|(n, _)| n == name) {
                Some((_, total)) => *total += share,
                None => threads.push((name.clone(), share)),
            }
        }
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        Throughput {
            rate: median(rounds.iter().map(|r| r.rate).collect()),
            weir_cpu: (rounds
                .iter()
                .map(|r| r.weir_cpu)
                .collect::<Option<Vec<f64>>>())
            .map(|cpu| cpu.iter().sum::<f64>() / cpu.len() as f64),
            broker_cpu: mean(&|r| r.broker_cpu),
            bench_cpu: mean(&|r| r.bench_cpu),
            threads,
            switches: [0, 1].map(|i| mean(&|r| r.switches[i])),
            clients: Clients {
                subscriber: mean(&|r| r.clients.subscriber),
                publisher: mean(&|r| r.clients.publisher),
            },
        }
    }
}

/// The median (of an odd count, the middle value; of an even one, the mean
/// of the two middle values).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn print_table(n: usize, rows: &[Row], latency: Option<&(Latency, Latency)>) {
    println!();
    println!("weir end-to-end, N = {n}, QoS 1, threshold → mqtt + null (2 cores shared by all)");
    println!(
        "{:<14} {:>10} {:>10} {:>6} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "max_inflight",
        "ceiling/s",
        "weir in/s",
        "ratio",
        "weir µs",
        "brk µs",
        "brk µs",
        "bench µs",
        "RSS idle",
        "RSS peak"
    );
    println!(
        "{:<14} {:>10} {:>10} {:>6} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "", "", "", "", "/msg", "(ceil)", "(weir)", "(weir)", "MB", "MB"
    );
    for row in rows {
        println!(
            "{:<14} {:>10.0} {:>10.0} {:>6.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8.1} {:>8.1}",
            row.label,
            row.ceiling.rate,
            row.weir.rate,
            median(row.ratios.clone()),
            row.weir.weir_cpu.unwrap_or(f64::NAN),
            row.ceiling.broker_cpu,
            row.weir.broker_cpu,
            row.weir.bench_cpu,
            row.idle_rss as f64 / 1024.0,
            row.peak_rss as f64 / 1024.0,
        );
    }
    for row in rows {
        let threads: Vec<String> = row
            .weir
            .threads
            .iter()
            .map(|(name, us)| format!("{name} {us:.2}"))
            .collect();
        println!(
            "weir CPU µs/msg by thread ({}): {}",
            row.label,
            threads.join(", ")
        );
        let ratios: Vec<String> = row.ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "ratio by round ({}): {} (the table: their median)",
            row.label,
            ratios.join(", ")
        );
        let [voluntary, involuntary] = row.weir.switches;
        println!(
            "weir context switches per message ({}): {voluntary:.2} waits, {involuntary:.2} preemptions",
            row.label
        );
        let (ceiling, through) = (row.ceiling.clients, row.weir.clients);
        println!(
            "bench clients CPU µs/msg ({}): ceiling run: subscriber {:.2}, publisher {:.2}; weir run: subscriber {:.2}, publisher {:.2}; weir = {:.1}× the ceiling's subscriber",
            row.label,
            ceiling.subscriber,
            ceiling.publisher,
            through.subscriber,
            through.publisher,
            row.weir.weir_cpu.unwrap_or(f64::NAN) / ceiling.subscriber,
        );
    }
    if let Some((direct, through)) = latency {
        println!(
            "latency at {LATENCY_RATE} msg/s (max_inflight 20): {:<16} p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms  ({} samples)",
            "broker only", direct.p50, direct.p99, direct.max, direct.samples
        );
        println!(
            "latency at {LATENCY_RATE} msg/s (max_inflight 20): {:<16} p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms  ({} samples)",
            "through weir", through.p50, through.p99, through.max, through.samples
        );
    }
}

/// Reading `i`: 29.5 °C or 31.5 °C alternately, so half pass `temp > 30`.
fn passes(i: usize) -> bool {
    i % 2 == 1
}

fn payload(i: usize, ts: u128) -> Vec<u8> {
    let temp = if passes(i) { 31.5 } else { 29.5 };
    // `seq` and `ts` padded with spaces (valid JSON, unlike leading zeros):
    // every payload has the same size.
    format!(r#"{{"temp": {temp}, "hum": 40, "seq": {i:>10}, "ts": {ts:>20}}}"#).into_bytes()
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos()
}

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn mqtt_options(broker: &Mosquitto, prefix: &str) -> MqttOptions {
    let mut options = MqttOptions::new(unique(prefix), "127.0.0.1", broker.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_inflight(u16::MAX);
    options
}

/// A QoS 1 subscriber on its own thread; reports (receipt time, payload)
/// of each publish, and is ready once the broker granted the filter.
struct Sub {
    client: Client,
    received: mpsc::Receiver<(Instant, u128, bytes::Bytes)>,
    thread: Option<JoinHandle<()>>,
    /// The thread's id, for its CPU time.
    tid: libc::pid_t,
}

impl Sub {
    fn connect(broker: &Mosquitto, filter: &str) -> Sub {
        let (client, mut connection) = Client::new(mqtt_options(broker, "bench-sub"), 1024);
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .expect("queue the subscription");
        let (tx, received) = mpsc::channel();
        let (ready_tx, ready) = mpsc::channel();
        let (tid_tx, tid) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            let _ = tid_tx.send(unsafe { libc::gettid() });
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((Instant::now(), now_ns(), p.payload));
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
        ready
            .recv_timeout(Duration::from_secs(10))
            .expect("the subscriber is subscribed");
        Sub {
            client,
            received,
            thread: Some(thread),
            tid: tid.recv().expect("the subscriber's thread id"),
        }
    }

    /// CPU time (µs) of the subscriber's thread so far.
    fn cpu_us(&self) -> f64 {
        let path = format!("/proc/self/task/{}/stat", self.tid);
        stat_cpu_us(&std::fs::read_to_string(path).expect("read the subscriber's stat"))
    }

    /// Waits for `n` messages; returns each one's receipt instant, receipt
    /// wall-clock time (ns) and payload.
    fn collect(&self, n: usize) -> Vec<(Instant, u128, bytes::Bytes)> {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.received.recv_timeout(left) {
                Ok(m) => got.push(m),
                Err(_) => panic!("received {} of {n} messages within {WAIT:?}", got.len()),
            }
        }
        got
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Publishes `n` messages on `topic(i)` at QoS 1 from its own thread,
/// `interval` apart if given (else as fast as possible); returns when all
/// are acknowledged. The thread's result is the CPU time (µs) that the
/// publisher's two threads used.
fn publish(
    broker: &Mosquitto,
    topic: impl Fn(usize) -> String + Send + 'static,
    n: usize,
    interval: Option<Duration>,
) -> JoinHandle<f64> {
    let (client, mut connection) = Client::new(mqtt_options(broker, "bench-pub"), 10_000);
    std::thread::spawn(move || {
        let producer = std::thread::spawn(move || {
            let start = Instant::now();
            for i in 0..n {
                if let Some(interval) = interval {
                    let at = start + interval * u32::try_from(i).expect("n fits u32");
                    let now = Instant::now();
                    if at > now {
                        std::thread::sleep(at - now);
                    }
                }
                client
                    .publish(topic(i), QoS::AtLeastOnce, false, payload(i, now_ns()))
                    .expect("queue a publish");
            }
            (client, thread_cpu_us())
        });
        let mut acked = 0;
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acked += 1;
                    if acked == n {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("publisher: {e} ({acked}/{n} acknowledged)"),
            }
        }
        let (client, producer_cpu) = producer.join().expect("the producer thread");
        let _ = client.disconnect();
        for event in connection.iter() {
            if matches!(event, Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)) {
                break;
            }
        }
        producer_cpu + thread_cpu_us()
    })
}

/// CPU time (µs) of the calling thread so far.
fn thread_cpu_us() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write to.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    now.tv_sec as f64 * 1e6 + now.tv_nsec as f64 / 1e3
}

/// CPU time (µs) of a process, all threads: utime + stime from
/// `/proc/<pid>/stat`.
fn cpu_us(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    stat_cpu_us(&stat)
}

fn stat_cpu_us(stat: &str) -> f64 {
    // Fields after the `(comm)`: state is field 3; utime, stime are 14, 15.
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 * 1e6 / hz
}

/// CPU time (µs) per thread name of a process (threads with the same name
/// summed).
fn cpu_us_by_thread(pid: u32) -> Vec<(String, f64)> {
    let mut by_name: Vec<(String, f64)> = Vec::new();
    for stat in task_files(pid, "stat") {
        let name = stat[stat.find('(').unwrap() + 1..stat.rfind(')').unwrap()].to_owned();
        let us = stat_cpu_us(&stat);
        match by_name.iter_mut().find(|(n, _)| *n == name) {
            Some((_, total)) => *total += us,
            None => by_name.push((name, us)),
        }
    }
    by_name
}

/// Context switches of every thread of a process so far: voluntary and
/// involuntary (`/proc/<pid>/task/*/status`).
fn context_switches(pid: u32) -> [u64; 2] {
    let mut total = [0; 2];
    for status in task_files(pid, "status") {
        for line in status.lines() {
            let count = |prefix: &str| line.strip_prefix(prefix)?.trim().parse::<u64>().ok();
            if let Some(n) = count("voluntary_ctxt_switches:") {
                total[0] += n;
            } else if let Some(n) = count("nonvoluntary_ctxt_switches:") {
                total[1] += n;
            }
        }
    }
    total
}

/// File `file` of every thread of a process (`/proc/<pid>/task/*/<file>`);
/// a thread that ended meanwhile is left out.
fn task_files(pid: u32, file: &str) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    (tasks.flatten())
        .filter_map(|task| std::fs::read_to_string(task.path().join(file)).ok())
        .collect()
}

fn thread_delta(before: &[(String, f64)], after: &[(String, f64)], n: usize) -> Vec<(String, f64)> {
    let mut delta: Vec<(String, f64)> = after
        .iter()
        .map(|(name, us)| {
            let was = before
                .iter()
                .find(|(b, _)| b == name)
                .map_or(0.0, |(_, us)| *us);
            (name.clone(), (us - was) / n as f64)
        })
        .filter(|(_, us)| *us > 0.0)
        .collect();
    delta.sort_by(|a, b| b.1.total_cmp(&a.1));
    delta
}

fn broker_pid(broker: &Mosquitto) -> u32 {
    broker.pid().expect("the broker runs")
}

/// Publisher → broker → subscriber, no weir.
fn ceiling(broker: &Mosquitto, n: usize) -> Throughput {
    let sub = Sub::connect(broker, "ceil/+/t");
    let (broker0, bench0) = (cpu_us(broker_pid(broker)), cpu_us(std::process::id()));
    let sub0 = sub.cpu_us();
    let start = Instant::now();
    let publisher = publish(broker, |i| format!("ceil/d{}/t", i % 10), n, None);
    let got = sub.collect(n);
    let elapsed = got.last().unwrap().0 - start;
    let publisher_cpu = publisher.join().expect("the publisher");
    let sub1 = sub.cpu_us();
    let (broker1, bench1) = (cpu_us(broker_pid(broker)), cpu_us(std::process::id()));
    Throughput {
        rate: n as f64 / elapsed.as_secs_f64(),
        weir_cpu: None,
        broker_cpu: (broker1 - broker0) / n as f64,
        bench_cpu: (bench1 - bench0) / n as f64,
        threads: Vec::new(),
        switches: [f64::NAN; 2],
        clients: Clients {
            subscriber: (sub1 - sub0) / n as f64,
            publisher: publisher_cpu / n as f64,
        },
    }
}

/// Publisher → broker → weir → broker → subscriber.
fn through_weir(broker: &Mosquitto, weir: &Weir, n: usize) -> Throughput {
    let sub = Sub::connect(broker, "out/+");
    let expected = (0..n).filter(|&i| passes(i)).count();
    let pid = weir.pid();
    let (weir0, broker0, bench0) = (
        cpu_us(pid),
        cpu_us(broker_pid(broker)),
        cpu_us(std::process::id()),
    );
    let threads0 = cpu_us_by_thread(pid);
    let switches0 = context_switches(pid);
    let sub0 = sub.cpu_us();
    let start = Instant::now();
    let publisher = publish(broker, |i| format!("devices/d{}/t", i % 10), n, None);
    let got = sub.collect(expected);
    let elapsed = got.last().unwrap().0 - start;
    let publisher_cpu = publisher.join().expect("the publisher");
    let sub1 = sub.cpu_us();
    let (weir1, broker1, bench1) = (
        cpu_us(pid),
        cpu_us(broker_pid(broker)),
        cpu_us(std::process::id()),
    );
    let threads1 = cpu_us_by_thread(pid);
    let switches1 = context_switches(pid);
    Throughput {
        rate: n as f64 / elapsed.as_secs_f64(),
        weir_cpu: Some((weir1 - weir0) / n as f64),
        broker_cpu: (broker1 - broker0) / n as f64,
        bench_cpu: (bench1 - bench0) / n as f64,
        threads: thread_delta(&threads0, &threads1, n),
        switches: [0, 1].map(|i| (switches1[i] - switches0[i]) as f64 / n as f64),
        clients: Clients {
            subscriber: (sub1 - sub0) / n as f64,
            publisher: publisher_cpu / n as f64,
        },
    }
}

struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
    samples: usize,
}

/// Publishes at a fixed rate on `topic`, and measures receipt − publish
/// time at a subscriber of `filter` (which receives the messages that
/// `delivered(i)` says).
fn paced(
    broker: &Mosquitto,
    topic: &'static str,
    filter: &str,
    delivered: fn(usize) -> bool,
) -> Latency {
    let n = usize::try_from(LATENCY_RATE * LATENCY_SECONDS).unwrap();
    let sub = Sub::connect(broker, filter);
    let expected = (0..n).filter(|&i| delivered(i)).count();
    let interval = Duration::from_nanos(1_000_000_000 / LATENCY_RATE);
    let publisher = publish(broker, move |_| topic.to_owned(), n, Some(interval));
    let got = sub.collect(expected);
    publisher.join().expect("the publisher");
    let mut ms: Vec<f64> = got
        .iter()
        .map(|(_, at, payload)| {
            let json: serde_json::Value = serde_json::from_slice(payload).expect("JSON payload");
            let ts = json["ts"]
                .as_u64()
                .or_else(|| json["payload"]["ts"].as_u64())
                .expect("a ts field");
            (*at as f64 - ts as f64) / 1e6
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Latency {
        p50: pick(0.50),
        p99: pick(0.99),
        max: *ms.last().unwrap(),
        samples: ms.len(),
    }
}

/// A `weir run` process on a generated manifest. Killed when dropped.
struct Weir {
    child: Child,
    dir: tempfile::TempDir,
}

impl Weir {
    /// Starts weir, with `--io-threads` if given (else its default).
    fn start(bin: &Path, broker: &Mosquitto, cache: &Path, io_threads: Option<&str>) -> Weir {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let manifest = format!(
            r#"
[broker]
url = "{url}"
client_id = "{id}"

[http]
listen = "127.0.0.1:0"

[plugins.hot]
path = "{threshold}"
config = {{ field = "temp", op = ">", value = 30 }}

[sinks.out]
type = "mqtt"
url = "{url}"
topic = "out/${{device}}"
qos = 1

[sinks.discard]
type = "null"

[[rules]]
name = "hot"
from = ["devices/{{device}}/t"]
qos = 1
steps = ["hot"]
to = ["out", "discard"]
{linger}
"#,
            url = broker.url(),
            linger = std::env::var("WEIR_BENCH_LINGER")
                .map(|l| format!("linger = {l:?}"))
                .unwrap_or_default(),
            id = unique("weir-bench"),
            threshold = weir_test_artifacts::THRESHOLD.replace('\\', "\\\\"),
        );
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, manifest).expect("write the manifest");
        let log = dir.path().join("weir.log");
        let child = Command::new(bin)
            .arg("--cache-dir")
            .arg(cache)
            .args(["--log", "info", "run"])
            .args(
                io_threads
                    .map(|t| ["--io-threads", t])
                    .into_iter()
                    .flatten(),
            )
            .args(
                std::env::var("WEIR_BENCH_IO_LINGER")
                    .map(|l| vec!["--io-linger".to_owned(), l])
                    .unwrap_or_default(),
            )
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the log"))
            .spawn()
            .expect("start weir");
        let weir = Weir { child, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Subscribed.")
        {
            assert!(
                Instant::now() < deadline,
                "weir did not subscribe:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Idle: subscribed, nothing flowing.
        std::thread::sleep(Duration::from_secs(1));
        weir
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `kB` line of `/proc/<pid>/status`.
    fn status_kb(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in /proc/<pid>/status"))
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("weir.log"));
            eprintln!("--- weir log ---\n{}", log.unwrap_or_default());
        }
    }
}
