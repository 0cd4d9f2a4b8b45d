//! The harness's tables: every run, medians over the rounds, and the targets.

use super::contestant::{UserAt, Who};
use super::measure::Window;

pub struct Outcome {
    pub round: usize,
    pub who: Who,
    pub steady: Window,
    pub peak_rss: u64,
    /// Lookup mode: the first pass (cold cache), and when its rate first reached 0.8× snapshot.
    pub cold: Option<Window>,
}

const HEADER: Who = Who::Bridge { user: UserAt::Header, services: 1, exactly_once: false };
const JSON_START: Who = Who::Bridge { user: UserAt::JsonStart, services: 1, exactly_once: false };
const EXACTLY_ONCE: Who = Who::Bridge { user: UserAt::JsonStart, services: 1, exactly_once: true };

/// The run `who` is compared with in the same round: the copy loop writing as many copies.
fn anchor(who: Who) -> Who {
    match who {
        Who::Bridge { services, .. } => Who::Copy { copies: services },
        _ => Who::Copy { copies: 1 },
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

/// Per round, `f(run of a, run of b)` where both ran; the median of those.
fn paired(all: &[Outcome], a: Who, b: Who, f: impl Fn(&Outcome, &Outcome) -> f64) -> f64 {
    let rounds = all.iter().map(|o| o.round).max().map_or(0, |r| r + 1);
    median(
        (0..rounds)
            .filter_map(|r| {
                let find = |w: Who| all.iter().find(|o| o.round == r && o.who == w);
                Some(f(find(a)?, find(b)?))
            })
            .collect(),
    )
}

fn rate_ratio(all: &[Outcome], a: Who, b: Who) -> f64 {
    paired(all, a, b, |x, y| x.steady.rate / y.steady.rate)
}

fn cpu_ratio(all: &[Outcome], a: Who, b: Who) -> f64 {
    paired(all, a, b, |x, y| x.steady.cpu_us / y.steady.cpu_us)
}

pub fn throughput(all: &[Outcome], heading: &str) {
    if all.is_empty() {
        return;
    }
    println!("\n{heading}");
    println!(
        "{:<6} {:<24} {:>10} {:>13} {:>15} {:>9} {:>13} {:>11}",
        "round", "run", "records/s", "CPU µs/rec", "prod+Rush µs", "RSS MiB", "rate × copy", "CPU × copy"
    );
    for o in all {
        let a = all.iter().find(|x| x.round == o.round && x.who == anchor(o.who));
        let (r, c) =
            a.map_or((f64::NAN, f64::NAN), |a| (o.steady.rate / a.steady.rate, o.steady.cpu_us / a.steady.cpu_us));
        println!(
            "{:<6} {:<24} {:>10.0} {:>13.2} {:>15} {:>9} {:>12.2}× {:>10.2}×",
            o.round,
            o.who.name(),
            o.steady.rate,
            o.steady.cpu_us,
            format!("{:.2}+{:.2}", o.steady.prod_us, o.steady.rush_us),
            o.peak_rss >> 20,
            r,
            c
        );
        if let Some(cold) = o.cold {
            println!("{:<6} {:<24} {:>10.0} {:>13.2}", o.round, "  (first pass, cold)", cold.rate, cold.cpu_us);
        }
    }
    let mut lineup: Vec<Who> = all.iter().map(|o| o.who).collect();
    lineup.sort();
    lineup.dedup();
    println!("\nmedians over the rounds (ratios: median of each round's side-by-side ratio)");
    println!(
        "{:<24} {:>10} {:>13} {:>15} {:>13} {:>13} {:>11}",
        "run", "records/s", "CPU µs/rec", "prod+Rush µs", "peak RSS MiB", "rate × copy", "CPU × copy"
    );
    for who in lineup {
        let of = |f: fn(&Outcome) -> f64| median(all.iter().filter(|o| o.who == who).map(f).collect());
        let rss = all.iter().filter(|o| o.who == who).map(|o| o.peak_rss).max().unwrap_or(0);
        println!(
            "{:<24} {:>10.0} {:>13.2} {:>15} {:>13} {:>12.2}× {:>10.2}×",
            who.name(),
            of(|o| o.steady.rate),
            of(|o| o.steady.cpu_us),
            format!("{:.2}+{:.2}", of(|o| o.steady.prod_us), of(|o| o.steady.rush_us)),
            rss >> 20,
            rate_ratio(all, who, anchor(who)),
            cpu_ratio(all, who, anchor(who))
        );
    }
    targets(all);
}

/// A target's verdict; "not run" when a run it compares was left out (`ONLY`).
fn verdict(ratios: &[f64], met: bool) -> &'static str {
    if ratios.iter().any(|r| r.is_nan()) {
        "not run"
    } else if met {
        "met"
    } else {
        "MISSED"
    }
}

fn targets(all: &[Outcome]) {
    println!("\ntargets");
    let copy = Who::Copy { copies: 1 };
    for (who, rate, cpu) in [(HEADER, 0.95, 1.1), (JSON_START, 0.9, 1.2)] {
        let (r, c) = (rate_ratio(all, who, copy), cpu_ratio(all, who, copy));
        println!(
            "  {:<38} {r:.2}× the copy loop's records/s (≥ {rate}), {c:.2}× its CPU µs (≤ {cpu}): {}",
            who.name(),
            verdict(&[r, c], r >= rate && c <= cpu)
        );
    }
    let e = rate_ratio(all, EXACTLY_ONCE, JSON_START);
    println!("  {:<38} {e:.2}× at-least-once (≥ 0.85): {}", "exactly-once", verdict(&[e], e >= 0.85));
    for who in [HEADER, JSON_START] {
        let p = rate_ratio(all, who, Who::Python);
        println!("  {:<38} {p:.2}× the Python relay (≥ 2.5): {}", who.name(), verdict(&[p], p >= 2.5));
    }
    for n in [3, 10] {
        let bridge = Who::Bridge { user: UserAt::Header, services: n, exactly_once: false };
        let b = paired(all, bridge, HEADER, |x, y| x.steady.cpu_us / y.steady.cpu_us);
        let c = paired(all, Who::Copy { copies: n }, copy, |x, y| x.steady.cpu_us / y.steady.cpu_us);
        println!(
            "  {:<38} CPU per input ×{b:.2} from 1 service; the copy loop's ×{c:.2} from 1 copy: {}",
            format!("{n} services"),
            verdict(&[b, c], b <= c * 1.05)
        );
    }
    for envs in [10, 100] {
        let one = Who::Envs { envs: 1 };
        let (c, r) = (cpu_ratio(all, Who::Envs { envs }, one), rate_ratio(all, Who::Envs { envs }, one));
        println!(
            "  {:<38} CPU per record ×{c:.2} of 1 environment's, records/s ×{r:.2} (CPU within 5 %): {}",
            format!("{envs} environments"),
            verdict(&[c], c <= 1.05)
        );
    }
    if let Some(rss) = all.iter().filter(|o| o.who == Who::RushFrozen).map(|o| o.peak_rss).max() {
        println!(
            "  {:<38} peak RSS {} MiB (< 256): {}",
            "Rush frozen, input backlog",
            rss >> 20,
            verdict(&[], rss < 256 << 20)
        );
    }
}
