#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! What the brokers under test do themselves, where the bridge's tests depend on it: tansu
//! 0.6's transactions, probed so that a tansu that changes shows here first.

mod common;

use std::time::Duration;

use common::Tansu;
use common::broker::hides_aborted_records;

#[test]
fn tansu_shows_aborted_records_to_read_committed_readers() {
    // If this fails, tansu learned to filter aborted transactions: make the zombie and kill
    // tests strict on it (they already are on a broker that filters).
    let prod = Tansu::start();
    assert!(!hides_aborted_records(&prod.bootstrap));
}

/// An open transaction whose producer died holds read_committed readers back until the broker
/// aborts it: Apache Kafka does once `transaction.timeout.ms` passes; tansu 0.6 never does
/// (seen: still blocking 50 s past a 2 s timeout). Only a new producer with the same
/// transactional id frees it. So on tansu an instance killed for good leaves its outputs'
/// readers stuck: the scale-out test restarts killed instances (same `instance_id`), as a
/// supervisor would, and the README says why operators should run them so.
#[test]
fn tansu_never_expires_a_dead_producers_transaction() {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let prod = Tansu::start();
    common::create_topic(&prod.bootstrap, "probe-expiry", 1);
    let t = Duration::from_secs(10);
    let dead: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &prod.bootstrap)
        .set("transactional.id", "probe-expiry")
        .set("transaction.timeout.ms", "1000")
        .create()
        .unwrap();
    dead.init_transactions(t).unwrap();
    dead.begin_transaction().unwrap();
    dead.send(BaseRecord::<(), _>::to("probe-expiry").payload("open").partition(0)).unwrap();
    dead.flush(t).unwrap();
    // A process that dies says nothing more to the broker: no abort, no end of the session.
    std::mem::forget(dead);
    let plain = common::producer(&prod.bootstrap);
    plain.send(BaseRecord::<(), _>::to("probe-expiry").payload("after").partition(0)).unwrap();
    plain.flush(t).unwrap();
    // Twenty times the timeout, past Kafka's 10 s expiry check too.
    let read = common::read_until(&[(&prod.bootstrap, "probe-expiry")], 1, Duration::from_secs(20));
    // If this fails, tansu learned to expire transactions: the scale-out test can let a killed
    // instance stay dead.
    assert!(read[0].is_empty(), "the open transaction was expired: {} records read", read[0].len());
}

/// tansu 0.6 has no KIP-447 generation check: it commits offsets sent with the generation a
/// member had before a rebalance (what a frozen instance wakes with). Apache Kafka refuses them
/// (`tests/zombies.rs`). So the bridge guards itself too: a transaction open longer than the
/// smaller of the session and transaction timeouts is aborted, never committed.
#[test]
fn tansu_takes_offsets_sent_with_a_replaced_members_generation() {
    let prod = Tansu::start();
    // If this fails, tansu learned KIP-447: the zombie test can count on the broker there too.
    common::broker::commit_with_a_replaced_generation(&prod.bootstrap).unwrap();
}
