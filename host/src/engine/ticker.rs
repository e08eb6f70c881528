//! The epoch ticker: advances the engine's epoch when a guest call has run
//! past its deadline (the CPU deadline), and otherwise sleeps.
//!
//! Every entry into guest code holds an [`Awake`] from [`Ticker::enter`],
//! which records when that call is due. The ticker sleeps until the
//! earliest due call in flight, or, with none, for the shortest deadline
//! any call has had (a call that starts meanwhile cannot be due before the
//! ticker wakes); a call due before the ticker's next wake-up wakes it. When
//! it finds a call past its due time it advances the epoch. Each store
//! watches for that with a callback (set up in `instance::new_store`) that
//! interrupts its guest only if its own call is the one past due; the others
//! carry on. So a call is interrupted at its deadline (within the timer's
//! slack), and calls that end in time cost no wake-up: under a steady
//! stream of batches the thread wakes once per shortest deadline (1 s by
//! default) instead of on a fixed short tick.
//!
//! With no guest call for [`PARK_AFTER`] it parks, so an idle weir makes no
//! wake-ups at all (a gateway's CPU can stay in its low-power state); the
//! next call wakes it.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// How long the ticker keeps watching after the last guest call ended
/// before it parks.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// How soon the ticker advances the epoch again while a call it found past
/// due is still running (its guest may be inside a host call, where the
/// epoch is not checked).
const AGAIN_AFTER: Duration = Duration::from_millis(5);

/// The longest the ticker sleeps at once while it is not parked.
const LONGEST_SLEEP: Duration = Duration::from_secs(60);

/// The handle the engine keeps; cheap to clone. Stops the thread when the
/// last clone is dropped.
#[derive(Clone)]
pub(super) struct Ticker {
    shared: Arc<Shared>,
    _stop: Arc<StopOnDrop>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    /// Guest calls in flight: (call id, when it is due).
    running: Vec<(u64, Instant)>,
    /// Guest calls started, ever: the id of the next, and tells the ticker
    /// a call came and went while it slept.
    started: u64,
    /// The shortest deadline of any call so far: how long the ticker may
    /// sleep with no call in flight.
    shortest: Duration,
    /// When the ticker wakes next; `None` while it is parked (or has not
    /// gone to sleep yet).
    wake_at: Option<Instant>,
    parked: bool,
    stop: bool,
}

struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.lock().stop = true;
        self.0.wake.notify_one();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain data, consistent after any panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Proof that the ticker watches a call; held across one entry into guest
/// code.
pub(super) struct Awake {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Awake {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if let Some(i) = state.running.iter().position(|(id, _)| *id == self.id) {
            state.running.swap_remove(i);
        }
    }
}

impl Ticker {
    /// Starts the thread: `tick` advances the epoch; the thread parks after
    /// `park_after` with no guest call.
    pub(super) fn start(
        tick: impl Fn() + Send + 'static,
        park_after: Duration,
    ) -> anyhow::Result<Ticker> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                running: Vec::new(),
                started: 0,
                shortest: park_after,
                wake_at: None,
                parked: false,
                stop: false,
            }),
            wake: Condvar::new(),
        });
        let thread = shared.clone();
        std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || run(&thread, &tick, park_after))
            .context("cannot start the epoch ticker thread")?;
        Ok(Ticker {
            _stop: Arc::new(StopOnDrop(shared.clone())),
            shared,
        })
    }

    /// Watches a guest call that started now with `deadline`, due at
    /// `due`, until the guard drops; wakes the ticker if it would sleep
    /// past `due`.
    pub(super) fn enter(&self, deadline: Duration, due: Instant) -> Awake {
        let mut state = self.shared.lock();
        let id = state.started;
        state.started = state.started.wrapping_add(1);
        state.running.push((id, due));
        state.shortest = state.shortest.min(deadline);
        if state.parked || state.wake_at.is_some_and(|at| due < at) {
            state.parked = false;
            self.shared.wake.notify_one();
        }
        Awake {
            shared: self.shared.clone(),
            id,
        }
    }

    /// Whether the ticker sleeps until the next guest call.
    pub(super) fn is_parked(&self) -> bool {
        self.shared.lock().parked
    }
}

fn run(shared: &Shared, tick: &dyn Fn(), park_after: Duration) {
    let mut state = shared.lock();
    let mut seen = state.started;
    let mut active_at = Instant::now();
    loop {
        if state.stop {
            return;
        }
        let now = Instant::now();
        if state.running.iter().any(|&(_, due)| due <= now) {
            tick();
        }
        if !state.running.is_empty() || state.started != seen {
            seen = state.started;
            active_at = now;
        } else if now.saturating_duration_since(active_at) >= park_after {
            state.parked = true;
            state.wake_at = None;
            while state.parked && !state.stop {
                state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            seen = state.started;
            active_at = Instant::now();
            continue;
        }
        // A call that starts from now on is due no sooner than `shortest`
        // from now; one that comes with a shorter deadline wakes the ticker.
        let sleep = (state.running.iter())
            .map(|&(_, due)| match due.checked_duration_since(now) {
                Some(left) if !left.is_zero() => left,
                _ => AGAIN_AFTER,
            })
            .fold(state.shortest, Duration::min)
            .min(LONGEST_SLEEP);
        state.wake_at = Some(now + sleep);
        state = (shared.wake.wait_timeout(state, sleep))
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A ticker whose ticks are counted.
    fn counted(park_after: Duration) -> (Ticker, impl Fn() -> u64) {
        let count = Arc::new(AtomicU64::new(0));
        let ticks = count.clone();
        let ticker = Ticker::start(
            move || {
                ticks.fetch_add(1, Ordering::Relaxed);
            },
            park_after,
        )
        .unwrap();
        (ticker, move || count.load(Ordering::Relaxed))
    }

    /// Enters a call with `deadline`, due from now.
    fn enter(ticker: &Ticker, deadline: Duration) -> Awake {
        ticker.enter(deadline, Instant::now() + deadline)
    }

    /// Waits for `what` to hold; a hang guard, not a timing assertion.
    fn until(what: &str, f: impl Fn() -> bool) {
        let started = Instant::now();
        while !f() {
            assert!(started.elapsed() < Duration::from_secs(20), "never: {what}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_call_past_its_deadline_gets_a_tick_and_not_before() {
        let (ticker, ticks) = counted(Duration::from_secs(60));
        let deadline = 50 * MS;
        let started = Instant::now();
        let awake = enter(&ticker, deadline);
        until("a tick for the overdue call", || ticks() >= 1);
        assert!(started.elapsed() >= deadline, "ticked before the deadline");
        // Still running (a guest inside a host call): ticked again.
        until("another tick", || ticks() >= 2);
        drop(awake);
    }

    #[test]
    fn calls_that_end_in_time_cost_no_tick() {
        let (ticker, ticks) = counted(Duration::from_secs(60));
        let started = Instant::now();
        while started.elapsed() < 200 * MS {
            drop(enter(&ticker, Duration::from_secs(2)));
            std::thread::sleep(MS);
        }
        // Every call ended long before its 2 s: nothing was due.
        std::thread::sleep(50 * MS);
        assert_eq!(ticks(), 0);
    }

    #[test]
    fn a_call_due_before_the_ticker_wakes_wakes_it() {
        let (ticker, ticks) = counted(Duration::from_secs(60));
        // The ticker now sleeps for up to a minute between looks.
        drop(enter(&ticker, Duration::from_secs(60)));
        std::thread::sleep(20 * MS);
        let started = Instant::now();
        let _awake = enter(&ticker, 30 * MS);
        until("a tick for the short call", || ticks() >= 1);
        assert!(started.elapsed() >= 30 * MS);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the ticker slept on"
        );
    }

    #[test]
    fn it_parks_when_idle_and_watches_again_for_the_next_call() {
        let (ticker, ticks) = counted(20 * MS);
        until("parked after 20 idle ms", || ticker.is_parked());
        let awake = enter(&ticker, 10 * MS);
        assert!(!ticker.is_parked());
        until("a tick for the call", || ticks() >= 1);
        // A call in flight keeps it awake, however long.
        std::thread::sleep(50 * MS);
        assert!(!ticker.is_parked());
        drop(awake);
        until("parked again", || ticker.is_parked());
    }

    #[test]
    fn a_call_that_came_and_went_while_it_slept_keeps_it_awake() {
        let (ticker, _) = counted(200 * MS);
        // Short calls, never one in flight when it looks: the count of
        // calls started still tells the ticker it is not idle.
        let started = Instant::now();
        while started.elapsed() < 500 * MS {
            drop(enter(&ticker, 10 * MS));
            assert!(!ticker.is_parked(), "parked between short calls");
            std::thread::sleep(MS);
        }
        until("parked once the calls stop", || ticker.is_parked());
    }

    #[test]
    fn dropping_the_ticker_stops_its_thread_even_while_parked() {
        let (ticker, _) = counted(2 * MS);
        until("parked", || ticker.is_parked());
        let shared = Arc::downgrade(&ticker.shared);
        drop(ticker);
        // The thread holds the last strong reference until it returns.
        until("thread gone", || shared.strong_count() == 0);
    }
}
