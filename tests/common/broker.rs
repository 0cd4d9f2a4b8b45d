//! Probes of what the brokers under test do, for the tests that depend on it.

use std::time::Duration;

use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

/// Whether the broker at `bootstrap` hides aborted records from read_committed readers.
/// Neither tansu 0.6 nor librdkafka's mock cluster does (they return every record and only
/// hold back open transactions), so what a zombie had open shows as a duplicate there; the
/// exactly-once tests assert on what such a broker can show and tighten on one that filters.
pub fn hides_aborted_records(bootstrap: &str) -> bool {
    super::create_topic(bootstrap, "probe-aborts", 1);
    let p: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", "probe-aborts")
        .create()
        .unwrap();
    let t = Duration::from_secs(10);
    p.init_transactions(t).unwrap();
    for (payload, commit) in [("aborted", false), ("committed", true)] {
        p.begin_transaction().unwrap();
        p.send(BaseRecord::<(), _>::to("probe-aborts").payload(payload).partition(0)).unwrap();
        p.flush(t).unwrap();
        if commit { p.commit_transaction(t).unwrap() } else { p.abort_transaction(t).unwrap() }
    }
    let read = super::read_until(&[(bootstrap, "probe-aborts")], 1, Duration::from_secs(10));
    let payloads: Vec<&[u8]> = read[0].iter().filter_map(|r| r.payload.as_deref()).collect();
    assert!(payloads.contains(&b"committed".as_slice()), "the committed record was not read");
    !payloads.contains(&b"aborted".as_slice())
}

/// KIP-447's check, done by the broker: a transaction sends a consumer's offsets with the group
/// metadata it had before a second member joined (the generation a frozen instance would wake
/// with). `Err` is the broker's refusal, as librdkafka reports it, after the transaction was
/// aborted; `Ok` means the stale offsets were committed. Either way, checks that what the
/// transaction wrote is visible to read_committed readers exactly when its offsets were taken.
pub fn commit_with_a_replaced_generation(bootstrap: &str) -> Result<(), rdkafka::error::KafkaError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    use std::time::Instant;
    let (input, output, group) = ("fence-in", "fence-out", "fence-group");
    super::create_topic(bootstrap, input, 2);
    super::create_topic(bootstrap, output, 1);
    let member = || -> BaseConsumer {
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .create()
            .unwrap();
        c.subscribe(&[input]).unwrap();
        c
    };
    let assigned = |c: &BaseConsumer| c.assignment().map(|a| a.count()).unwrap_or(0);
    let within = || Instant::now() + Duration::from_secs(60);
    let a = member();
    super::wait_until("the first member gets both partitions", within(), || {
        a.poll(Duration::from_millis(100));
        assigned(&a) == 2
    });
    let stale = a.group_metadata().expect("a member has group metadata");
    let b = member();
    super::wait_until("the second member joins and the first rejoins", within(), || {
        a.poll(Duration::from_millis(50));
        b.poll(Duration::from_millis(50));
        assigned(&a) == 1 && assigned(&b) == 1
    });
    let p: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", "fence-zombie")
        .create()
        .unwrap();
    let t = Duration::from_secs(10);
    p.init_transactions(t).unwrap();
    p.begin_transaction().unwrap();
    p.send(BaseRecord::<(), _>::to(output).payload("zombie").partition(0)).unwrap();
    p.flush(t).unwrap();
    let mut offsets = TopicPartitionList::new();
    offsets.add_partition_offset(input, 0, Offset::Offset(5)).unwrap();
    let result = p.send_offsets_to_transaction(&offsets, &stale, t).and_then(|()| p.commit_transaction(t));
    if result.is_err() {
        p.abort_transaction(t).unwrap();
    }
    let read = super::read_until(&[(bootstrap, output)], 1, Duration::from_secs(5));
    let taken = super::committed(bootstrap, group, input, 2).get(&0).copied();
    assert_eq!(read[0].len(), usize::from(result.is_ok()), "the output is visible exactly when committed");
    assert_eq!(taken, result.is_ok().then_some(5), "the offsets are taken exactly when committed");
    result
}
