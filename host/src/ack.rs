//! At-least-once bookkeeping: when may a source message be acknowledged to
//! the broker?
//!
//! [`track`] starts tracking one source message and returns its first
//! [`AckToken`]. Every output of the message that still has to be delivered
//! holds a token (a clone is one more output to wait for). A token is either
//! [`accept`](AckToken::accept)ed (written, durably buffered, or handed to a
//! dead-letter sink that accepted it) or dropped, which abandons it. When the
//! last token is gone, `on_done` runs exactly once: [`AckOutcome::Accepted`]
//! if every token was accepted, [`AckOutcome::Abandoned`] otherwise (the
//! source then does not acknowledge, and the broker redelivers).
//!
//! Who accepts what: a message a filter drops is accepted by the pipeline at
//! once; a message sent to two sinks carries one clone per sink; a message a
//! sink gives up on is accepted once the dead-letter sink accepted it, or at
//! once with a logged and counted drop when there is none, so a poison
//! message is not redelivered forever.
//!
//! What this module must never do: block, or run `on_done` more than once.
//! `on_done` runs on whichever task drops the last token, so it must be
//! quick (send on a channel, set a flag).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// How a tracked message ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// Every token was accepted: acknowledge the message.
    Accepted,
    /// Some token was dropped unaccepted: do not acknowledge; the broker
    /// will redeliver.
    Abandoned,
}

/// Starts tracking one source message. `on_done` runs exactly once, when the
/// last token is gone.
pub fn track(on_done: impl FnOnce(AckOutcome) + Send + 'static) -> AckToken {
    // One allocation: `on_done` lives inside the shared part.
    AckToken {
        shared: Some(Arc::new(Shared {
            abandoned: AtomicBool::new(false),
            on_done: std::sync::Mutex::new(Some(on_done)),
        })),
    }
}

/// One output of a tracked message that still has to be delivered.
pub struct AckToken {
    /// `None` once accepted, so that `Drop` knows not to abandon.
    shared: Option<Arc<dyn Tracked>>,
}

/// The shared part of a message's tokens, whatever its `on_done`.
trait Tracked: Send + Sync {
    /// Some token was dropped unaccepted.
    fn abandon(&self);
}

struct Shared<F: FnOnce(AckOutcome)> {
    abandoned: AtomicBool,
    /// Only taken in `drop`, through `get_mut`: never locked. The mutex
    /// makes the part `Sync` for a callback that is only `Send`.
    on_done: std::sync::Mutex<Option<F>>,
}

impl<F: FnOnce(AckOutcome) + Send> Tracked for Shared<F> {
    fn abandon(&self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }
}

impl AckToken {
    /// A token that tracks nothing: for messages that need no
    /// acknowledgement (QoS 0, tests, outputs whose token was already
    /// accepted).
    pub fn untracked() -> AckToken {
        AckToken { shared: None }
    }

    /// This output was delivered.
    pub fn accept(mut self) {
        // Dropping the Arc without marking it: if it was the last one,
        // `Shared::drop` reports the outcome.
        self.shared.take();
    }
}

impl Clone for AckToken {
    fn clone(&self) -> Self {
        AckToken {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.abandon();
        }
    }
}

impl<F: FnOnce(AckOutcome)> Drop for Shared<F> {
    fn drop(&mut self) {
        let outcome = if self.abandoned.load(Ordering::Relaxed) {
            AckOutcome::Abandoned
        } else {
            AckOutcome::Accepted
        };
        let on_done = self
            .on_done
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(on_done) = on_done {
            on_done(outcome);
        }
    }
}

impl fmt::Debug for AckToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.shared.is_some() {
            "AckToken"
        } else {
            "AckToken(untracked)"
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn tracked() -> (AckToken, Arc<Mutex<Vec<AckOutcome>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (track(move |o| s.lock().unwrap().push(o)), seen)
    }

    #[test]
    fn one_accepted_token_reports_accepted_once() {
        let (token, seen) = tracked();
        assert!(seen.lock().unwrap().is_empty());
        token.accept();
        assert_eq!(*seen.lock().unwrap(), [AckOutcome::Accepted]);
    }

    #[test]
    fn a_dropped_token_abandons_the_message() {
        let (token, seen) = tracked();
        drop(token);
        assert_eq!(*seen.lock().unwrap(), [AckOutcome::Abandoned]);
    }

    #[test]
    fn the_outcome_waits_for_every_clone() {
        let (token, seen) = tracked();
        let second = token.clone();
        let third = token.clone();
        token.accept();
        second.accept();
        assert!(seen.lock().unwrap().is_empty(), "one output still pending");
        third.accept();
        assert_eq!(*seen.lock().unwrap(), [AckOutcome::Accepted]);
    }

    #[test]
    fn one_abandoned_clone_abandons_the_whole_message() {
        let (token, seen) = tracked();
        let second = token.clone();
        drop(second);
        assert!(seen.lock().unwrap().is_empty());
        token.accept();
        assert_eq!(*seen.lock().unwrap(), [AckOutcome::Abandoned]);
    }

    #[test]
    fn tokens_travel_across_threads() {
        let (token, seen) = tracked();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let t = token.clone();
                std::thread::spawn(move || t.accept())
            })
            .collect();
        token.accept();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(*seen.lock().unwrap(), [AckOutcome::Accepted]);
    }

    #[test]
    fn untracked_tokens_report_nothing() {
        let token = AckToken::untracked();
        let clone = token.clone();
        token.accept();
        drop(clone);
    }
}
