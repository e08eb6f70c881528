//! Unit tests of window assignment on a manual clock, with a native
//! accumulator that records every call (the golden files in `tests/windows`
//! run the same operator over a real aggregate plugin).

use std::collections::HashMap;

use super::*;
use crate::engine::{FailureKind, Output};

/// Accumulators as lists of the `v` values fed to them; `finish` answers
/// `{"vs": [...]}` sorted, so results are easy to read.
#[derive(Default)]
struct Recorder {
    accs: HashMap<u32, Vec<i64>>,
    merges: usize,
    /// Fail the next call with a trap.
    trap_next: bool,
}

impl Recorder {
    fn trap(&mut self) -> Result<(), StateLost> {
        if std::mem::take(&mut self.trap_next) {
            self.accs.clear();
            return Err(StateLost {
                kind: FailureKind::Trap,
                reason: "boom".into(),
            });
        }
        Ok(())
    }
}

impl Accumulators for Recorder {
    fn accumulate(
        &mut self,
        messages: &[Message],
        targets: &[(u32, u32)],
    ) -> Result<Vec<Failure>, StateLost> {
        self.trap()?;
        for &(m, id) in targets {
            let v: serde_json::Value =
                serde_json::from_slice(&messages[m as usize].payload).unwrap();
            self.accs
                .entry(id)
                .or_default()
                .push(v["v"].as_i64().unwrap());
        }
        Ok(Vec::new())
    }
    fn merge(&mut self, target: u32, source: u32) -> Result<(), StateLost> {
        self.trap()?;
        self.merges += 1;
        let from = self.accs.get(&source).cloned().unwrap_or_default();
        self.accs.entry(target).or_default().extend(from);
        Ok(())
    }
    fn finish(&mut self, windows: Vec<(u32, Message)>) -> Result<BatchOutcome, StateLost> {
        self.trap()?;
        let mut outcome = BatchOutcome::default();
        for (input, (id, mut m)) in windows.into_iter().enumerate() {
            let mut vs = self.accs.remove(&id).unwrap_or_default();
            vs.sort_unstable();
            m.payload = serde_json::json!({ "vs": vs }).to_string().into();
            outcome.outputs.push(Output { input, message: m });
        }
        Ok(outcome)
    }
    fn discard(&mut self, ids: &[u32]) -> Result<(), StateLost> {
        self.trap()?;
        for id in ids {
            self.accs.remove(id);
        }
        Ok(())
    }
}

fn spec(kind: WindowKind) -> WindowSpec {
    WindowSpec {
        kind,
        group_by: vec!["device".into()],
        time: TimeSource::Processing,
        max_out_of_orderness_ms: 0,
        allowed_lateness_ms: 0,
        idle_timeout_ms: None,
        max_open: DEFAULT_MAX_OPEN,
        on_full: FullPolicy::EmitOldest,
        late_to: None,
    }
}

fn msg(device: &str, v: i64) -> Message {
    let mut m = Message::new(format!("d/{device}"), format!("{{\"v\":{v}}}"), 0);
    m.fields = Fields::from_pairs([("device", device)]);
    m
}

/// `(window_start, window_end, device, vs)` of each output.
fn results(step: &Step) -> Vec<(i64, i64, String, Vec<i64>)> {
    step.outputs
        .iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            (
                v["window_start"].as_i64().unwrap(),
                v["window_end"].as_i64().unwrap(),
                v["device"].as_str().unwrap().to_owned(),
                v["vs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn time_windows_align_to_the_epoch_also_before_it() {
    assert_eq!(align(12_345, 10_000), 10_000);
    assert_eq!(align(10_000, 10_000), 10_000);
    assert_eq!(align(9_999, 10_000), 0);
    assert_eq!(align(-1, 10_000), -10_000);
    assert_eq!(gcd(10_000, 4_000), 2_000);
}

#[test]
fn a_window_closes_exactly_when_the_clock_reaches_its_end() {
    let clock = ManualClock::new(20_500);
    let mut op = WindowOperator::new(
        "t",
        spec(WindowKind::Tumbling { size_ms: 10_000 }),
        Arc::new(clock.clone()),
    );
    let mut acc = Recorder::default();
    op.process(&mut acc, vec![msg("a", 1), msg("b", 2), msg("a", 3)]);
    clock.set(29_999);
    assert!(op.tick(&mut acc).outputs.is_empty());
    clock.set(30_000);
    let step = op.tick(&mut acc);
    assert_eq!(
        results(&step),
        [
            (20_000, 30_000, "a".into(), vec![1, 3]),
            (20_000, 30_000, "b".into(), vec![2])
        ]
    );
    // The output carries the group and window as fields, and starts at the window.
    let m = &step.outputs[0];
    assert_eq!(m.fields.get("device"), Some("a"));
    assert_eq!(m.fields.get("window_end"), Some("30000"));
    assert_eq!((m.timestamp_ms, &*m.topic), (20_000, "d/a"));
    assert_eq!((op.open(), op.groups()), (0, 0), "nothing is kept");
    assert!(acc.accs.is_empty(), "every accumulator was released");
}

#[test]
fn at_the_cap_emit_oldest_finishes_the_oldest_window_early() {
    let clock = ManualClock::new(1_000);
    let mut s = spec(WindowKind::Tumbling { size_ms: 10_000 });
    s.max_open = 2;
    let mut op = WindowOperator::new("t", s, Arc::new(clock.clone()));
    let mut acc = Recorder::default();
    op.process(&mut acc, vec![msg("a", 1), msg("b", 2)]);
    let step = op.process(&mut acc, vec![msg("c", 3)]);
    assert_eq!(results(&step), [(0, 10_000, "a".into(), vec![1])]);
    assert_eq!((op.open(), op.stats().full), (2, 1));
    clock.set(10_000);
    let step = op.tick(&mut acc);
    assert_eq!(results(&step).len(), 2, "b and c");
}

#[test]
fn hopping_windows_fold_each_event_once_and_merge_panes() {
    let clock = ManualClock::new(0);
    let mut op = WindowOperator::new(
        "t",
        spec(WindowKind::Hopping {
            size_ms: 3_000,
            hop_ms: 1_000,
        }),
        Arc::new(clock.clone()),
    );
    let mut acc = Recorder::default();
    let mut got = Vec::new();
    for (at, v) in [(500, 1), (1_500, 2), (2_500, 3)] {
        clock.set(at);
        got.extend(results(&op.process(&mut acc, vec![msg("a", v)])));
    }
    clock.set(5_000);
    got.extend(results(&op.tick(&mut acc)));
    assert_eq!(
        acc.merges, 9,
        "each window merges its panes: 1 + 2 + 3 + 2 + 1"
    );
    assert_eq!(
        got,
        [
            (-2_000, 1_000, "a".into(), vec![1]),
            (-1_000, 2_000, "a".into(), vec![1, 2]),
            (0, 3_000, "a".into(), vec![1, 2, 3]),
            (1_000, 4_000, "a".into(), vec![2, 3]),
            (2_000, 5_000, "a".into(), vec![3]),
        ]
    );
    assert!(acc.accs.is_empty(), "panes and windows released");
}

#[test]
fn a_lost_instance_fails_the_open_windows_and_later_events_for_them() {
    let clock = ManualClock::new(1_000);
    let mut op = WindowOperator::new(
        "t",
        spec(WindowKind::Tumbling { size_ms: 10_000 }),
        Arc::new(clock.clone()),
    );
    let mut acc = Recorder::default();
    op.process(&mut acc, vec![msg("a", 1)]);
    acc.trap_next = true;
    let step = op.process(&mut acc, vec![msg("b", 2)]);
    assert_eq!(step.rejected[0].kind, "trap");
    assert_eq!(
        op.stats().failed,
        2,
        "a's window, and b's opened by the failed batch"
    );
    let step = op.process(&mut acc, vec![msg("a", 3)]);
    assert_eq!(step.rejected[0].kind, "window_failed");
    clock.set(10_500);
    op.process(&mut acc, vec![msg("a", 4)]);
    clock.set(20_000);
    assert_eq!(
        results(&op.tick(&mut acc)),
        [(10_000, 20_000, "a".into(), vec![4])]
    );
}

#[test]
fn triggers_compare_numbers_strings_and_booleans() {
    let t = |op, value| Trigger {
        field: "a.b".into(),
        op,
        value,
    };
    let p = serde_json::json!({"a": {"b": 31}});
    assert!(t(CompareOp::Gt, 30.into()).matches(Some(&p)));
    assert!(!t(CompareOp::Gt, 31.into()).matches(Some(&p)));
    assert!(t(CompareOp::Ge, 31.into()).matches(Some(&p)));
    assert!(t(CompareOp::Ne, "x".into()).matches(Some(&p)));
    assert!(!t(CompareOp::Eq, "31".into()).matches(Some(&p)));
    let s = serde_json::json!({"a": {"b": "on"}});
    assert!(t(CompareOp::Eq, "on".into()).matches(Some(&s)));
    assert!(!t(CompareOp::Lt, 5.into()).matches(Some(&s)));
    assert!(!t(CompareOp::Gt, 0.into()).matches(None));
}

#[test]
fn flush_finishes_every_open_window_and_forgets_everything() {
    let clock = ManualClock::new(0);
    let mut op = WindowOperator::new(
        "t",
        spec(WindowKind::Session {
            gap_ms: 1_000,
            max_length_ms: None,
        }),
        Arc::new(clock.clone()),
    );
    let mut acc = Recorder::default();
    op.process(&mut acc, vec![msg("a", 1), msg("b", 2)]);
    clock.set(500);
    op.process(&mut acc, vec![msg("a", 3)]);
    let step = op.flush(&mut acc);
    assert_eq!(
        results(&step),
        [
            (0, 1_500, "a".into(), vec![1, 3]),
            (0, 1_000, "b".into(), vec![2])
        ]
        .into_iter()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
    );
    assert_eq!((op.open(), op.groups()), (0, 0));
}

#[test]
fn a_late_event_within_the_lateness_finishes_the_sliding_windows_holding_it_again() {
    let clock = ManualClock::new(0);
    let mut spec = spec(WindowKind::Sliding {
        size_ms: 5_000,
        trigger: None,
    });
    spec.time = TimeSource::Event {
        field: "ts".into(),
        format: TimeFormat::Ms,
    };
    spec.allowed_lateness_ms = 10_000;
    let mut op = WindowOperator::new("t", spec, Arc::new(clock));
    let mut acc = Recorder::default();
    let at = |ts: i64, v: i64| {
        let mut m = Message::new("d/a", format!("{{\"ts\":{ts},\"v\":{v}}}"), 0);
        m.fields = Fields::from_pairs([("device", "a")]);
        m
    };
    let a = "a".to_owned();
    let step = op.process(&mut acc, vec![at(1_000, 1), at(3_000, 3)]);
    assert_eq!(results(&step), vec![(-4_000, 1_000, a.clone(), vec![1])]);
    let step = op.process(&mut acc, vec![at(4_000, 4)]);
    assert_eq!(results(&step), vec![(-2_000, 3_000, a.clone(), vec![1, 3])]);
    // Behind the watermark (4 s) but within the lateness: its own window,
    // and the finished window ending at 3 s again, with it. The window
    // ending at 1 s does not hold it.
    let step = op.process(&mut acc, vec![at(2_000, 2)]);
    assert_eq!(
        results(&step),
        vec![
            (-3_000, 2_000, a.clone(), vec![1, 2]),
            (-2_000, 3_000, a.clone(), vec![1, 2, 3]),
        ]
    );
    // Past the lateness of the window ending at 3 s (13 s): final.
    let step = op.process(&mut acc, vec![at(13_500, 9)]);
    assert_eq!(
        results(&step),
        vec![(-1_000, 4_000, a.clone(), vec![1, 2, 3, 4])]
    );
    // The window ending at 4 s is still within its lateness (14 s): it
    // takes a late event at 3 s.
    let step = op.process(&mut acc, vec![at(3_500, 5)]);
    assert!(results(&step).contains(&(-1_000, 4_000, a.clone(), vec![1, 2, 3, 4, 5])));
    // Past every window's lateness: late, nothing finished again.
    op.process(&mut acc, vec![at(20_000, 9)]);
    let step = op.process(&mut acc, vec![at(3_600, 6)]);
    assert!(results(&step).is_empty(), "{:?}", results(&step));
    assert_eq!(step.late.len(), 1);
}
