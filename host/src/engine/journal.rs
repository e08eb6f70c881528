//! The record that lets an aggregate plugin's trap cost one window instead
//! of all of them.
//!
//! A trap poisons the guest's `Store`, and with it every accumulator. To
//! rebuild the others, [`super::Aggregator`] keeps, per accumulator, the
//! bytes of its last `snapshot` (the *checkpoint*) and, in order, every
//! call that changed state since (the *journal*). Recovery starts a fresh
//! instance, restores the checkpoint and replays the journal; the call
//! that trapped is then retried one accumulator at a time, so the one that
//! traps is found and given up alone.
//!
//! An accumulator id is reused once released, so the journal speaks of
//! *incarnations*: from an id's first use (or a `restore`) to its release.
//! Giving up an accumulator ([`Journal::give_up`]) drops the rest of its
//! incarnation from the journal and discards it at that point, and does
//! the same to every accumulator a merge fed from it afterwards (their
//! state would be incomplete).
//!
//! What this module must never do: replay a call that the guest did not
//! complete the first time, or hand back an accumulator as lost once its
//! window was released.

use std::collections::HashMap;

use super::FailureKind;
use crate::message::Message;

/// An accumulator whose state is gone: its window produces no output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostAccumulator {
    /// The accumulator.
    pub id: u32,
    /// What happened (trap, deadline, memory cap, …).
    pub kind: FailureKind,
    /// Why, for the operator.
    pub reason: String,
}

/// A call that changed accumulator state.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Op {
    /// Nothing (a call whose every part was given up).
    Nop,
    /// `accumulate`, with only the messages it targeted.
    Accumulate {
        messages: Vec<Message>,
        targets: Vec<(u32, u32)>,
    },
    /// `merge(target, source)`.
    Merge { target: u32, source: u32 },
    /// `finish` or `discard`: the ids are released.
    Release(Vec<u32>),
    /// `restore(id, state)`: a new incarnation with that state.
    Restore { id: u32, state: Vec<u8> },
}

/// One journaled call, and accumulators to discard just before it.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Entry {
    pub(super) discard_first: Vec<u32>,
    pub(super) op: Op,
}

/// Checkpoint plus journal (see the module docs).
#[derive(Debug)]
pub(super) struct Journal {
    /// Off once the plugin refused a snapshot: a trap then loses all.
    pub(super) on: bool,
    /// State of each accumulator at the checkpoint.
    pub(super) saved: HashMap<u32, Vec<u8>>,
    /// Calls since the checkpoint.
    pub(super) entries: Vec<Entry>,
    /// `(message, accumulator)` pairs journaled since the checkpoint.
    pairs: usize,
    /// Accumulators the guest holds, and whether each changed since the
    /// checkpoint.
    pub(super) held: HashMap<u32, bool>,
    /// Given up since the caller last asked.
    lost: Vec<LostAccumulator>,
}

/// Journal size (pairs or entries) below which no checkpoint is taken.
const MIN_JOURNAL: usize = 4096;

/// Journal size per accumulator held at which a checkpoint is taken: the
/// trade between the journal's memory (messages kept) and the cost of
/// snapshots (about 2.7 µs each for `stats`, measured by
/// `cargo bench -p weir --bench windows`).
const PER_ACCUMULATOR: usize = 8;

impl Journal {
    pub(super) fn new() -> Self {
        Journal {
            on: true,
            saved: HashMap::new(),
            entries: Vec::new(),
            pairs: 0,
            held: HashMap::new(),
            lost: Vec::new(),
        }
    }

    /// Records a completed `accumulate` (`targets` index `messages`).
    pub(super) fn accumulate(&mut self, messages: &[Message], targets: &[(u32, u32)]) {
        if !self.on {
            return;
        }
        let mut last = None;
        for &(_, id) in targets {
            // Runs of one accumulator are common (a batch from one device).
            if last != Some(id) {
                self.held.insert(id, true);
                last = Some(id);
            }
        }
        self.pairs += targets.len();
        self.push(Op::Accumulate {
            messages: messages.to_vec(),
            targets: targets.to_vec(),
        });
    }

    /// Records a completed `merge`.
    pub(super) fn merge(&mut self, target: u32, source: u32) {
        if !self.on {
            return;
        }
        self.held.insert(target, true);
        self.push(Op::Merge { target, source });
    }

    /// Records a completed `finish` or `discard`.
    pub(super) fn release(&mut self, ids: &[u32]) {
        if !self.on {
            return;
        }
        for id in ids {
            self.held.remove(id);
        }
        if self.held.is_empty() {
            // Nothing left to rebuild: an empty checkpoint, for free.
            self.saved.clear();
            self.entries.clear();
            self.pairs = 0;
            return;
        }
        self.push(Op::Release(ids.to_vec()));
    }

    /// Records a completed `restore`.
    pub(super) fn restore(&mut self, id: u32, state: &[u8]) {
        if !self.on {
            return;
        }
        self.held.insert(id, true);
        self.push(Op::Restore {
            id,
            state: state.to_vec(),
        });
    }

    fn push(&mut self, op: Op) {
        self.entries.push(Entry {
            discard_first: Vec::new(),
            op,
        });
    }

    /// Whether the journal is long enough to be folded into a checkpoint:
    /// [`PER_ACCUMULATOR`] times the accumulators held, so a checkpoint
    /// costs at most `1 / PER_ACCUMULATOR` of a `snapshot` call per message
    /// journaled.
    pub(super) fn wants_checkpoint(&self) -> bool {
        let limit = MIN_JOURNAL.max(PER_ACCUMULATOR * self.held.len());
        self.on && (self.pairs >= limit || self.entries.len() >= limit)
    }

    /// Accumulators changed since the checkpoint, in id order.
    pub(super) fn dirty(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, dirty)| **dirty)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Makes `snapshots` (of the dirty accumulators) the checkpoint and
    /// empties the journal.
    pub(super) fn checkpoint(&mut self, snapshots: HashMap<u32, Vec<u8>>) {
        let held = &self.held;
        self.saved.retain(|id, _| held.contains_key(id));
        self.saved.extend(snapshots);
        self.entries.clear();
        self.pairs = 0;
        for dirty in self.held.values_mut() {
            *dirty = false;
        }
    }

    /// Stops journaling (the plugin cannot snapshot): forgets everything.
    pub(super) fn turn_off(&mut self) {
        *self = Journal {
            on: false,
            ..Journal::new()
        };
    }

    /// Forgets everything after a total loss (the guest holds nothing).
    pub(super) fn reset(&mut self) {
        let on = self.on;
        *self = Journal {
            on,
            lost: std::mem::take(&mut self.lost),
            ..Journal::new()
        };
    }

    /// Gives up accumulator `id` from entry `at` on (`at` may be the
    /// journal's length: from now on): it is discarded before that entry,
    /// and the rest of its incarnation is dropped, as is every
    /// incarnation a later merge fed from it. Each accumulator whose
    /// incarnation is still running is reported by [`Self::take_lost`].
    pub(super) fn give_up(&mut self, at: usize, id: u32, kind: FailureKind, reason: &str) {
        if at == self.entries.len() {
            self.push(Op::Nop);
        }
        let mut work = vec![(at, id)];
        while let Some((at, id)) = work.pop() {
            self.entries[at].discard_first.push(id);
            let mut released = false;
            for j in at..self.entries.len() {
                let entry = &mut self.entries[j];
                match &mut entry.op {
                    Op::Nop => {}
                    Op::Accumulate { targets, .. } => {
                        targets.retain(|&(_, target)| target != id);
                        if targets.is_empty() {
                            entry.op = Op::Nop;
                        }
                    }
                    Op::Merge { target, .. } if *target == id => entry.op = Op::Nop,
                    Op::Merge { target, source } if *source == id => {
                        // What it merged into is incomplete from here on.
                        // Nothing is ever inserted, so `j` stays valid.
                        work.push((j, *target));
                        entry.op = Op::Nop;
                    }
                    Op::Merge { .. } => {}
                    Op::Release(ids) => {
                        if ids.contains(&id) {
                            ids.retain(|&x| x != id);
                            released = true;
                            break;
                        }
                    }
                    // The failed call itself, when it was this restore.
                    Op::Restore { id: restored, .. } if *restored == id && j == at => {
                        entry.op = Op::Nop;
                    }
                    Op::Restore { id: restored, .. } => {
                        if *restored == id {
                            released = true;
                            break;
                        }
                    }
                }
            }
            if !released {
                self.held.remove(&id);
                self.saved.remove(&id);
                if !self.lost.iter().any(|l| l.id == id) {
                    self.lost.push(LostAccumulator {
                        id,
                        kind,
                        reason: reason.to_owned(),
                    });
                }
            }
        }
    }

    /// Splits entry `at`, an `accumulate` over several accumulators, into
    /// one entry per accumulator (in order of first target). Returns
    /// whether it did.
    pub(super) fn split(&mut self, at: usize) -> bool {
        let Op::Accumulate { messages, targets } = &self.entries[at].op else {
            return false;
        };
        let parts = by_accumulator(targets);
        if parts.len() < 2 {
            return false;
        }
        let messages = messages.clone();
        let discard_first = std::mem::take(&mut self.entries[at].discard_first);
        let mut replacement: Vec<Entry> = parts
            .into_iter()
            .map(|(_, targets)| Entry {
                discard_first: Vec::new(),
                op: Op::Accumulate {
                    messages: messages.clone(),
                    targets,
                },
            })
            .collect();
        replacement[0].discard_first = discard_first;
        self.entries.splice(at..=at, replacement);
        true
    }

    /// The accumulators given up since the last call.
    pub(super) fn take_lost(&mut self) -> Vec<LostAccumulator> {
        std::mem::take(&mut self.lost)
    }
}

/// `targets` grouped by accumulator, in order of first appearance.
pub(super) fn by_accumulator(targets: &[(u32, u32)]) -> Vec<(u32, Vec<(u32, u32)>)> {
    let mut parts: Vec<(u32, Vec<(u32, u32)>)> = Vec::new();
    for &(m, id) in targets {
        match parts.iter_mut().find(|(x, _)| *x == id) {
            Some((_, list)) => list.push((m, id)),
            None => parts.push((id, vec![(m, id)])),
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(v: i64) -> Message {
        Message::new("t", format!("{{\"v\":{v}}}"), v)
    }

    fn lost_ids(j: &mut Journal) -> Vec<u32> {
        let mut ids: Vec<u32> = j.take_lost().into_iter().map(|l| l.id).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn an_accumulate_is_kept_with_its_messages_and_marks_its_targets_dirty() {
        let mut j = Journal::new();
        let ms: Vec<Message> = (0..4).map(message).collect();
        j.accumulate(&ms, &[(1, 7), (3, 7), (3, 8)]);
        let Op::Accumulate { messages, targets } = &j.entries[0].op else {
            panic!("{:?}", j.entries)
        };
        assert_eq!(messages, &ms);
        assert_eq!(targets, &vec![(1, 7), (3, 7), (3, 8)]);
        assert_eq!(j.dirty(), vec![7, 8]);
    }

    #[test]
    fn giving_up_drops_the_rest_of_the_incarnation_and_what_merged_from_it() {
        let mut j = Journal::new();
        let ms = vec![message(1)];
        j.accumulate(&ms, &[(0, 1), (0, 2)]); // 0
        j.merge(3, 1); // 1: 3 fed from 1
        j.accumulate(&ms, &[(0, 1)]); // 2
        j.merge(4, 2); // 3: unaffected
        j.give_up(1, 1, FailureKind::Trap, "boom");
        assert_eq!(j.entries[1].discard_first, vec![1, 3]);
        assert_eq!(j.entries[1].op, Op::Nop);
        assert_eq!(j.entries[2].op, Op::Nop);
        assert_eq!(
            j.entries[3].op,
            Op::Merge {
                target: 4,
                source: 2
            }
        );
        // 1 and the accumulator merged from it are lost; 2 and 4 are not.
        assert_eq!(lost_ids(&mut j), vec![1, 3]);
        assert!(!j.held.contains_key(&1));
    }

    #[test]
    fn a_merge_from_a_given_up_accumulator_loses_the_target_too() {
        let mut j = Journal::new();
        let ms = vec![message(1)];
        j.accumulate(&ms, &[(0, 1)]); // 0
        j.accumulate(&ms, &[(0, 2)]); // 1
        j.merge(2, 1); // 2
        j.give_up(1, 1, FailureKind::Trap, "boom");
        assert_eq!(j.entries[2].op, Op::Nop);
        assert_eq!(j.entries[2].discard_first, vec![2]);
        assert_eq!(lost_ids(&mut j), vec![1, 2]);
    }

    #[test]
    fn a_released_incarnation_is_not_reported_and_a_reused_id_is_kept() {
        let mut j = Journal::new();
        let ms = vec![message(1)];
        j.accumulate(&ms, &[(0, 1), (0, 2)]); // 0
        j.release(&[1]); // 1: finished
        j.accumulate(&ms, &[(0, 1)]); // 2: the id reused
        j.give_up(0, 1, FailureKind::Trap, "boom");
        assert_eq!(
            j.entries[0].op,
            Op::Accumulate {
                messages: ms.clone(),
                targets: vec![(0, 2)]
            }
        );
        assert_eq!(j.entries[1].op, Op::Release(vec![]));
        assert_eq!(
            j.entries[2].op,
            Op::Accumulate {
                messages: ms.clone(),
                targets: vec![(0, 1)]
            }
        );
        assert!(lost_ids(&mut j).is_empty());
        assert!(j.held.contains_key(&1));
    }

    #[test]
    fn split_makes_one_entry_per_accumulator() {
        let mut j = Journal::new();
        let ms = vec![message(1), message(2)];
        j.accumulate(&ms, &[(0, 5), (1, 6), (1, 5)]);
        j.entries[0].discard_first.push(9);
        assert!(j.split(0));
        assert_eq!(j.entries.len(), 2);
        assert_eq!(j.entries[0].discard_first, vec![9]);
        let targets: Vec<_> = j
            .entries
            .iter()
            .map(|e| match &e.op {
                Op::Accumulate { targets, .. } => targets.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(targets, vec![vec![(0, 5), (1, 5)], vec![(1, 6)]]);
        assert!(!j.split(0));
    }

    #[test]
    fn a_checkpoint_keeps_snapshots_of_held_accumulators_only() {
        let mut j = Journal::new();
        let ms = vec![message(1)];
        j.accumulate(&ms, &[(0, 1), (0, 2)]);
        j.checkpoint(HashMap::from([(1, b"a".to_vec()), (2, b"b".to_vec())]));
        j.release(&[1]);
        j.accumulate(&ms, &[(0, 3)]);
        assert_eq!(j.dirty(), vec![3]);
        j.checkpoint(HashMap::from([(3, b"c".to_vec())]));
        let mut saved: Vec<_> = j.saved.keys().copied().collect();
        saved.sort_unstable();
        assert_eq!(saved, vec![2, 3]);
        assert!(j.entries.is_empty());
    }

    #[test]
    fn releasing_the_last_accumulator_empties_the_journal() {
        let mut j = Journal::new();
        let ms = vec![message(1)];
        j.accumulate(&ms, &[(0, 1), (0, 2)]);
        j.checkpoint(HashMap::from([(1, b"a".to_vec()), (2, b"b".to_vec())]));
        j.accumulate(&ms, &[(0, 2)]);
        j.release(&[1]);
        assert_eq!(j.entries.len(), 2);
        j.release(&[2]);
        assert!(j.entries.is_empty() && j.saved.is_empty() && j.held.is_empty());
    }
}
