//! Checks the invariant on what was read back: each input event reaches exactly one of
//! prod/Rush per service, in its partition, in input order, stamped right, byte-identical on prod.
//! Inputs carry a unique `tid` header (headers pass through the bridge unchanged).

use std::collections::HashMap;

use super::Read;

pub const TID: &str = "tid";

#[derive(Debug, Default)]
pub struct Report {
    pub prod: usize,
    pub rush: usize,
    /// Outputs written again by a replay (at-least-once mode only).
    pub replayed: usize,
    pub violations: Vec<String>,
}

/// What a run promises. A crash or a hand-over whose commit the broker refused replays from
/// the last commit: the same outputs again, on the same cluster, in the same order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    ExactlyOnce,
    AtLeastOnce,
}

impl Report {
    pub fn assert_clean(&self) {
        assert!(
            self.violations.is_empty(),
            "{} violations, first: {:#?}",
            self.violations.len(),
            &self.violations[..self.violations.len().min(10)]
        );
    }
}

pub enum StampCheck {
    Header,
    Payload,
    Both,
}

/// `expected_rush(input, service)` returns the user the Rush copy is stamped for, or `None`
/// when the event belongs to prod for that service.
pub fn check(
    inputs: &[Read],
    services: &[&str],
    prod: &HashMap<String, Vec<Read>>,
    rush: &HashMap<String, Vec<Read>>,
    expected_rush: impl Fn(&Read, &str) -> Option<String>,
    stamp: StampCheck,
) -> Report {
    check_with(inputs, services, prod, rush, expected_rush, stamp, Delivery::ExactlyOnce)
}

pub fn check_with(
    inputs: &[Read],
    services: &[&str],
    prod: &HashMap<String, Vec<Read>>,
    rush: &HashMap<String, Vec<Read>>,
    expected_rush: impl Fn(&Read, &str) -> Option<String>,
    stamp: StampCheck,
    delivery: Delivery,
) -> Report {
    let mut r = Report::default();
    let by_tid: HashMap<&[u8], &Read> = inputs.iter().map(|i| (i.header(TID).expect("input without tid"), i)).collect();
    assert_eq!(by_tid.len(), inputs.len(), "duplicate tids in the input");
    for svc in services {
        let empty = Vec::new();
        let p = prod.get(*svc).unwrap_or(&empty);
        let q = rush.get(*svc).unwrap_or(&empty);
        r.prod += p.len();
        r.rush += q.len();
        let mut seen: HashMap<&[u8], (usize, usize)> = HashMap::new();
        for (cluster, outs) in [("prod", p), ("rush", q)] {
            let mut last_offset: HashMap<i32, i64> = HashMap::new();
            for o in outs {
                let Some(tid) = o.header(TID) else {
                    r.violations.push(format!("{cluster}:{svc}: output without tid at {}@{}", o.partition, o.offset));
                    continue;
                };
                let Some(input) = by_tid.get(tid) else {
                    r.violations.push(format!("{cluster}:{svc}: unknown tid {:?}", String::from_utf8_lossy(tid)));
                    continue;
                };
                let e = seen.entry(tid).or_default();
                if cluster == "prod" {
                    e.0 += 1
                } else {
                    e.1 += 1
                }
                let again = if cluster == "prod" { e.0 > 1 } else { e.1 > 1 };
                if again && delivery == Delivery::AtLeastOnce {
                    // A replay: order is judged on first deliveries.
                    r.replayed += 1;
                    continue;
                }
                let tid_s = String::from_utf8_lossy(tid);
                if o.partition != input.partition {
                    r.violations.push(format!(
                        "{cluster}:{svc}: tid {tid_s} moved partition {} -> {}",
                        input.partition, o.partition
                    ));
                }
                if let Some(prev) = last_offset.insert(o.partition, input.offset) {
                    if prev >= input.offset {
                        r.violations.push(format!(
                            "{cluster}:{svc}[{}]: out of order: input offset {} after {prev}",
                            o.partition, input.offset
                        ));
                    }
                }
                let want = expected_rush(input, svc);
                match (cluster, &want) {
                    ("prod", Some(_)) => r.violations.push(format!("prod:{svc}: tid {tid_s} belongs to rush")),
                    ("rush", None) => r.violations.push(format!("rush:{svc}: tid {tid_s} belongs to prod")),
                    _ => {}
                }
                if o.key != input.key || o.timestamp != input.timestamp {
                    r.violations.push(format!("{cluster}:{svc}: tid {tid_s}: key or timestamp changed"));
                }
                if cluster == "prod" {
                    if o.payload != input.payload || o.headers != input.headers {
                        r.violations.push(format!("prod:{svc}: tid {tid_s}: not byte-identical"));
                    }
                } else if let Some(user) = &want {
                    let value = format!("{user}_{svc}");
                    check_stamp(&mut r, &stamp, input, o, &value, svc);
                }
            }
        }
        for (tid, input) in &by_tid {
            let (np, nr) = seen.get(tid).copied().unwrap_or_default();
            let tid_s = String::from_utf8_lossy(tid);
            if np + nr == 0 {
                r.violations.push(format!(
                    "{svc}: tid {tid_s} missing on both clusters (input {}@{})",
                    input.partition, input.offset
                ));
            } else if np > 0 && nr > 0 {
                r.violations.push(format!("{svc}: tid {tid_s} on both clusters"));
            } else if (np > 1 || nr > 1) && delivery == Delivery::ExactlyOnce {
                r.violations.push(format!("{svc}: tid {tid_s} duplicated ({np} prod, {nr} rush)"));
            }
        }
    }
    r
}

fn check_stamp(r: &mut Report, stamp: &StampCheck, input: &Read, o: &Read, value: &str, svc: &str) {
    let header_ok = o.header("event_tenancy") == Some(value.as_bytes());
    let payload_ok = || {
        let (Some(a), Some(b)) = (&input.payload, &o.payload) else { return false };
        let (Ok(mut a), Ok(b)) = (
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(a),
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(b),
        ) else {
            return false;
        };
        a.insert("event_tenancy".into(), value.into());
        a == b
    };
    let ok = match stamp {
        StampCheck::Header => header_ok && o.payload == input.payload,
        StampCheck::Payload => payload_ok() && o.header("event_tenancy").is_none(),
        StampCheck::Both => header_ok && payload_ok(),
    };
    if !ok {
        r.violations.push(format!(
            "rush:{svc}: tid {}: wrong stamp (want {value})",
            String::from_utf8_lossy(o.header(TID).unwrap_or_default())
        ));
    }
}

/// Runs `verify` with the config `text` and returns its violations, but for duplicates when
/// `duplicates_allowed`; every judged input must have been decided under a recorded pin.
pub fn verify_by_recorded_decisions(text: &str, total: usize, duplicates_allowed: bool) -> Vec<String> {
    let config = tenancy_bridge::config::Config::parse(text, std::iter::empty()).unwrap();
    let report = tenancy_bridge::verify::run(&config, &tenancy_bridge::verify::Options::default()).unwrap();
    assert!(report.notes.is_empty(), "{:?}", report.notes);
    let mut violations = Vec::new();
    for s in &report.routes[0].services {
        eprintln!(
            "verify {}: {} inputs, {} prod, {} rush, {} judged by their recorded decision, {} violations",
            s.service,
            s.inputs,
            s.prod,
            s.rush,
            s.pinned,
            s.violations.len()
        );
        assert_eq!(s.inputs, total);
        assert_eq!(s.pinned, total, "every event was decided under a pin");
        for v in &s.violations {
            let duplicate = matches!(v, tenancy_bridge::verify::check::Violation::Duplicated { .. });
            if !(duplicate && duplicates_allowed) {
                violations.push(format!("verify {}: {v}", s.service));
            }
        }
    }
    violations
}
