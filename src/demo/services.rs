//! The demo's stand-ins for services: producers writing `orders` (prod = the old producer,
//! Rush = the new one) and consumer-group members reading `orders.{service}` on either cluster.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers as _, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

pub const ID_HEADER: &str = "demo-id";
pub const USER_HEADER: &str = "x-user-id";

/// One demo event: its id says who produced it (`p…` prod, `r…` Rush).
pub struct Event {
    pub id: String,
    pub user: String,
    pub partition: i32,
}

pub fn produce(bootstrap: &str, topic: &str, events: &[Event]) -> Result<(), KafkaError> {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    for e in events {
        let payload = format!(r#"{{"order_id":"{}","user_id":"{}","amount":42}}"#, e.id, e.user);
        let headers = OwnedHeaders::new()
            .insert(Header { key: ID_HEADER, value: Some(&e.id) })
            .insert(Header { key: USER_HEADER, value: Some(&e.user) });
        let mut record =
            BaseRecord::to(topic).partition(e.partition).key(e.user.as_str()).payload(&payload).headers(headers);
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }
    p.flush(Duration::from_secs(30))
}

/// A service instance: `cluster`'s `orders.{service}`, in the service's consumer group; in an
/// environment other than the default one, `{env}.orders.{service}` on Rush.
pub struct Instance {
    pub cluster: &'static str,
    /// Where it runs: `prod`, `rush` (the default environment) or an environment's name.
    pub place: &'static str,
    pub service: &'static str,
    consumer: BaseConsumer,
    /// Demo id → (copies received, stamp seen).
    pub got: HashMap<String, (usize, Option<String>)>,
}

impl Instance {
    pub fn start(cluster: &'static str, bootstrap: &str, service: &'static str) -> Result<Self, KafkaError> {
        Self::start_in(cluster, cluster, bootstrap, service)
    }

    /// An instance of environment `place` (on Rush) or of production.
    pub fn start_in(
        cluster: &'static str,
        place: &'static str,
        bootstrap: &str,
        service: &'static str,
    ) -> Result<Self, KafkaError> {
        let in_env = place != cluster;
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", if in_env { format!("{service}-{place}") } else { service.to_owned() })
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .create()?;
        let topic = if in_env { format!("{place}.orders.{service}") } else { format!("orders.{service}") };
        consumer.subscribe(&[&topic])?;
        Ok(Self { cluster, place, service, consumer, got: HashMap::new() })
    }

    /// Takes in whatever has arrived; returns how many records.
    pub fn poll(&mut self, stamp_header: &str) -> usize {
        let mut n = 0;
        while let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(if n == 0 { 10 } else { 0 })) {
            let header = |name: &str| {
                m.headers().and_then(|h| {
                    h.iter()
                        .filter(|x| x.key == name)
                        .last()
                        .and_then(|x| x.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                })
            };
            let Some(id) = header(ID_HEADER) else { continue };
            let entry = self.got.entry(id).or_insert((0, None));
            entry.0 += 1;
            entry.1 = header(stamp_header);
            n += 1;
        }
        n
    }

    /// Whether the group has given this instance its partitions yet.
    pub fn assigned(&mut self, stamp_header: &str) -> bool {
        self.poll(stamp_header);
        self.consumer.assignment().is_ok_and(|a| a.count() > 0)
    }

    pub fn received(&self) -> usize {
        self.got.values().map(|(n, _)| n).sum()
    }
}
