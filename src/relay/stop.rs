//! One way to stop the relay's threads, whoever asks: the caller (a signal), or one of the
//! threads failing or panicking, which must stop the others rather than leave the bridge half
//! running. mini-redis's `Shutdown`, without async: every thread here blocks, so it is a flag
//! each loop checks, not a channel.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How long [`Stop::sleep`] sleeps between looks at the flags.
const LOOK_EVERY: Duration = Duration::from_millis(100);

pub struct Stop<'a> {
    /// Set from outside: a signal, the demo, a test.
    shutdown: &'a AtomicBool,
    /// Set by a thread of the relay that failed or panicked.
    failed: AtomicBool,
    /// A part of the relay that runs for a while only (a Rush lane leaving broken routes out
    /// checks them again then).
    deadline: Option<Instant>,
    /// A part of the relay that must start again when a counter moves (the return path when
    /// an environment's topics appear), and the value it started at.
    watched: Option<(&'a AtomicU64, u64)>,
}

impl<'a> Stop<'a> {
    pub fn new(shutdown: &'a AtomicBool) -> Self {
        Self { shutdown, failed: AtomicBool::new(false), deadline: None, watched: None }
    }

    /// The same stop, that also asks to wind down at `deadline`.
    pub fn until(&self, deadline: Instant) -> Stop<'a> {
        Stop { deadline: Some(deadline), ..self.child() }
    }

    /// The same stop, that also asks to wind down once `counter` moves from its value now.
    pub fn until_changed(&self, counter: &'a AtomicU64) -> Stop<'a> {
        Stop { watched: Some((counter, counter.load(Relaxed))), ..self.child() }
    }

    fn child(&self) -> Stop<'a> {
        Stop {
            shutdown: self.shutdown,
            failed: AtomicBool::new(self.failed.load(Relaxed)),
            deadline: self.deadline,
            watched: self.watched,
        }
    }

    /// Whether every loop should wind down now.
    pub fn requested(&self) -> bool {
        self.shutdown.load(Relaxed)
            || self.failed.load(Relaxed)
            || self.deadline.is_some_and(|d| Instant::now() >= d)
            || self.watched.is_some_and(|(c, at)| c.load(Relaxed) != at)
    }

    /// A thread failed: the others stop too.
    pub fn fail(&self) {
        self.failed.store(true, Relaxed);
    }

    /// Stops the others if the thread holding the guard unwinds (a panic), where no error
    /// value could do it.
    pub fn on_panic(&self) -> PanicGuard<'_, 'a> {
        PanicGuard(self)
    }

    /// Sleeps for `d`, or less when a stop is asked for meanwhile (back-offs between restarts).
    pub fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.requested() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(LOOK_EVERY));
        }
    }
}

pub struct PanicGuard<'s, 'a>(&'s Stop<'a>);

impl Drop for PanicGuard<'_, '_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_thread_stops_the_others() {
        let shutdown = AtomicBool::new(false);
        let stop = Stop::new(&shutdown);
        std::thread::scope(|s| {
            let joined = s
                .spawn(|| {
                    let _guard = stop.on_panic();
                    panic!("boom");
                })
                .join();
            assert!(joined.is_err());
        });
        assert!(stop.requested());
        assert!(!shutdown.load(Relaxed), "the caller's flag is the caller's");
    }

    #[test]
    fn a_guard_dropped_normally_stops_nothing() {
        let shutdown = AtomicBool::new(false);
        let stop = Stop::new(&shutdown);
        drop(stop.on_panic());
        assert!(!stop.requested());
        shutdown.store(true, Relaxed);
        assert!(stop.requested());
    }

    #[test]
    fn a_watched_counter_that_moves_stops_the_child_only() {
        let shutdown = AtomicBool::new(false);
        let counter = AtomicU64::new(3);
        let stop = Stop::new(&shutdown);
        let child = stop.until_changed(&counter);
        assert!(!child.requested());
        counter.fetch_add(1, Relaxed);
        assert!(child.requested());
        assert!(!stop.requested());
        assert!(!stop.until_changed(&counter).requested(), "watches from the value it starts at");
    }

    #[test]
    fn sleep_ends_early_once_stopped() {
        let shutdown = AtomicBool::new(true);
        let stop = Stop::new(&shutdown);
        let started = Instant::now();
        stop.sleep(Duration::from_secs(60));
        assert!(started.elapsed() < Duration::from_secs(60));
    }
}
