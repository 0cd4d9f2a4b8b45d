//! Progress, CPU and memory of one contestant's process.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Progress of one run: (seconds since start, CPU seconds of its process, records committed,
/// CPU seconds of the prod broker, of the Rush broker).
pub struct Run {
    pub samples: Vec<(f64, f64, i64, f64, f64)>,
    pub total: usize,
    /// The process's peak resident set (VmHWM), bytes.
    pub peak_rss: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub rate: f64,
    pub cpu_us: f64,
    /// What the run cost the prod broker per record.
    pub prod_us: f64,
    /// What the run cost the Rush broker per record.
    pub rush_us: f64,
}

impl Run {
    /// Rate and CPU per record between `lo` and `hi` (fractions of the input committed).
    pub fn window(&self, lo: f64, hi: f64) -> Window {
        let at = |f: f64| {
            let n = (self.total as f64 * f) as i64;
            *self.samples.iter().find(|s| s.2 >= n).unwrap_or_else(|| self.samples.last().unwrap())
        };
        let ((t0, c0, n0, p0, r0), (t1, c1, n1, p1, r1)) = (at(lo), at(hi));
        let n = (n1 - n0).max(1) as f64;
        let us = |a: f64, b: f64| (b - a) * 1e6 / n;
        Window { rate: n / (t1 - t0).max(1e-3), cpu_us: us(c0, c1), prod_us: us(p0, p1), rush_us: us(r0, r1) }
    }

    /// The steady window: 10 % to 90 % of the input, or of the second pass when there are two.
    pub fn steady(&self, passes: usize) -> Window {
        if passes == 2 { self.window(0.55, 0.95) } else { self.window(0.1, 0.9) }
    }
}

/// Samples `progress` until `total` records are committed, calling `hook` with each sample's
/// count, then stops the child. `brokers`: the prod and Rush brokers' processes, whose CPU is
/// sampled too.
pub fn measure(
    mut child: Child,
    brokers: [u32; 2],
    total: usize,
    progress: impl Fn() -> i64,
    mut hook: impl FnMut(i64),
) -> Run {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(900);
    let ticks = clock_ticks();
    let mut samples = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "too slow: {samples:?}");
        assert!(child.try_wait().unwrap().is_none(), "exited early");
        let n = progress();
        let [prod, rush] = brokers.map(|b| cpu_seconds(b, ticks));
        samples.push((started.elapsed().as_secs_f64(), cpu_seconds(child.id(), ticks), n, prod, rush));
        hook(n);
        if n >= total as i64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let peak_rss = peak_rss(child.id());
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    let run = Run { samples, total, peak_rss };
    let w = run.window(0.1, 0.9);
    eprintln!(
        "{:.0} records/s, {:.2} CPU µs/record, brokers {:.2} + {:.2} µs/record (prod + Rush), peak RSS {} MiB",
        w.rate,
        w.cpu_us,
        w.prod_us,
        w.rush_us,
        peak_rss >> 20
    );
    run
}

fn cpu_seconds(pid: u32, ticks: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks_used: f64 = f.get(11).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    ticks_used / ticks
}

fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
