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
