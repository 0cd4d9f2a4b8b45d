//! The forward direction's record handling: decide each prod record from the whitelist (the
//! epoch pinned for its offset, or per-user lookups with parking) and fan it out.

use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::BorrowedMessage;

use super::RelayError;
use super::consumer::RebalanceContext;
use super::parking::Parking;
use super::pinned::Pinned;
use super::pipeline::Pipeline;
use super::poll::{Handler, POLL_TIMEOUT};
use crate::whitelist::now_ms;

/// Parked records wait for lookups: poll briefly so their answers are picked up soon.
const LOOKUP_POLL_TIMEOUT: Duration = Duration::from_millis(5);

pub enum Source {
    /// Whole snapshots, each record decided by the epoch pinned for its offset.
    Pinned(Box<Pinned>),
    Lookup(Box<Parking>),
}

pub struct Forward {
    pub pipeline: Pipeline,
    pub source: Source,
    now: i64,
}

impl Forward {
    pub fn new(pipeline: Pipeline, source: Source) -> Self {
        Self { pipeline, source, now: 0 }
    }
}

impl Handler for Forward {
    fn begin_batch(&mut self) -> Result<(), RelayError> {
        self.pipeline.dead_letter_refused()?;
        // One snapshot load and one clock reading per batch.
        self.now = now_ms();
        match &mut self.source {
            Source::Pinned(p) => p.begin_batch(self.now)?,
            Source::Lookup(p) => p.begin_batch(),
        }
        Ok(())
    }

    fn poll_timeout(&self) -> Duration {
        match &self.source {
            Source::Lookup(p) if p.has_parked() => LOOKUP_POLL_TIMEOUT,
            _ => POLL_TIMEOUT,
        }
    }

    fn handle(
        &mut self,
        msg: &BorrowedMessage<'_>,
        consumer: &BaseConsumer<RebalanceContext>,
    ) -> Result<(), RelayError> {
        match &mut self.source {
            Source::Lookup(p) => p.offer(msg, &mut self.pipeline, consumer, self.now)?,
            Source::Pinned(p) => p.decide(msg, &mut self.pipeline)?,
        }
        Ok(())
    }

    fn end_batch(&mut self, consumer: &BaseConsumer<RebalanceContext>) -> Result<(), RelayError> {
        if let Source::Lookup(p) = &mut self.source {
            p.drain(&mut self.pipeline, consumer, self.now)?;
        }
        Ok(())
    }

    fn held(&self, topic: &str, partition: i32) -> bool {
        match &self.source {
            Source::Lookup(p) => self.pipeline.route_index(topic).is_some_and(|r| p.is_paused((r, partition))),
            Source::Pinned(_) => false,
        }
    }
}
