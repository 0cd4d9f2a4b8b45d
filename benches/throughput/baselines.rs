//! The plain alternatives a user could run instead of the bridge. The Rust one is the strongest
//! copy loop rust-rdkafka allows: a `ThreadedProducer` (its own thread serves delivery reports
//! as they come; a `BaseProducer` polled by the loop served one report per zero-timeout poll and
//! ran at a third of the Python relay's rate), librdkafka's own queue limits (100,000 messages,
//! 1 GiB; a full queue waits 1 ms, a hundred records' worth of a queue that deep), no commits. Both print their progress every 50 ms: records read minus the producer's queue
//! (`rd_kafka_outq_len`: not yet acknowledged), per copy, which costs them nothing per record.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use super::contestant::INPUT;

/// Runs in a child process of the harness (`COPY_LOOP_*` set): consumes [`INPUT`] and writes
/// every record to the same partition of each of `COPY_LOOP_OUTPUTS`.
pub fn copy_loop() {
    let var = |k: &str| std::env::var(k).unwrap();
    let bootstrap = var("COPY_LOOP_BOOTSTRAP");
    let outputs: Vec<String> = var("COPY_LOOP_OUTPUTS").split(',').map(str::to_owned).collect();
    let mut consumer = ClientConfig::new();
    if let Ok(ms) = std::env::var("COPY_LOOP_FETCH_WAIT_MS") {
        consumer.set("fetch.wait.max.ms", ms);
    }
    let consumer: BaseConsumer = consumer
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", var("COPY_LOOP_GROUP"))
        .set("auto.offset.reset", "earliest")
        .set("max.poll.interval.ms", "10000")
        .set("session.timeout.ms", "6000")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut producer = ClientConfig::new();
    producer.set("bootstrap.servers", &bootstrap).set("enable.idempotence", "true").set("linger.ms", "5");
    for (k, v) in super::contestant::producer_extra() {
        producer.set(k, v);
    }
    let producer: ThreadedProducer<DefaultProducerContext> = producer.create().unwrap();
    consumer.subscribe(&[INPUT]).unwrap();
    let (mut since_report, mut read, mut reported) = (0usize, 0usize, std::time::Instant::now());
    let mut report = |read: usize, producer: &ThreadedProducer<DefaultProducerContext>| {
        if reported.elapsed() >= Duration::from_millis(50) {
            let queued = producer.in_flight_count().max(0) as usize;
            println!("{}", (read * outputs.len()).saturating_sub(queued) / outputs.len());
            reported = std::time::Instant::now();
        }
    };
    loop {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) else {
            report(read, &producer);
            continue;
        };
        read += 1;
        for output in &outputs {
            let mut r: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(output).partition(m.partition());
            if let Some(k) = m.key() {
                r = r.key(k);
            }
            if let Some(p) = m.payload() {
                r = r.payload(p);
            }
            if let Some(h) = m.headers() {
                r = r.headers(h.detach());
            }
            if let Some(ts) = m.timestamp().to_millis() {
                r = r.timestamp(ts);
            }
            loop {
                match producer.send(r) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        r = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, _)) => panic!("copy loop: {e}"),
                }
            }
        }
        since_report += 1;
        if since_report >= 1000 {
            report(read, &producer);
            since_report = 0;
        }
    }
}

/// Where confluent-kafka is installed (`scripts/install-confluent-kafka.sh` installs it).
pub fn python_path() -> String {
    let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-confluent-kafka.sh"))
        .output()
        .unwrap();
    assert!(out.status.success(), "cannot install confluent-kafka: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
