use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::whitelist::Entry;

fn snapshot(content: u8) -> Arc<Snapshot> {
    let entry = |expires_at_ms| Entry::new(vec!["payment".into()], expires_at_ms);
    Arc::new(match content {
        // Whitelisted until t = 1000.
        0 => Snapshot::new(1, [("U".to_string(), entry(1000))]),
        1 => Snapshot::new(2, [("U".to_string(), entry(i64::MAX))]),
        _ => Snapshot::new(3, []),
    })
}

fn decides_rush(e: &Epoch) -> bool {
    e.snapshot.entry("U").is_some_and(|x| x.is_live(e.clock_ms))
}

#[test]
fn same_decisions_needs_same_content_and_no_expiry_between() {
    let a = Epoch::new(snapshot(0), 10);
    assert!(a.same_decisions(&Epoch::new(snapshot(0), 999)));
    assert!(!a.same_decisions(&Epoch::new(snapshot(0), 1000)), "U expired at 1000");
    assert!(!a.same_decisions(&Epoch::new(snapshot(1), 10)));
    assert!(Epoch::new(snapshot(2), 0).same_decisions(&Epoch::new(snapshot(2), 5000)));
}

#[test]
fn a_pin_in_use_is_written_again_once_it_is_old_and_only_then() {
    let epoch = Arc::new(Epoch::new(snapshot(1), 1_000));
    let mut chain = Chain::default();
    chain.apply(Pin { from: 0, epoch: epoch.clone(), claim: 0 });
    let mut p = PartitionPins::taken_over(chain, 3, 1);
    assert!(p.refresh_due(i64::MAX, 10).is_none(), "nothing decided yet");
    p.pick(0, &epoch);
    assert!(p.refresh_due(1_000_000, 10).is_none(), "still replaying below the horizon");
    for offset in 1..5 {
        p.pick(offset, &epoch);
    }
    // The pin taken over is as old as its epoch's instant.
    assert!(p.refresh_due(1_009, 10).is_none());
    let (from, e) = p.refresh_due(1_010, 10).expect("due 10 ms after the epoch's instant");
    assert_eq!((from, e.clock_ms), (5, 1_000), "from the next record, with the epoch deciding now");
    p.refreshed(1_010);
    assert!(p.refresh_due(1_019, 10).is_none(), "written again just now");
    assert!(p.refresh_due(1_020, 10).is_some());
}

#[test]
fn a_pin_under_a_lower_claim_after_a_higher_one_is_a_zombies_and_ignored() {
    let e = |c| Arc::new(Epoch::new(snapshot(c), 0));
    let mut chain = Chain::default();
    chain.apply(Pin { from: 0, epoch: e(0), claim: 5 });
    chain.apply(Pin { from: 10, epoch: e(1), claim: 7 });
    // Owner 5 wakes after owner 7 took over and pins from 4: ignored.
    chain.apply(Pin { from: 4, epoch: e(2), claim: 5 });
    assert_eq!(chain.len(), 2);
    assert_eq!(chain.covering(12).map(|p| p.from), Some(10));
    assert_eq!(chain.next_claim(0), 8);
    assert_eq!(chain.next_claim(1_000), 1_000, "at least the clock");
    // A version before claims writes 0: always applied, as before.
    chain.apply(Pin { from: 4, epoch: e(2), claim: 0 });
    assert_eq!(chain.covering(12).map(|p| p.from), Some(4));
}

#[test]
fn chain_last_word_wins_and_trims() {
    let e = |c| Arc::new(Epoch::new(snapshot(c), 0));
    let mut chain = Chain::default();
    chain.apply(Pin { from: 0, epoch: e(0), claim: 0 });
    chain.apply(Pin { from: 10, epoch: e(1), claim: 0 });
    chain.apply(Pin { from: 20, epoch: e(2), claim: 0 });
    // A later owner pinned from 15: it overrides 20 onwards.
    chain.apply(Pin { from: 15, epoch: e(0), claim: 0 });
    assert_eq!(chain.len(), 3);
    assert_eq!(chain.covering(12).map(|p| p.from), Some(10));
    assert_eq!(chain.covering(30).map(|p| p.from), Some(15));
    assert!(chain.covering(-1).is_none());
    chain.trim_before(12);
    assert_eq!(chain.len(), 2);
    assert!(chain.reaches(12) && !chain.reaches(9));
}

#[test]
fn a_partition_replays_below_its_horizon_then_pins_the_live_whitelist() {
    let (rush, prod) = (Arc::new(Epoch::new(snapshot(1), 0)), Arc::new(Epoch::new(snapshot(2), 0)));
    let mut chain = Chain::default();
    chain.apply(Pin { from: 0, epoch: rush.clone(), claim: 0 });
    let mut p = PartitionPins::taken_over(chain, 5, 1);
    for offset in 0..5 {
        assert!(matches!(p.pick(offset, &prod), Pick::Decide(e) if decides_rush(e)), "offset {offset} replays");
    }
    assert!(matches!(p.pick(5, &prod), Pick::Record { from: 5 }));
    p.pinned(5, prod.clone());
    assert!(matches!(p.pick(6, &prod), Pick::Decide(e) if !decides_rush(e)));
    assert_eq!(p.pin_ahead(&rush), Some(7));
    assert_eq!(p.pin_ahead(&prod), None, "already decides like the live whitelist");
}

#[derive(Debug, Clone)]
enum Step {
    /// The whitelist now has this content, read this much later.
    Change {
        content: u8,
        later_ms: i64,
    },
    Produce(u8),
    Decide(u8),
    Commit(u8),
    /// kill -9, and another owner takes the partition over.
    Crash,
    /// The previous owner, paused past its replacement, wakes and pins a whitelist of this
    /// content ahead of the next offset it would decide.
    Zombie {
        content: u8,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..3, 0i64..400).prop_map(|(content, later_ms)| Step::Change { content, later_ms }),
        (1u8..20).prop_map(Step::Produce),
        (1u8..20).prop_map(Step::Decide),
        any::<u8>().prop_map(Step::Commit),
        Just(Step::Crash),
        (0u8..3).prop_map(|content| Step::Zombie { content }),
    ]
}

/// One partition, a durable pin log, owners that crash at any step.
struct World {
    log: Vec<Pin>,
    high_watermark: i64,
    committed: i64,
    position: i64,
    horizon: i64,
    owner: PartitionPins,
    live: Arc<Epoch>,
    clock: i64,
    first: HashMap<i64, bool>,
    /// The owner before the current one, which may still write: its claim, and the offset
    /// after the last one it decided.
    zombie: Option<(u64, i64)>,
}

impl World {
    fn new() -> Self {
        Self {
            log: Vec::new(),
            high_watermark: 0,
            committed: 0,
            position: 0,
            horizon: 0,
            owner: PartitionPins::taken_over(Chain::default(), 0, 1),
            live: Arc::new(Epoch::new(snapshot(2), 0)),
            clock: 1,
            first: HashMap::new(),
            zombie: None,
        }
    }

    fn run(&mut self, step: Step) {
        match step {
            Step::Change { content, later_ms } => {
                self.clock += later_ms;
                self.live = Arc::new(Epoch::new(snapshot(content), self.clock));
                if let Some(from) = self.owner.pin_ahead(&self.live) {
                    self.log.push(Pin { from, epoch: self.live.clone(), claim: self.owner.claim() });
                    self.owner.pinned_ahead(self.live.clone());
                }
            }
            Step::Produce(n) => self.high_watermark += i64::from(n),
            Step::Decide(n) => {
                for _ in 0..n {
                    if self.position < self.high_watermark {
                        self.decide();
                    }
                }
            }
            Step::Commit(k) => {
                let span = self.position - self.committed;
                self.committed += if span > 0 { i64::from(k) % (span + 1) } else { 0 };
            }
            Step::Crash => {
                let mut chain = Chain::default();
                for pin in &self.log {
                    chain.apply(pin.clone());
                }
                chain.trim_before(self.committed);
                self.horizon = self.high_watermark;
                // The new owner claims the partition: what it took over, written again under
                // its claim (as `DecisionLog::claim` does).
                self.clock += 1;
                let claim = chain.next_claim(self.clock);
                self.log.extend(chain.pins().iter().map(|p| Pin { claim, ..p.clone() }));
                self.zombie = Some((self.owner.claim(), self.position));
                self.owner = PartitionPins::taken_over(chain, self.horizon, claim);
                self.position = self.committed;
            }
            Step::Zombie { content } => {
                if let Some((claim, next)) = self.zombie {
                    let epoch = Arc::new(Epoch::new(snapshot(content), self.clock));
                    self.log.push(Pin { from: next, epoch, claim });
                }
            }
        }
    }

    fn decide(&mut self) {
        let offset = self.position;
        let rush = match self.owner.pick(offset, &self.live) {
            Pick::Decide(e) => decides_rush(e),
            Pick::Record { from } => {
                assert_eq!(from, offset);
                self.log.push(Pin { from, epoch: self.live.clone(), claim: self.owner.claim() });
                self.owner.pinned(from, self.live.clone());
                decides_rush(&self.live)
            }
        };
        let first = *self.first.entry(offset).or_insert(rush);
        assert_eq!(rush, first, "offset {offset} decided again differently");
        if offset >= self.horizon {
            assert_eq!(rush, decides_rush(&self.live), "offset {offset} past the horizon must follow the whitelist");
        }
        self.position += 1;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any interleaving of whitelist changes, expiries, commits and crashes: every offset is
    /// decided as the first time it was, and past a new owner's horizon as the whitelist says.
    #[test]
    fn replays_reproduce_the_first_decisions(steps in proptest::collection::vec(step(), 1..120)) {
        let mut world = World::new();
        for s in steps {
            world.run(s);
        }
    }

    #[test]
    fn pin_records_round_trip(from in any::<i64>(), f in any::<u64>(), clock in any::<i64>()) {
        let r = PinRecord {
            v: PIN_FORMAT,
            topic: "orders".into(),
            partition: 3,
            from_offset: from,
            snapshot: fingerprint_hex(f),
            snapshot_offset: 7,
            version: 9,
            clock_ms: clock,
            claim: f >> 1,
        };
        let back: PinRecord = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        prop_assert_eq!(parse_fingerprint(&back.snapshot), Some(f));
        prop_assert_eq!(back, r);
    }
}
