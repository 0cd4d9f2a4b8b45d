//! An Apache Kafka broker process for tests: one combined KRaft controller + broker node on
//! free loopback ports, its log directory and log file in a temporary folder, killed on drop.
//! The jars come from `scripts/install-kafka.sh` (`KAFKA_LIBS`, or `target/tools/kafka/libs`).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// How long a broker may take to answer metadata after its start (a JVM on a busy 2-core VM).
const READY_WITHIN: Duration = Duration::from_secs(90);

pub struct Kafka {
    pub bootstrap: String,
    child: Child,
    dir: tempfile::TempDir,
}

fn libs() -> PathBuf {
    if let Ok(p) = std::env::var("KAFKA_LIBS") {
        return PathBuf::from(p);
    }
    let default = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/kafka/libs");
    assert!(default.is_dir(), "Apache Kafka not installed: run scripts/test.sh (or scripts/install-kafka.sh)");
    default
}

fn java(dir: &std::path::Path, args: &[&str], heap: &str) -> Command {
    let mut c = Command::new("java");
    c.arg(heap)
        .args(["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto", "-Djava.awt.headless=true"])
        .arg(format!("-Dlog4j2.configurationFile={}", dir.join("log4j2.properties").display()))
        .arg(format!("-Dkafka.logs.dir={}", dir.display()))
        .arg("-cp")
        .arg(format!("{}/*", libs().display()))
        .args(args);
    c
}

impl Kafka {
    /// Starts a fresh single-node cluster and waits until it answers metadata.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`Self::start`] with extra `server.properties` lines (`key=value`).
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("kafka dir");
        let (port, controller) = (super::free_port(), super::free_port());
        let bootstrap = format!("127.0.0.1:{port}");
        let mut props = vec![
            "process.roles=broker,controller".to_owned(),
            "node.id=1".to_owned(),
            format!("controller.quorum.voters=1@127.0.0.1:{controller}"),
            format!("listeners=PLAINTEXT://{bootstrap},CONTROLLER://127.0.0.1:{controller}"),
            format!("advertised.listeners=PLAINTEXT://{bootstrap}"),
            "controller.listener.names=CONTROLLER".to_owned(),
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT".to_owned(),
            format!("log.dirs={}", dir.path().join("data").display()),
            "offsets.topic.replication.factor=1".to_owned(),
            "offsets.topic.num.partitions=4".to_owned(),
            "transaction.state.log.replication.factor=1".to_owned(),
            "transaction.state.log.min.isr=1".to_owned(),
            "transaction.state.log.num.partitions=4".to_owned(),
            "group.initial.rebalance.delay.ms=0".to_owned(),
            "num.partitions=1".to_owned(),
            "auto.create.topics.enable=false".to_owned(),
            // Tests write records with fixed timestamps of 2025: Kafka's time-based segment roll
            // and retention (7 days, judged by record timestamps) must not act on them. Nothing
            // here lives long enough to need either.
            "log.roll.hours=876000".to_owned(),
            "log.retention.ms=-1".to_owned(),
            // A group may use the short sessions the tests set (Kafka's floor is 6 s).
            "group.min.session.timeout.ms=1000".to_owned(),
        ];
        props.extend(extra.iter().map(|s| (*s).to_owned()));
        let config = dir.path().join("server.properties");
        std::fs::write(&config, props.join("\n") + "\n").expect("server.properties");
        std::fs::write(
            dir.path().join("log4j2.properties"),
            format!(
                "rootLogger.level=INFO\nrootLogger.appenderRef.f.ref=f\nappender.f.type=File\nappender.f.name=f\n\
                 appender.f.fileName={}\nappender.f.layout.type=PatternLayout\n\
                 appender.f.layout.pattern=[%d] %p %m (%c)%n\n",
                dir.path().join("server.log").display()
            ),
        )
        .expect("log4j2.properties");
        let child = Self::format_and_start(dir.path());
        let mut kafka = Self { bootstrap, child, dir };
        kafka.wait_ready();
        kafka
    }

    /// Formats `dir`'s log directory as a new cluster (a new cluster id) and starts the node.
    fn format_and_start(dir: &std::path::Path) -> Child {
        let config = dir.join("server.properties").to_string_lossy().into_owned();
        let format = java(dir, &["kafka.tools.StorageTool", "format", "-t", &cluster_id(), "-c", &config], "-Xmx256m")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("format the KRaft log directory");
        assert!(format.success(), "kafka storage format failed");
        java(dir, &["kafka.Kafka", &config], "-Xmx768m")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kafka (java)")
    }

    /// Rebuilds the cluster as operators rebuild a test cluster: the node killed, its data
    /// deleted, a new cluster (a new cluster id, no topics, no groups) started at the same
    /// address.
    pub fn rebuild(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(self.dir.path().join("data"));
        self.child = Self::format_and_start(self.dir.path());
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        while TcpStream::connect(&self.bootstrap).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("kafka exited ({status}) before listening; its log:\n{}", self.log_tail());
            }
            assert!(Instant::now() < deadline, "kafka did not listen on {}:\n{}", self.bootstrap, self.log_tail());
            std::thread::sleep(Duration::from_millis(100));
        }
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("log_level", "3")
            .create()
            .expect("metadata client");
        while consumer.fetch_metadata(None, Duration::from_secs(5)).map_or(true, |m| m.brokers().is_empty()) {
            assert!(Instant::now() < deadline, "kafka on {} answers no metadata:\n{}", self.bootstrap, self.log_tail());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Freezes (`STOP`) or thaws (`CONT`) the broker process, as for tansu.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success(), "kill -{signal}");
    }

    /// The last lines of the broker's log, for a failure message.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        // `KEEP_KAFKA_LOGS=dir` keeps each broker's log, named by its port, for a post-mortem.
        if let Some(keep) = std::env::var_os("KEEP_KAFKA_LOGS") {
            let name = format!("kafka-{}.log", self.bootstrap.rsplit(':').next().unwrap_or("0"));
            let _ = std::fs::copy(self.dir.path().join("server.log"), std::path::Path::new(&keep).join(name));
        }
    }
}

/// A KRaft cluster id: 16 bytes, URL-safe base64 without padding (22 characters).
fn cluster_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
        ^ u128::from(std::process::id());
    let mut x = seed | 1;
    (0..22)
        .map(|i| {
            // xorshift: uniqueness per test run is all that is needed.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // The 22nd character carries the last 2 of 128 bits: its low 4 bits stay zero. The
            // first is a letter: one starting with '-' would read as an option.
            let index = match i {
                0 => x % 52,
                21 => (x % 4) * 16,
                _ => x % 64,
            };
            ALPHABET[index as usize] as char
        })
        .collect()
}
