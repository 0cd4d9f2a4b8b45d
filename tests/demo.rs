#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `tenancy-bridge demo` with no setup: exits 0 and reports all four scenarios exactly once,
//! two environments of payment beside the default one.

use std::process::Command;

#[test]
fn the_demo_runs_all_four_scenarios_and_the_invariant_holds() {
    let out = Command::new(env!("CARGO_BIN_EXE_tenancy-bridge"))
        .args(["demo", "--events", "3000", "--rush-events", "300"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    for line in [
        "1 old producer -> old consumer         5,400     5,400  prod payment 2,400, prod shipping 3,000 (exactly once)",
        "2 old producer -> new consumer           600       600  rush payment 300, pr-42 payment 150, pr-57 payment 150 (exactly once)",
        "3 new producer -> old consumer           300       300  prod shipping 300 (exactly once)",
        "4 new producer -> new consumer           300       300  rush payment 300 (exactly once)",
        "3,300 events in (300 via the return path), 6,600 deliveries: prod 5,700 · rush 900",
        "invariant held: 0 violations",
        "everything held",
    ] {
        assert!(text.contains(line), "missing {line:?}");
    }
}
