//! A producer thread writing generated inputs at a steady, adjustable rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::Input;

/// Produces `input(0..)` at `rate` events/s until `stop`.
pub struct PacedProducer {
    produced: Arc<AtomicUsize>,
    pub rate: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PacedProducer {
    pub fn start(bootstrap: &str, topic: &'static str, rate: u64, input: fn(usize) -> Input) -> Self {
        let produced = Arc::new(AtomicUsize::new(0));
        let rate = Arc::new(AtomicU64::new(rate));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (bootstrap, produced, rate, stop) =
                (bootstrap.to_owned(), produced.clone(), rate.clone(), stop.clone());
            std::thread::spawn(move || {
                let p = super::producer(&bootstrap);
                let mut i = 0;
                // Paced in 10 ms ticks against the clock, so a slow tick is caught up.
                let (mut tick_start, mut in_tick) = (Instant::now(), 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let per_tick = (rate.load(Ordering::Relaxed) / 100).max(1);
                    if in_tick >= per_tick {
                        let next = tick_start + Duration::from_millis(10);
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        (tick_start, in_tick) = (next, 0);
                        continue;
                    }
                    super::send(&p, topic, &input(i));
                    i += 1;
                    in_tick += 1;
                    produced.store(i, Ordering::Relaxed);
                }
                rdkafka::producer::Producer::flush(&p, Duration::from_secs(60)).unwrap();
            })
        };
        Self { produced, rate, stop, thread: Some(thread) }
    }

    pub fn produced(&self) -> usize {
        self.produced.load(Ordering::Relaxed)
    }

    pub fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.produced()
    }
}
