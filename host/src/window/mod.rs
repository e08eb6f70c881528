//! Windows: the host side of aggregation. Owns time (event time, the
//! watermark, lateness), window assignment, the cap on open windows, and
//! when a window is finished; the arithmetic is the aggregate plugin's
//! (driven through [`Accumulators`], implemented by
//! [`crate::engine::Aggregator`]).
//!
//! Everything here is synchronous and clock-injected ([`Clock`]): no
//! thread, no timer, no I/O. The pipeline calls [`WindowOperator::process`]
//! with each batch and [`WindowOperator::tick`] when its rule is idle, and
//! [`WindowOperator::flush`] on shutdown; tests do the same with a
//! [`ManualClock`].
//!
//! # Window kinds
//!
//! Time windows are half-open, `[start, end)`, in milliseconds, aligned to
//! the Unix epoch as eKuiper's are (a 10 s window ends at :00, :10, …):
//!
//! - **tumbling** `size`: one window per `size`; each event is in exactly
//!   one.
//! - **hopping** `size`, `hop`: a window starts every `hop`; an event is in
//!   `size / hop` of them. The host keeps one accumulator per *pane* (a
//!   slice of `gcd(size, hop)`) and merges panes into each window when it is
//!   finished, so an event is folded in once, not once per window.
//! - **sliding** `size`, optional `trigger`: every event (or each event the
//!   trigger matches) closes a window over the group's events in
//!   `(t - size, t]`; the host keeps those events, and a window is built
//!   when it is due. Reported as `window_start = t - size`, `window_end =
//!   t`. With `allowed_lateness`, a late event inside a finished window
//!   finishes it again, as for the other kinds.
//! - **session** `gap`, optional `max_length`: a group's events closer than
//!   `gap` form one session; an event that bridges two sessions merges them
//!   (their accumulators are merged). A session ends at `last + gap`, or at
//!   `start + max_length` when events keep coming; an event at or after
//!   that starts the next session.
//! - **count** `count`, optional `hop`: a window over every `count` events
//!   of a group, in arrival order, one starting every `hop` events (default
//!   `count`); finished as soon as it is full. Reported with the times of
//!   its first and last event (`window_end` inclusive).
//!
//! # Time
//!
//! In processing time an event's time is the clock when it arrives, and the
//! watermark is the clock. In event time the time is read from a payload
//! field (ms, s or RFC 3339) and the watermark is the largest time seen
//! minus `max_out_of_orderness`, advancing with the clock once the stream
//! has been idle for `idle_timeout` (see [`Watermark`]). A window is
//! finished when the watermark reaches its end. With `allowed_lateness`,
//! its state is kept that much longer: a late event still folds in and the
//! window is finished again, with the updated result (same `window_start`
//! and `window_end`, so a store keyed by them keeps the latest). An event
//! whose windows are all past that is **late**: counted, and handed back so
//! the pipeline can route it to a side output.
//!
//! # Outputs
//!
//! A window's output is the plugin's JSON object with `window_start`,
//! `window_end` and the group key fields added in front; its fields are the
//! group key plus `window_start` and `window_end`, its topic is the topic of
//! the window's first event, its timestamp the window's start.
//!
//! # Bounded memory
//!
//! `max_open` caps the open windows × groups (for sliding windows, the
//! pending windows and kept events). When an event needs one more,
//! `on_full` decides: `emit_oldest` finishes the window that would end
//! first, early, and makes room; `drop_newest` drops the event. Either is
//! counted and logged.
//!
//! # Failures
//!
//! A message whose time or group key cannot be read, or that the plugin
//! rejects, fails alone. A trap in the plugin (or a deadline overrun, or
//! the memory cap) fails the window it happened in: the aggregator rebuilds
//! every other accumulator on a fresh instance and gives up that one
//! ([`Accumulators::take_lost`]). The window produces no output (counted
//! and logged as failed), its events of that batch fail with the trap's
//! reason, later events for it are dropped, counted, and a window built
//! from it (a hopping window over a lost pane, a session bridged to a
//! lost one) fails too. Only when nothing can be rebuilt (the plugin
//! cannot snapshot, or cannot start) is every open window lost. The rule
//! goes on.
//!
//! What this module must never do: read the system clock itself, or keep
//! anything per group or window beyond the cap.

mod time;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

pub use self::time::{
    Clock, ManualClock, SystemClock, TimeFormat, Watermark, parse_event_time, parse_rfc3339,
};
use crate::engine::{Aggregator, BatchOutcome, Failure, LostAccumulator, StateLost};
use crate::message::{Fields, Message};

/// Why an event for a window whose state was lost is refused.
const LOST_WINDOW: &str =
    "its window lost its state to a plugin failure earlier; the window produces no output";

/// Default of `max_open`: open windows × groups per window step.
pub const DEFAULT_MAX_OPEN: usize = 100_000;

/// A resolved window step.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowSpec {
    /// The kind and its sizes.
    pub kind: WindowKind,
    /// Group key: capture/field names, else dotted payload paths.
    pub group_by: Vec<String>,
    /// Where an event's time comes from.
    pub time: TimeSource,
    /// Bound on out-of-orderness (event time), ms.
    pub max_out_of_orderness_ms: i64,
    /// How long a finished window keeps its state for late events, ms.
    pub allowed_lateness_ms: i64,
    /// Quiet time after which the watermark follows the clock, ms.
    pub idle_timeout_ms: Option<i64>,
    /// Cap on open windows × groups.
    pub max_open: usize,
    /// What happens at the cap.
    pub on_full: FullPolicy,
    /// Sink that receives late events (the pipeline's business).
    pub late_to: Option<String>,
}

/// The window kinds (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub enum WindowKind {
    /// Fixed, non-overlapping windows.
    Tumbling {
        /// Window length, ms.
        size_ms: i64,
    },
    /// Fixed windows starting every `hop`.
    Hopping {
        /// Window length, ms.
        size_ms: i64,
        /// Distance between window starts, ms.
        hop_ms: i64,
    },
    /// A window ending at each (triggering) event.
    Sliding {
        /// Window length, ms.
        size_ms: i64,
        /// Which events close a window; all when `None`.
        trigger: Option<Trigger>,
    },
    /// Bursts of activity per group.
    Session {
        /// Quiet time that ends a session, ms.
        gap_ms: i64,
        /// Longest session, ms.
        max_length_ms: Option<i64>,
    },
    /// Every `count` events of a group.
    Count {
        /// Events per window.
        count: u64,
        /// Events between window starts.
        hop: u64,
    },
}

impl WindowKind {
    /// The kind's name, as written in the manifest.
    pub fn name(&self) -> &'static str {
        match self {
            WindowKind::Tumbling { .. } => "tumbling",
            WindowKind::Hopping { .. } => "hopping",
            WindowKind::Sliding { .. } => "sliding",
            WindowKind::Session { .. } => "session",
            WindowKind::Count { .. } => "count",
        }
    }
}

/// Where an event's time comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum TimeSource {
    /// The clock when the event arrives.
    Processing,
    /// A payload field.
    Event {
        /// Dotted path of the field.
        field: String,
        /// How it is written.
        format: TimeFormat,
    },
}

/// A sliding window's trigger: `field op value` on the payload.
#[derive(Clone, Debug, PartialEq)]
pub struct Trigger {
    /// Dotted payload path.
    pub field: String,
    /// The comparison.
    pub op: CompareOp,
    /// A number, string or boolean.
    pub value: serde_json::Value,
}

/// Comparisons of a [`Trigger`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
pub enum CompareOp {
    /// Greater than.
    #[serde(rename = ">")]
    Gt,
    /// Greater than or equal.
    #[serde(rename = ">=")]
    Ge,
    /// Less than.
    #[serde(rename = "<")]
    Lt,
    /// Less than or equal.
    #[serde(rename = "<=")]
    Le,
    /// Equal.
    #[serde(rename = "==")]
    Eq,
    /// Not equal.
    #[serde(rename = "!=")]
    Ne,
}

impl Trigger {
    /// Whether the payload matches. A missing field never matches.
    pub fn matches(&self, payload: Option<&serde_json::Value>) -> bool {
        let Some(found) = payload.and_then(|p| lookup(p, &self.field)) else {
            return false;
        };
        let ordering = match (found.as_f64(), self.value.as_f64()) {
            (Some(a), Some(b)) => a.partial_cmp(&b),
            _ if found == &self.value => Some(Equal),
            _ => match (found.as_str(), self.value.as_str()) {
                (Some(a), Some(b)) => Some(a.cmp(b)),
                _ => None,
            },
        };
        use std::cmp::Ordering::*;
        match (self.op, ordering) {
            (CompareOp::Ne, o) => o != Some(Equal),
            (_, None) => false,
            (CompareOp::Gt, Some(o)) => o == Greater,
            (CompareOp::Ge, Some(o)) => o != Less,
            (CompareOp::Lt, Some(o)) => o == Less,
            (CompareOp::Le, Some(o)) => o != Greater,
            (CompareOp::Eq, Some(o)) => o == Equal,
        }
    }
}

/// What happens when `max_open` is reached.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Finish the window that would end first, early, to make room.
    EmitOldest,
    /// Drop the event that needs a new window.
    DropNewest,
}

impl FullPolicy {
    fn as_str(self) -> &'static str {
        match self {
            FullPolicy::EmitOldest => "emit_oldest",
            FullPolicy::DropNewest => "drop_newest",
        }
    }
}

/// The accumulator calls a window operator makes (see `wit/plugin.wit`,
/// interface `aggregate`). [`Aggregator`] is the real one.
pub trait Accumulators {
    /// Folds messages into accumulators by `(message, id)` pairs.
    fn accumulate(
        &mut self,
        messages: &[Message],
        targets: &[(u32, u32)],
    ) -> Result<Vec<Failure>, StateLost>;
    /// Folds `source` into `target`, leaving `source`.
    fn merge(&mut self, target: u32, source: u32) -> Result<(), StateLost>;
    /// Finishes and releases accumulators.
    fn finish(&mut self, windows: Vec<(u32, Message)>) -> Result<BatchOutcome, StateLost>;
    /// Releases accumulators.
    fn discard(&mut self, ids: &[u32]) -> Result<(), StateLost>;
    /// Accumulators given up since the last call (a trap in one of them):
    /// their windows fail; every other accumulator is intact.
    fn take_lost(&mut self) -> Vec<LostAccumulator> {
        Vec::new()
    }
}

impl Accumulators for Aggregator {
    fn accumulate(
        &mut self,
        messages: &[Message],
        targets: &[(u32, u32)],
    ) -> Result<Vec<Failure>, StateLost> {
        Aggregator::accumulate(self, messages, targets)
    }
    fn merge(&mut self, target: u32, source: u32) -> Result<(), StateLost> {
        Aggregator::merge(self, target, source)
    }
    fn finish(&mut self, windows: Vec<(u32, Message)>) -> Result<BatchOutcome, StateLost> {
        Aggregator::finish(self, windows)
    }
    fn discard(&mut self, ids: &[u32]) -> Result<(), StateLost> {
        Aggregator::discard(self, ids)
    }
    fn take_lost(&mut self) -> Vec<LostAccumulator> {
        Aggregator::take_lost(self)
    }
}

/// An input message the window step could not take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Index in the batch.
    pub input: usize,
    /// `event_time`, `group_by`, `rejected` (by the plugin), `window_full`,
    /// `window_failed` or `trap`.
    pub kind: &'static str,
    /// Why.
    pub reason: String,
}

/// What one call of the operator produced.
#[derive(Debug, Default)]
pub struct Step {
    /// Window results, in order of window end.
    pub outputs: Vec<Message>,
    /// Inputs that failed, sorted by index.
    pub rejected: Vec<Rejected>,
    /// Inputs too late for every window they belong to: `(index, the
    /// message with its event time as timestamp)`.
    pub late: Vec<(usize, Message)>,
}

/// Counters of one window step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WindowStats {
    /// Windows finished with a result (re-finishings included).
    pub fired: u64,
    /// Windows whose result failed (plugin failure or lost state).
    pub failed: u64,
    /// Late events.
    pub late: u64,
    /// Events dropped or windows finished early at the cap.
    pub full: u64,
}

/// A window's identity and what its result needs.
#[derive(Clone, Debug)]
struct Due {
    group: GroupView,
    start: i64,
    end: i64,
    topic: Arc<str>,
    /// How the accumulator is obtained.
    source: Source,
}

#[derive(Clone, Debug)]
enum Source {
    /// Finish this accumulator itself (it is released).
    Own(u32),
    /// Merge these into a fresh accumulator, finish that.
    Merge(Vec<u32>),
    /// Feed these kept events into a fresh accumulator, finish that.
    Events(Vec<Message>),
}

/// Interned group keys, with reference counts so that a group that holds
/// nothing any more is forgotten.
#[derive(Default)]
struct Groups {
    by_key: HashMap<Arc<[String]>, u32>,
    info: Vec<Option<Group>>,
    free: Vec<u32>,
}

struct Group {
    view: GroupView,
    refs: usize,
}

/// What an output needs of its group; cheap to clone.
#[derive(Clone, Debug)]
struct GroupView {
    key: Arc<[String]>,
    fields: Fields,
    /// Payload prefix: `"k":"v",` for each key field (JSON-escaped).
    json: Arc<str>,
}

impl Groups {
    fn intern(&mut self, names: &[String], key: Vec<String>) -> u32 {
        if let Some(&gid) = self.by_key.get(key.as_slice()) {
            return gid;
        }
        let key: Arc<[String]> = key.into();
        let names: Vec<String> = names.iter().map(|n| n.replace('.', "_")).collect();
        let fields = Fields::from_pairs(
            names
                .iter()
                .map(String::as_str)
                .zip(key.iter().map(String::as_str)),
        );
        let mut json = String::new();
        for (n, v) in names.iter().zip(key.iter()) {
            json.push_str(&serde_json::to_string(n).expect("a string serialises"));
            json.push(':');
            json.push_str(&serde_json::to_string(v).expect("a string serialises"));
            json.push(',');
        }
        let group = Group {
            view: GroupView {
                key: key.clone(),
                fields,
                json: Arc::from(json),
            },
            refs: 0,
        };
        let gid = match self.free.pop() {
            Some(gid) => {
                self.info[gid as usize] = Some(group);
                gid
            }
            None => {
                self.info.push(Some(group));
                (self.info.len() - 1) as u32
            }
        };
        self.by_key.insert(key, gid);
        gid
    }

    fn view(&self, gid: u32) -> GroupView {
        self.info[gid as usize]
            .as_ref()
            .expect("a live group")
            .view
            .clone()
    }

    fn retain(&mut self, gid: u32) {
        if let Some(g) = self.info[gid as usize].as_mut() {
            g.refs += 1;
        }
    }

    fn release(&mut self, gid: u32) {
        let Some(g) = self.info[gid as usize].as_mut() else {
            return;
        };
        g.refs = g.refs.saturating_sub(1);
        if g.refs == 0 {
            let key = g.view.key.clone();
            self.info[gid as usize] = None;
            self.by_key.remove(&key);
            self.free.push(gid);
        }
    }

    /// Forgets groups nothing holds (after state was lost or flushed).
    fn sweep(&mut self) {
        for gid in 0..self.info.len() {
            if self.info[gid].as_ref().is_some_and(|g| g.refs == 0) {
                self.release(gid as u32);
            }
        }
    }

    fn len(&self) -> usize {
        self.by_key.len()
    }
}

/// Accumulator ids: reused once released.
#[derive(Default)]
struct Ids {
    next: u32,
    free: Vec<u32>,
    /// Ids still in use whose state the plugin lost: `(kind, reason)`.
    lost: HashMap<u32, (&'static str, String)>,
}

impl Ids {
    fn take(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            self.next = self.next.wrapping_add(1);
            self.next
        })
    }
    fn put(&mut self, id: u32) {
        self.lost.remove(&id);
        self.free.push(id);
    }
    /// Records what the plugin gave up; returns the ids.
    fn absorb(&mut self, lost: Vec<LostAccumulator>) -> Vec<u32> {
        lost.into_iter()
            .map(|l| {
                self.lost.insert(l.id, (l.kind.as_str(), l.reason));
                l.id
            })
            .collect()
    }
    fn is_lost(&self, id: u32) -> bool {
        !self.lost.is_empty() && self.lost.contains_key(&id)
    }
}

/// Tumbling and hopping windows: pane accumulators, windows over panes.
#[derive(Default)]
struct PaneState {
    panes: HashMap<(u32, i64), Pane>,
    /// `(purge at, gid, pane start)`.
    pane_expiry: BTreeSet<(i64, u32, i64)>,
    /// Open windows by `(end, gid, start)`.
    windows: BTreeMap<(i64, u32, i64), Win>,
}

struct Pane {
    acc: u32,
    topic: Arc<str>,
}

#[derive(Clone, Copy, Default)]
struct Win {
    fired: bool,
    dirty: bool,
}

struct Session {
    acc: u32,
    start: i64,
    last: i64,
    topic: Arc<str>,
    fired: bool,
    dirty: bool,
}

impl Session {
    fn end(&self, gap: i64, max_length: Option<i64>) -> i64 {
        let end = self.last + gap;
        max_length.map_or(end, |m| end.min(self.start + m))
    }
}

struct CountWin {
    acc: u32,
    seen: u64,
    first: i64,
    last: i64,
    topic: Arc<str>,
}

#[derive(Default)]
struct CountGroup {
    index: u64,
    open: VecDeque<CountWin>,
}

#[derive(Default)]
struct SlidingGroup {
    /// Kept events `(time, message)`, sorted by time.
    events: VecDeque<(i64, Message)>,
    /// Ends of windows finished and still within the allowed lateness: a
    /// late event inside one finishes it again.
    fired: BTreeSet<i64>,
}

impl SlidingGroup {
    /// The window `(end - size, end]` over this group's kept events.
    fn due(&self, group: GroupView, end: i64, size: i64) -> Due {
        let events: Vec<Message> = self
            .events
            .iter()
            .filter(|(ts, _)| *ts > end - size && *ts <= end)
            .map(|(_, m)| m.clone())
            .collect();
        let topic = events
            .first()
            .map(|m| m.topic.clone())
            .unwrap_or_else(|| Arc::from(""));
        Due {
            group,
            start: end - size,
            end,
            topic,
            source: Source::Events(events),
        }
    }
}

enum State {
    Panes(PaneState),
    Sessions(HashMap<u32, Vec<Session>>, BTreeSet<(i64, u32, i64)>),
    Counts(HashMap<u32, CountGroup>),
    Sliding(HashMap<u32, SlidingGroup>, BTreeSet<(i64, u32)>),
}

/// One window step: its spec, clock, watermark and open windows.
pub struct WindowOperator {
    name: Arc<str>,
    spec: WindowSpec,
    clock: Arc<dyn Clock>,
    watermark: Watermark,
    groups: Groups,
    ids: Ids,
    state: State,
    /// Windows ending at or before this lost their state to a trap.
    lost_until: i64,
    stats: WindowStats,
}

/// An event ready for assignment.
struct Event {
    input: usize,
    time: i64,
    gid: u32,
}

impl WindowOperator {
    /// A window step named `name` (for logs), on `clock`.
    pub fn new(name: &str, spec: WindowSpec, clock: Arc<dyn Clock>) -> Self {
        let event_time = matches!(spec.time, TimeSource::Event { .. });
        let watermark = Watermark::new(
            event_time,
            spec.max_out_of_orderness_ms,
            spec.idle_timeout_ms,
        );
        let state = match spec.kind {
            WindowKind::Tumbling { .. } | WindowKind::Hopping { .. } => {
                State::Panes(PaneState::default())
            }
            WindowKind::Session { .. } => State::Sessions(HashMap::new(), BTreeSet::new()),
            WindowKind::Count { .. } => State::Counts(HashMap::new()),
            WindowKind::Sliding { .. } => State::Sliding(HashMap::new(), BTreeSet::new()),
        };
        WindowOperator {
            name: Arc::from(name),
            spec,
            clock,
            watermark,
            groups: Groups::default(),
            ids: Ids::default(),
            state,
            lost_until: i64::MIN,
            stats: WindowStats::default(),
        }
    }

    /// The step's spec.
    pub fn spec(&self) -> &WindowSpec {
        &self.spec
    }

    /// Counters since the step started.
    pub fn stats(&self) -> &WindowStats {
        &self.stats
    }

    /// Open windows × groups (what `max_open` caps).
    pub fn open(&self) -> usize {
        match &self.state {
            State::Panes(p) => p.windows.len(),
            State::Sessions(s, _) => s.values().map(Vec::len).sum(),
            State::Counts(c) => c.values().map(|g| g.open.len()).sum(),
            State::Sliding(s, pending) => {
                pending.len() + s.values().map(|g| g.events.len()).sum::<usize>()
            }
        }
    }

    /// The ids of the accumulators that hold state right now: what a hot
    /// reload of the aggregate plugin must move to the new version. (A
    /// sliding window keeps its events on the host and builds its
    /// accumulator when it fires, so it holds none between batches.)
    pub fn accumulators(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = match &self.state {
            State::Panes(p) => p.panes.values().map(|pane| pane.acc).collect(),
            State::Sessions(s, _) => s.values().flatten().map(|x| x.acc).collect(),
            State::Counts(c) => c
                .values()
                .flat_map(|g| g.open.iter().map(|w| w.acc))
                .collect(),
            State::Sliding(..) => Vec::new(),
        };
        ids.sort_unstable();
        ids
    }

    /// Groups currently held.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// The watermark as last advanced.
    pub fn watermark(&self) -> i64 {
        self.watermark.current()
    }

    /// Takes a batch: assigns each message to its windows, feeds the
    /// accumulators, then finishes every window the watermark passed.
    pub fn process(&mut self, acc: &mut impl Accumulators, messages: Vec<Message>) -> Step {
        let now = self.clock.now_ms();
        let mut step = Step::default();
        self.ids.absorb(acc.take_lost());
        let (events, messages) = self.prepare(messages, now, &mut step);
        // Lateness is judged against the watermark before this batch.
        let watermark = self.watermark.current();
        for e in &events {
            self.watermark.observe(e.time, now);
        }
        let mut targets: Vec<(u32, u32)> = Vec::with_capacity(events.len());
        let mut due = Vec::new();
        match &self.spec.kind {
            WindowKind::Tumbling { .. } | WindowKind::Hopping { .. } => self.assign_panes(
                &events,
                &messages,
                watermark,
                &mut targets,
                &mut due,
                &mut step,
            ),
            WindowKind::Session { .. } => self.assign_sessions(
                acc,
                &events,
                &messages,
                watermark,
                &mut targets,
                &mut due,
                &mut step,
            ),
            WindowKind::Count { .. } => {
                self.assign_counts(&events, &messages, &mut targets, &mut due, &mut step)
            }
            WindowKind::Sliding { .. } => {
                self.assign_sliding(&events, &messages, watermark, &mut due, &mut step)
            }
        }
        if !targets.is_empty() {
            match acc.accumulate(&messages, &targets) {
                Ok(failures) => {
                    step.rejected.extend(failures.into_iter().map(|f| Rejected {
                        input: events_input(&events, f.input),
                        kind: "rejected",
                        reason: f.reason,
                    }));
                    // A trap gave up these accumulators: their events of
                    // this batch fail with it.
                    let lost = self.ids.absorb(acc.take_lost());
                    let mut failed: Vec<usize> = Vec::new();
                    for &(m, id) in &targets {
                        if lost.contains(&id) {
                            failed.push(m as usize);
                        }
                    }
                    failed.sort_unstable();
                    failed.dedup();
                    for m in failed {
                        let Some(input) = events.get(m).map(|e| e.input) else {
                            continue;
                        };
                        if step.rejected.iter().any(|r| r.input == input) {
                            continue;
                        }
                        let (kind, reason) = self.ids.lost[&targets
                            .iter()
                            .find(|&&(x, id)| x as usize == m && lost.contains(&id))
                            .expect("found above")
                            .1]
                            .clone();
                        step.rejected.push(Rejected {
                            input,
                            kind,
                            reason,
                        });
                    }
                }
                Err(lost) => {
                    self.lose(&lost);
                    step.rejected.extend(events.iter().map(|e| Rejected {
                        input: e.input,
                        kind: lost.kind.as_str(),
                        reason: lost.reason.clone(),
                    }));
                    due.clear();
                }
            }
        }
        self.fire(acc, due, &mut step);
        self.advance(acc, now, false, &mut step);
        step.rejected.sort_by_key(|r| r.input);
        step.late.sort_by_key(|(i, _)| *i);
        step
    }

    /// Advances the watermark with the clock and finishes what is due.
    pub fn tick(&mut self, acc: &mut impl Accumulators) -> Step {
        let now = self.clock.now_ms();
        let mut step = Step::default();
        self.advance(acc, now, false, &mut step);
        step
    }

    /// Finishes every open window now (shutdown: a partial result is
    /// better than none) and forgets all state.
    pub fn flush(&mut self, acc: &mut impl Accumulators) -> Step {
        let now = self.clock.now_ms();
        let mut step = Step::default();
        self.advance(acc, now, true, &mut step);
        step
    }

    /// Reads each message's time and group; the messages fed on carry
    /// their event time as their timestamp.
    fn prepare(
        &mut self,
        messages: Vec<Message>,
        now: i64,
        step: &mut Step,
    ) -> (Vec<Event>, Vec<Message>) {
        let mut events = Vec::with_capacity(messages.len());
        let mut kept = Vec::with_capacity(messages.len());
        let needs_json = matches!(self.spec.time, TimeSource::Event { .. })
            || matches!(
                &self.spec.kind,
                WindowKind::Sliding {
                    trigger: Some(_),
                    ..
                }
            );
        for (input, mut m) in messages.into_iter().enumerate() {
            let mut parsed: Option<Option<serde_json::Value>> = None;
            let mut json = |m: &Message| -> Option<serde_json::Value> {
                parsed
                    .get_or_insert_with(|| serde_json::from_slice(&m.payload).ok())
                    .clone()
            };
            let time = match &self.spec.time {
                TimeSource::Processing => Ok(now),
                TimeSource::Event { field, format } => match json(&m) {
                    None => Err(format!(
                        "event time field \"{field}\": the payload is not JSON"
                    )),
                    Some(v) => match lookup(&v, field) {
                        None => Err(format!("event time field \"{field}\" is missing")),
                        Some(found) => parse_event_time(found, *format)
                            .map_err(|e| format!("event time field \"{field}\" {e}")),
                    },
                },
            };
            let time = match time {
                Ok(t) => t,
                Err(reason) => {
                    step.rejected.push(Rejected {
                        input,
                        kind: "event_time",
                        reason,
                    });
                    continue;
                }
            };
            let mut key = Vec::with_capacity(self.spec.group_by.len());
            let mut missing = None;
            for name in &self.spec.group_by {
                if let Some(v) = m.fields.get(name) {
                    key.push(v.to_owned());
                    continue;
                }
                match json(&m).as_ref().and_then(|v| lookup(v, name)) {
                    Some(serde_json::Value::String(s)) => key.push(s.clone()),
                    Some(serde_json::Value::Null) | None => {
                        missing = Some(name.clone());
                        break;
                    }
                    Some(other) => key.push(other.to_string()),
                }
            }
            if let Some(name) = missing {
                step.rejected.push(Rejected {
                    input,
                    kind: "group_by",
                    reason: format!("group_by field \"{name}\" is neither a capture nor a payload field of this message"),
                });
                continue;
            }
            if needs_json {
                // Keep the parse for the trigger, cheaply: it is only
                // needed by sliding windows, which re-read it.
                let _ = json(&m);
            }
            let gid = self.groups.intern(&self.spec.group_by, key);
            m.timestamp_ms = time;
            events.push(Event { input, time, gid });
            kept.push(m);
        }
        (events, kept)
    }

    /// Whether there is room for one more window; at the cap, applies the
    /// policy (`false`: drop the event).
    fn make_room(&mut self, pending: &mut Vec<Due>, input: usize, step: &mut Step) -> bool {
        if self.open() < self.spec.max_open {
            return true;
        }
        self.stats.full += 1;
        crate::telemetry::window_full(&self.name, self.spec.on_full.as_str(), self.spec.max_open);
        match self.spec.on_full {
            FullPolicy::DropNewest => {
                step.rejected.push(Rejected {
                    input,
                    kind: "window_full",
                    reason: format!(
                        "the window step holds its maximum of {} open windows × groups (max_open); on_full = \"drop_newest\"",
                        self.spec.max_open
                    ),
                });
                false
            }
            FullPolicy::EmitOldest => {
                self.evict_oldest(pending);
                true
            }
        }
    }

    /// Takes the open window that would end first out, as due now.
    fn evict_oldest(&mut self, pending: &mut Vec<Due>) {
        match &mut self.state {
            State::Panes(p) => {
                let Some((&(end, gid, start), &win)) = p.windows.iter().next() else {
                    return;
                };
                p.windows.remove(&(end, gid, start));
                if !win.fired || win.dirty {
                    let (size, pane) = pane_sizes(&self.spec.kind);
                    let accs = panes_of(p, gid, start, size, pane);
                    if let Some(first) = accs.first() {
                        let topic = p.panes[&(gid, first.1)].topic.clone();
                        pending.push(Due {
                            group: self.groups.view(gid),
                            start,
                            end,
                            topic,
                            source: Source::Merge(accs.iter().map(|a| a.0).collect()),
                        });
                    }
                }
            }
            State::Sessions(sessions, index) => {
                let Some(&(end, gid, start)) = index.iter().next() else {
                    return;
                };
                index.remove(&(end, gid, start));
                if let Some(list) = sessions.get_mut(&gid)
                    && let Some(i) = list.iter().position(|s| s.start == start)
                {
                    let s = list.remove(i);
                    if list.is_empty() {
                        sessions.remove(&gid);
                    }
                    pending.push(Due {
                        group: self.groups.view(gid),
                        start,
                        end,
                        topic: s.topic,
                        source: Source::Own(s.acc),
                    });
                    self.groups.release(gid);
                }
            }
            State::Counts(groups) => {
                // The fullest window of the first group with one.
                let Some((&gid, g)) = groups.iter_mut().find(|(_, g)| !g.open.is_empty()) else {
                    return;
                };
                let w = g.open.pop_front().expect("not empty");
                pending.push(Due {
                    group: self.groups.view(gid),
                    start: w.first,
                    end: w.last,
                    topic: w.topic,
                    source: Source::Own(w.acc),
                });
                self.groups.release(gid);
            }
            State::Sliding(groups, index) => {
                if let Some(&(t, gid)) = index.iter().next() {
                    index.remove(&(t, gid));
                    let size = sliding_size(&self.spec.kind);
                    if let Some(g) = groups.get(&gid) {
                        pending.push(g.due(self.groups.view(gid), t, size));
                    }
                } else if let Some((&gid, g)) =
                    groups.iter_mut().find(|(_, g)| !g.events.is_empty())
                {
                    g.events.pop_front();
                    self.groups.release(gid);
                }
            }
        }
    }

    fn assign_panes(
        &mut self,
        events: &[Event],
        messages: &[Message],
        watermark: i64,
        targets: &mut Vec<(u32, u32)>,
        due: &mut Vec<Due>,
        step: &mut Step,
    ) {
        let (size, pane) = pane_sizes(&self.spec.kind);
        let hop = match self.spec.kind {
            WindowKind::Hopping { hop_ms, .. } => hop_ms,
            _ => size,
        };
        let lateness = self.spec.allowed_lateness_ms;
        for (i, e) in events.iter().enumerate() {
            let pane_start = align(e.time, pane);
            // The last window holding this pane starts at the last hop at or
            // before it.
            let last_end = align(pane_start, hop) + size;
            if watermark >= last_end.saturating_add(lateness) {
                self.late(e.input, &messages[i], step);
                continue;
            }
            if last_end <= self.lost_until {
                self.lost_event(e.input, step);
                continue;
            }
            // Windows holding the pane, from the last back.
            let mut live_windows = Vec::new();
            let mut s = align(pane_start, hop);
            while s + size > pane_start {
                if watermark < (s + size).saturating_add(lateness) {
                    live_windows.push(s);
                }
                s -= hop;
            }
            let State::Panes(p) = &self.state else {
                unreachable!()
            };
            let new_windows = live_windows
                .iter()
                .filter(|&&s| !p.windows.contains_key(&(s + size, e.gid, s)))
                .count();
            let mut room = true;
            for _ in 0..new_windows {
                room &= self.make_room(due, e.input, step);
                if !room {
                    break;
                }
            }
            if !room {
                continue;
            }
            let State::Panes(p) = &mut self.state else {
                unreachable!()
            };
            let acc = match p.panes.get(&(e.gid, pane_start)) {
                Some(existing) if self.ids.is_lost(existing.acc) => {
                    self.lost_event(e.input, step);
                    continue;
                }
                Some(existing) => existing.acc,
                None => {
                    let acc = self.ids.take();
                    p.panes.insert(
                        (e.gid, pane_start),
                        Pane {
                            acc,
                            topic: messages[i].topic.clone(),
                        },
                    );
                    p.pane_expiry
                        .insert((last_end.saturating_add(lateness), e.gid, pane_start));
                    self.groups.retain(e.gid);
                    acc
                }
            };
            targets.push((i as u32, acc));
            for s in live_windows {
                let win = p.windows.entry((s + size, e.gid, s)).or_default();
                if win.fired {
                    win.dirty = true;
                }
            }
        }
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one call site; the pieces are the operator's state"
    )]
    fn assign_sessions(
        &mut self,
        acc: &mut impl Accumulators,
        events: &[Event],
        messages: &[Message],
        watermark: i64,
        targets: &mut Vec<(u32, u32)>,
        due: &mut Vec<Due>,
        step: &mut Step,
    ) {
        let WindowKind::Session {
            gap_ms: gap,
            max_length_ms: max_len,
        } = self.spec.kind
        else {
            unreachable!()
        };
        let lateness = self.spec.allowed_lateness_ms;
        for (i, e) in events.iter().enumerate() {
            let t = e.time;
            if watermark >= (t + gap).saturating_add(lateness) {
                self.late(e.input, &messages[i], step);
                continue;
            }
            let State::Sessions(sessions, _) = &self.state else {
                unreachable!()
            };
            let list = sessions.get(&e.gid).map(Vec::as_slice).unwrap_or_default();
            let fits = |s: &Session| {
                let (start, last) = (s.start.min(t), s.last.max(t));
                let near = t > s.start - gap && t < s.last + gap;
                near && max_len.is_none_or(|m| last - start < m)
            };
            let candidates: Vec<usize> = (0..list.len()).filter(|&k| fits(&list[k])).collect();
            // Merge every candidate if the merged span stays short enough;
            // otherwise join the first.
            let merged_ok = candidates.len() > 1 && {
                let start = candidates
                    .iter()
                    .map(|&k| list[k].start)
                    .min()
                    .unwrap_or(t)
                    .min(t);
                let last = candidates
                    .iter()
                    .map(|&k| list[k].last)
                    .max()
                    .unwrap_or(t)
                    .max(t);
                max_len.is_none_or(|m| last - start < m)
            };
            let chosen: Vec<usize> = if merged_ok {
                candidates
            } else {
                candidates.into_iter().take(1).collect()
            };
            if chosen.is_empty() && !self.make_room(due, e.input, step) {
                continue;
            }
            let State::Sessions(sessions, index) = &mut self.state else {
                unreachable!()
            };
            let list = sessions.entry(e.gid).or_default();
            // `chosen` is ascending: the target is the first, and removing
            // the others (from the back) does not move it.
            let target = match chosen.first() {
                None => {
                    let id = self.ids.take();
                    list.push(Session {
                        acc: id,
                        start: t,
                        last: t,
                        topic: messages[i].topic.clone(),
                        fired: false,
                        dirty: false,
                    });
                    self.groups.retain(e.gid);
                    list.len() - 1
                }
                Some(&k) => {
                    index.remove(&(list[k].end(gap, max_len), e.gid, list[k].start));
                    k
                }
            };
            for &k in chosen.iter().skip(1).rev() {
                let other = list.remove(k);
                index.remove(&(other.end(gap, max_len), e.gid, other.start));
                let into = list[target].acc;
                let merged = if let Some(why) = self.ids.lost.get(&other.acc).cloned() {
                    // The merged session lacks what the lost one held.
                    self.ids.lost.entry(into).or_insert(why);
                    acc.discard(&[other.acc])
                } else if self.ids.is_lost(into) {
                    acc.discard(&[other.acc])
                } else {
                    acc.merge(into, other.acc)
                        .and_then(|()| acc.discard(&[other.acc]))
                };
                self.ids.absorb(acc.take_lost());
                self.ids.put(other.acc);
                self.groups.release(e.gid);
                if let Err(lost) = merged {
                    self.lose(&lost);
                    return;
                }
                let s = &mut list[target];
                if other.start < s.start {
                    s.topic = other.topic;
                }
                s.start = s.start.min(other.start);
                s.last = s.last.max(other.last);
                s.fired |= other.fired;
            }
            let s = &mut list[target];
            if t < s.start {
                s.topic = messages[i].topic.clone();
            }
            s.start = s.start.min(t);
            s.last = s.last.max(t);
            if s.fired {
                s.dirty = true;
            }
            index.insert((s.end(gap, max_len), e.gid, s.start));
            let id = s.acc;
            if self.ids.is_lost(id) {
                self.lost_event(e.input, step);
            } else {
                targets.push((i as u32, id));
            }
        }
    }

    fn assign_counts(
        &mut self,
        events: &[Event],
        messages: &[Message],
        targets: &mut Vec<(u32, u32)>,
        due: &mut Vec<Due>,
        step: &mut Step,
    ) {
        let WindowKind::Count { count, hop } = self.spec.kind else {
            unreachable!()
        };
        for (i, e) in events.iter().enumerate() {
            let State::Counts(groups) = &self.state else {
                unreachable!()
            };
            let opens = groups.get(&e.gid).is_none_or(|g| g.index % hop == 0);
            if opens && !self.make_room(due, e.input, step) {
                continue;
            }
            let State::Counts(groups) = &mut self.state else {
                unreachable!()
            };
            let g = groups.entry(e.gid).or_default();
            if g.index.is_multiple_of(hop) {
                let id = self.ids.take();
                g.open.push_back(CountWin {
                    acc: id,
                    seen: 0,
                    first: e.time,
                    last: e.time,
                    topic: messages[i].topic.clone(),
                });
                self.groups.retain(e.gid);
            }
            g.index += 1;
            let mut fed = false;
            for w in g.open.iter_mut() {
                if !self.ids.is_lost(w.acc) {
                    targets.push((i as u32, w.acc));
                    fed = true;
                }
                w.seen += 1;
                w.first = w.first.min(e.time);
                w.last = w.last.max(e.time);
            }
            if !fed && !g.open.is_empty() {
                step.rejected.push(Rejected {
                    input: e.input,
                    kind: "window_failed",
                    reason: LOST_WINDOW.into(),
                });
            }
            while g.open.front().is_some_and(|w| w.seen >= count) {
                let w = g.open.pop_front().expect("checked");
                due.push(Due {
                    group: self.groups.view(e.gid),
                    start: w.first,
                    end: w.last,
                    topic: w.topic,
                    source: Source::Own(w.acc),
                });
            }
            if g.open.is_empty() && g.index.is_multiple_of(hop) {
                groups.remove(&e.gid);
            }
        }
    }

    fn assign_sliding(
        &mut self,
        events: &[Event],
        messages: &[Message],
        watermark: i64,
        due: &mut Vec<Due>,
        step: &mut Step,
    ) {
        let WindowKind::Sliding {
            size_ms: size,
            trigger,
        } = &self.spec.kind
        else {
            unreachable!()
        };
        let (size, trigger) = (*size, trigger.clone());
        let lateness = self.spec.allowed_lateness_ms;
        for (i, e) in events.iter().enumerate() {
            // Useful while a window ending within `size` after it is pending.
            if watermark >= (e.time + size).saturating_add(lateness) {
                self.late(e.input, &messages[i], step);
                continue;
            }
            let triggers = match &trigger {
                None => true,
                Some(t) => t.matches(serde_json::from_slice(&messages[i].payload).ok().as_ref()),
            };
            // The kept event and, if it triggers, its window: one unit each.
            let units = 1 + usize::from(triggers);
            let mut room = true;
            for _ in 0..units {
                room &= self.make_room(due, e.input, step);
            }
            if !room {
                continue;
            }
            let State::Sliding(groups, index) = &mut self.state else {
                unreachable!()
            };
            let g = groups.entry(e.gid).or_default();
            let at = g.events.partition_point(|(t, _)| *t <= e.time);
            g.events.insert(at, (e.time, messages[i].clone()));
            self.groups.retain(e.gid);
            if triggers {
                index.insert((e.time, e.gid));
            }
            // Finished windows `(end - size, end]` holding this late event
            // are finished again, with it.
            for &end in g.fired.range(e.time..e.time.saturating_add(size)) {
                index.insert((end, e.gid));
            }
        }
    }

    /// Advances the watermark; finishes due windows and purges expired
    /// state. `all` finishes and purges everything (shutdown).
    fn advance(&mut self, acc: &mut impl Accumulators, now: i64, all: bool, step: &mut Step) {
        let wm = if all {
            i64::MAX
        } else {
            self.watermark.advance(now)
        };
        let lateness = if all {
            0
        } else {
            self.spec.allowed_lateness_ms
        };
        let mut due = Vec::new();
        let mut discard = Vec::new();
        match &mut self.state {
            State::Panes(p) => {
                let (size, pane) = pane_sizes(&self.spec.kind);
                // Due windows: end <= wm, not fired or changed since.
                let ready: Vec<(i64, u32, i64)> = p
                    .windows
                    .range(..(wm.saturating_add(1), 0, i64::MIN))
                    .filter(|(_, w)| !w.fired || w.dirty)
                    .map(|(k, _)| *k)
                    .collect();
                for (end, gid, start) in ready {
                    let accs = panes_of(p, gid, start, size, pane);
                    let Some(first) = accs.first() else { continue };
                    let topic = p.panes[&(gid, first.1)].topic.clone();
                    let keep = lateness > 0 || size != pane;
                    let group = self.groups.view(gid);
                    let source = if !keep && accs.len() == 1 {
                        // The window is its one pane: finish it in place.
                        let (id, ps) = accs[0];
                        p.panes.remove(&(gid, ps));
                        p.pane_expiry.remove(&(align(ps, size) + size, gid, ps));
                        self.groups.release(gid);
                        Source::Own(id)
                    } else {
                        Source::Merge(accs.iter().map(|a| a.0).collect())
                    };
                    due.push(Due {
                        group,
                        start,
                        end,
                        topic,
                        source,
                    });
                    let w = p.windows.get_mut(&(end, gid, start)).expect("listed above");
                    w.fired = true;
                    w.dirty = false;
                }
                // Expired windows and panes.
                let expired: Vec<_> = p
                    .windows
                    .range(..(wm.saturating_sub(lateness).saturating_add(1), 0, i64::MIN))
                    .map(|(k, _)| *k)
                    .collect();
                for k in expired {
                    p.windows.remove(&k);
                }
                while let Some(&(at, gid, ps)) = p.pane_expiry.first() {
                    if at > wm && !all {
                        break;
                    }
                    p.pane_expiry.pop_first();
                    if let Some(pane) = p.panes.remove(&(gid, ps)) {
                        discard.push(pane.acc);
                        self.groups.release(gid);
                    }
                }
                if all {
                    p.windows.clear();
                    for ((gid, _), pane) in p.panes.drain() {
                        discard.push(pane.acc);
                        self.groups.release(gid);
                    }
                }
            }
            State::Sessions(sessions, index) => {
                let WindowKind::Session {
                    gap_ms: gap,
                    max_length_ms: max_len,
                } = self.spec.kind
                else {
                    unreachable!()
                };
                let ready: Vec<(i64, u32, i64)> = index
                    .range(..(wm.saturating_add(1), 0, i64::MIN))
                    .copied()
                    .collect();
                for (end, gid, start) in ready {
                    let Some(list) = sessions.get_mut(&gid) else {
                        continue;
                    };
                    let Some(k) = list.iter().position(|s| s.start == start) else {
                        continue;
                    };
                    let s = &mut list[k];
                    let expired = end.saturating_add(lateness) <= wm;
                    if !s.fired || s.dirty {
                        let source = if expired {
                            Source::Own(s.acc)
                        } else {
                            Source::Merge(vec![s.acc])
                        };
                        due.push(Due {
                            group: self.groups.view(gid),
                            start,
                            end: s.end(gap, max_len),
                            topic: s.topic.clone(),
                            source,
                        });
                        s.fired = true;
                        s.dirty = false;
                    } else if expired {
                        discard.push(s.acc);
                    }
                    if expired {
                        index.remove(&(end, gid, start));
                        list.remove(k);
                        if list.is_empty() {
                            sessions.remove(&gid);
                        }
                        self.groups.release(gid);
                    }
                }
            }
            State::Counts(groups) => {
                if all {
                    for (gid, g) in groups.drain() {
                        for w in g.open {
                            due.push(Due {
                                group: self.groups.view(gid),
                                start: w.first,
                                end: w.last,
                                topic: w.topic,
                                source: Source::Own(w.acc),
                            });
                            self.groups.release(gid);
                        }
                    }
                }
            }
            State::Sliding(groups, index) => {
                let size = sliding_size(&self.spec.kind);
                while let Some(&(t, gid)) = index.first() {
                    if t.saturating_add(1) > wm && !all {
                        break;
                    }
                    index.pop_first();
                    let Some(g) = groups.get_mut(&gid) else {
                        continue;
                    };
                    due.push(g.due(self.groups.view(gid), t, size));
                    if lateness > 0 {
                        g.fired.insert(t);
                    }
                }
                // Kept events no future window can hold.
                let horizon = wm.saturating_sub(lateness).saturating_sub(size);
                let mut emptied = Vec::new();
                for (&gid, g) in groups.iter_mut() {
                    // Windows past their lateness are final.
                    while g
                        .fired
                        .first()
                        .is_some_and(|end| end.saturating_add(lateness) <= wm || all)
                    {
                        g.fired.pop_first();
                    }
                    while g
                        .events
                        .front()
                        .is_some_and(|(ts, _)| *ts <= horizon || all)
                    {
                        g.events.pop_front();
                        self.groups.release(gid);
                    }
                    if g.events.is_empty() {
                        emptied.push(gid);
                    }
                }
                for gid in emptied {
                    groups.remove(&gid);
                }
            }
        }
        // Finish before discarding: a window may be built from panes that
        // expire with it.
        self.fire(acc, due, step);
        if !discard.is_empty() {
            if let Err(lost) = acc.discard(&discard) {
                self.lose(&lost);
                return;
            }
            for id in discard {
                self.ids.put(id);
            }
        }
        if all {
            self.groups.sweep();
        }
        crate::telemetry::window_open(&self.name, self.open());
    }

    /// Finishes due windows: builds accumulators that need building, one
    /// `finish` call for all, then the outputs. A window whose accumulator
    /// (or one it is built from) was given up fails alone.
    fn fire(&mut self, acc: &mut impl Accumulators, mut due: Vec<Due>, step: &mut Step) {
        if due.is_empty() {
            return;
        }
        due.sort_by(|a, b| (a.end, a.start, &a.group.key).cmp(&(b.end, b.start, &b.group.key)));
        // The accumulator each window is finished from; `None`: failed.
        let mut ids: Vec<Option<u32>> = Vec::with_capacity(due.len());
        let mut failed: Vec<(&'static str, String)> = Vec::new();
        let mut feed_messages: Vec<Message> = Vec::new();
        let mut feed_targets: Vec<(u32, u32)> = Vec::new();
        let mut temps = Vec::new();
        let mut release_lost = Vec::new();
        for d in &due {
            let lost_input = match &d.source {
                Source::Own(id) => self.ids.lost.get(id).cloned(),
                Source::Merge(ids) => ids.iter().find_map(|id| self.ids.lost.get(id).cloned()),
                Source::Events(_) => None,
            };
            if let Some(why) = lost_input {
                if let Source::Own(id) = d.source {
                    // Released here: make sure the guest holds none of it.
                    release_lost.push(id);
                }
                failed.push(why);
                ids.push(None);
                continue;
            }
            let id = match &d.source {
                Source::Own(id) => *id,
                Source::Merge(sources) => {
                    let fresh = self.ids.take();
                    temps.push(fresh);
                    for &source in sources {
                        if let Err(lost) = acc.merge(fresh, source) {
                            self.lose(&lost);
                            self.fail_windows(due.len(), &lost.reason);
                            return;
                        }
                    }
                    fresh
                }
                Source::Events(events) => {
                    let fresh = self.ids.take();
                    temps.push(fresh);
                    for m in events {
                        feed_targets.push((feed_messages.len() as u32, fresh));
                        feed_messages.push(m.clone());
                    }
                    fresh
                }
            };
            ids.push(Some(id));
        }
        if !feed_targets.is_empty() {
            match acc.accumulate(&feed_messages, &feed_targets) {
                Ok(failures) if !failures.is_empty() => {
                    crate::telemetry::window_failed(
                        &self.name,
                        "rejected",
                        failures.len(),
                        &failures[0].reason,
                    );
                }
                Ok(_) => {}
                Err(lost) => {
                    self.lose(&lost);
                    self.fail_windows(due.len(), &lost.reason);
                    return;
                }
            }
        }
        // Accumulators built above that a trap gave up fail their window.
        self.ids.absorb(acc.take_lost());
        for slot in &mut ids {
            if let Some(id) = *slot
                && let Some(why) = self.ids.lost.get(&id)
            {
                failed.push(why.clone());
                *slot = None;
            }
        }
        let mut requests = Vec::with_capacity(due.len());
        let mut request_due = Vec::with_capacity(due.len());
        for (k, (d, id)) in due.iter().zip(&ids).enumerate() {
            let Some(id) = *id else { continue };
            let payload = format!("{{\"window_start\":{},\"window_end\":{}}}", d.start, d.end);
            let description = Message {
                topic: d.topic.clone(),
                payload: Bytes::from(payload),
                timestamp_ms: d.start,
                qos: 0,
                fields: d.group.fields.clone(),
            };
            requests.push((id, description));
            request_due.push(k);
        }
        // Own accumulators are released by `finish` (or here, when lost);
        // the ids come back.
        if !release_lost.is_empty()
            && let Err(lost) = acc.discard(&release_lost)
        {
            self.lose(&lost);
            self.fail_windows(due.len(), &lost.reason);
            return;
        }
        for d in &due {
            if let Source::Own(id) = d.source {
                self.ids.put(id);
            }
        }
        // A given-up temporary is no longer held by the guest.
        for id in temps {
            self.ids.put(id);
        }
        if !failed.is_empty() {
            self.stats.failed += failed.len() as u64;
            crate::telemetry::window_failed(&self.name, failed[0].0, failed.len(), &failed[0].1);
        }
        let outcome = match acc.finish(requests) {
            Ok(outcome) => outcome,
            Err(lost) => {
                self.lose(&lost);
                self.fail_windows(request_due.len(), &lost.reason);
                return;
            }
        };
        if !outcome.failures.is_empty() {
            let n = outcome.failures.len();
            self.stats.failed += n as u64;
            crate::telemetry::window_failed(
                &self.name,
                outcome.failures[0].kind.as_str(),
                n,
                &outcome.failures[0].reason,
            );
        }
        let mut fired = vec![false; due.len()];
        for out in outcome.outputs {
            let k = request_due[out.input];
            match self.compose(&due[k], out.message) {
                Ok(m) => {
                    fired[k] = true;
                    step.outputs.push(m);
                }
                Err(reason) => {
                    self.stats.failed += 1;
                    crate::telemetry::window_failed(&self.name, "invalid_output", 1, &reason);
                }
            }
        }
        let n = fired.iter().filter(|f| **f).count();
        self.stats.fired += n as u64;
        crate::telemetry::window_fired(&self.name, n);
    }

    /// The window's output: host keys in front of the plugin's object.
    fn compose(&self, d: &Due, plugin: Message) -> Result<Message, String> {
        let text = std::str::from_utf8(&plugin.payload)
            .map_err(|_| "the plugin's result is not UTF-8".to_owned())?
            .trim();
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text).map_err(|e| {
            format!("the plugin's result must be a JSON object of aggregate fields: {e}")
        })?;
        let inner = text[1..text.len() - 1].trim();
        let group = &d.group;
        let mut payload = format!(
            "{{\"window_start\":{},\"window_end\":{},{}",
            d.start, d.end, group.json
        );
        if inner.is_empty() {
            payload.pop();
        } else {
            payload.push_str(inner);
        }
        payload.push('}');
        let start = d.start.to_string();
        let end = d.end.to_string();
        let mut pairs: Vec<(&str, &str)> = group.fields.iter().collect();
        pairs.push(("window_start", &start));
        pairs.push(("window_end", &end));
        Ok(Message {
            topic: plugin.topic,
            payload: Bytes::from(payload),
            timestamp_ms: d.start,
            qos: 0,
            fields: Fields::from_pairs(pairs),
        })
    }

    fn late(&mut self, input: usize, message: &Message, step: &mut Step) {
        self.stats.late += 1;
        crate::telemetry::window_late(&self.name);
        step.late.push((input, message.clone()));
    }

    fn lost_event(&mut self, input: usize, step: &mut Step) {
        step.rejected.push(Rejected {
            input,
            kind: "window_failed",
            reason: LOST_WINDOW.into(),
        });
    }

    fn fail_windows(&mut self, n: usize, reason: &str) {
        self.stats.failed += n as u64;
        crate::telemetry::window_failed(&self.name, "trap", n, reason);
    }

    /// Every accumulator is gone: forget all windows that held one, fail
    /// them, and drop later events for them.
    fn lose(&mut self, lost: &StateLost) {
        let mut failed = 0;
        let mut until = self.lost_until;
        match &mut self.state {
            State::Panes(p) => {
                failed = p.windows.values().filter(|w| !w.fired || w.dirty).count();
                until = until.max(p.windows.keys().map(|k| k.0).max().unwrap_or(i64::MIN));
                p.windows.clear();
                p.panes.clear();
                p.pane_expiry.clear();
            }
            State::Sessions(s, index) => {
                failed = index.len();
                s.clear();
                index.clear();
            }
            State::Counts(c) => {
                failed = c.values().map(|g| g.open.len()).sum();
                c.clear();
            }
            // Sliding windows keep their events in the host: nothing lost
            // but the windows being built.
            State::Sliding(..) => {}
        }
        self.lost_until = until;
        for g in self.groups.info.iter_mut().flatten() {
            if !matches!(self.state, State::Sliding(..)) {
                g.refs = 0;
            }
        }
        self.groups.sweep();
        self.ids = Ids::default();
        self.stats.failed += failed as u64;
        crate::telemetry::window_failed(&self.name, lost.kind.as_str(), failed, &lost.reason);
    }
}

/// Input index of the `k`-th kept event.
fn events_input(events: &[Event], k: usize) -> usize {
    events.get(k).map_or(k, |e| e.input)
}

/// `(window size, pane size)` of tumbling and hopping windows.
fn pane_sizes(kind: &WindowKind) -> (i64, i64) {
    match *kind {
        WindowKind::Tumbling { size_ms } => (size_ms, size_ms),
        WindowKind::Hopping { size_ms, hop_ms } => (size_ms, gcd(size_ms, hop_ms)),
        _ => (1, 1),
    }
}

fn sliding_size(kind: &WindowKind) -> i64 {
    match *kind {
        WindowKind::Sliding { size_ms, .. } => size_ms,
        _ => 1,
    }
}

/// `(accumulator, pane start)` of the panes of window `[start, start +
/// size)` that exist.
fn panes_of(p: &PaneState, gid: u32, start: i64, size: i64, pane: i64) -> Vec<(u32, i64)> {
    (0..size / pane)
        .map(|k| start + k * pane)
        .filter_map(|ps| p.panes.get(&(gid, ps)).map(|pn| (pn.acc, ps)))
        .collect()
}

/// The start of the epoch-aligned slot of length `size` holding `t`.
pub fn align(t: i64, size: i64) -> i64 {
    t - t.rem_euclid(size)
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The value at a dotted path (`a.b.0`).
pub fn lookup<'v>(value: &'v serde_json::Value, path: &str) -> Option<&'v serde_json::Value> {
    path.split('.').try_fold(value, |v, seg| match v {
        serde_json::Value::Object(map) => map.get(seg),
        serde_json::Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

#[cfg(test)]
mod tests;
