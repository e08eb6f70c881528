//! The epoch ticker: advances the engine's epoch, which bounds every guest
//! call (the CPU deadline), while guest code may be running — and sleeps
//! once none has run for [`PARK_AFTER`], so that an idle weir makes no
//! wake-ups at all (a gateway's CPU can stay in its low-power state).
//!
//! Every entry into guest code holds an [`Awake`] from [`Ticker::enter`];
//! the first one after a quiet spell wakes the ticker. A call's deadline is
//! counted in ticks from the epoch at its start, and the epoch only stands
//! still while no call is in flight, so a parked ticker never lengthens a
//! deadline.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;

/// How long the ticker keeps ticking after the last guest call ended. Long
/// enough that a pipeline under load (a call per batch) never parks it.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

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

#[derive(Default)]
struct State {
    /// Guest calls in flight.
    running: usize,
    /// Guest calls started, ever: tells the ticker a call came and went
    /// between two of its ticks.
    started: u64,
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
        // The state is plain counters, consistent after any panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Proof that the ticker is running; held across one entry into guest
/// code.
pub(super) struct Awake {
    shared: Arc<Shared>,
}

impl Drop for Awake {
    fn drop(&mut self) {
        self.shared.lock().running -= 1;
    }
}

impl Ticker {
    /// Starts the thread: `tick` every `every`, parking after `park_after`
    /// with no guest call.
    pub(super) fn start(
        tick: impl Fn() + Send + 'static,
        every: Duration,
        park_after: Duration,
    ) -> anyhow::Result<Ticker> {
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            wake: Condvar::new(),
        });
        let idle_limit = (park_after.as_nanos() / every.as_nanos().max(1)).max(1);
        let thread = shared.clone();
        std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || run(&thread, &tick, every, idle_limit))
            .context("cannot start the epoch ticker thread")?;
        Ok(Ticker {
            _stop: Arc::new(StopOnDrop(shared.clone())),
            shared,
        })
    }

    /// Marks a guest call as running until the guard drops, waking the
    /// ticker if it sleeps.
    pub(super) fn enter(&self) -> Awake {
        let mut state = self.shared.lock();
        state.running += 1;
        state.started = state.started.wrapping_add(1);
        if state.parked {
            state.parked = false;
            self.shared.wake.notify_one();
        }
        Awake {
            shared: self.shared.clone(),
        }
    }

    /// Whether the ticker sleeps until the next guest call.
    pub(super) fn is_parked(&self) -> bool {
        self.shared.lock().parked
    }
}

fn run(shared: &Shared, tick: &dyn Fn(), every: Duration, idle_limit: u128) {
    let mut seen = 0;
    let mut idle = 0;
    loop {
        std::thread::sleep(every);
        tick();
        let mut state = shared.lock();
        if state.stop {
            return;
        }
        if state.running > 0 || state.started != seen {
            seen = state.started;
            idle = 0;
            continue;
        }
        idle += 1;
        if idle < idle_limit {
            continue;
        }
        state.parked = true;
        while state.parked && !state.stop {
            state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if state.stop {
            return;
        }
        seen = state.started;
        idle = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    use super::*;

    const EVERY: Duration = Duration::from_millis(1);

    /// A ticker whose ticks are counted.
    fn counted(park_after: Duration) -> (Ticker, impl Fn() -> u64) {
        let count = Arc::new(AtomicU64::new(0));
        let ticks = count.clone();
        let ticker = Ticker::start(
            move || {
                ticks.fetch_add(1, Ordering::Relaxed);
            },
            EVERY,
            park_after,
        )
        .unwrap();
        (ticker, move || count.load(Ordering::Relaxed))
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
    fn it_parks_when_idle_and_ticks_again_for_the_next_call() {
        let (ticker, ticks) = counted(5 * EVERY);
        until("parked after 5 idle ticks", || ticker.is_parked());
        let parked_at = ticks();
        // A parked ticker makes no ticks: 50 would have passed.
        std::thread::sleep(50 * EVERY);
        assert_eq!(ticks(), parked_at);

        let awake = ticker.enter();
        assert!(!ticker.is_parked());
        until("ticking again", || ticks() >= parked_at + 20);
        // 20 ticks with a call in flight, 5 allowed idle: still awake.
        assert!(!ticker.is_parked());

        drop(awake);
        until("parked again", || ticker.is_parked());
    }

    #[test]
    fn a_call_that_came_and_went_between_two_ticks_keeps_it_awake() {
        let ticker = Ticker::start(|| {}, EVERY, 200 * EVERY).unwrap();
        // Short calls, never one at a tick: the count of calls started
        // still tells the ticker it is not idle.
        let started = Instant::now();
        while started.elapsed() < 100 * EVERY {
            drop(ticker.enter());
            assert!(!ticker.is_parked(), "parked between short calls");
            std::thread::sleep(EVERY / 4);
        }
        until("parked once the calls stop", || ticker.is_parked());
    }

    #[test]
    fn dropping_the_ticker_stops_its_thread_even_while_parked() {
        let ticker = Ticker::start(|| {}, EVERY, 2 * EVERY).unwrap();
        until("parked", || ticker.is_parked());
        let shared = Arc::downgrade(&ticker.shared);
        drop(ticker);
        // The thread holds the last strong reference until it returns.
        until("thread gone", || shared.strong_count() == 0);
    }
}
