//! The payload splice: never a panic; the stamped document parses iff the input did, equals it
//! but for the stamp, and every byte outside the splice is unchanged.
#![no_main]
#![allow(dead_code)]

// The pure core, compiled here as it is in the library (see Cargo.toml).
#[path = "../../src/extract.rs"]
mod extract;
#[path = "../../src/json_scan.rs"]
mod json_scan;
#[path = "../../src/splice.rs"]
mod splice;

use extract::TenancyKey;
use libfuzzer_sys::fuzz_target;
use splice::Splice;

const KEY: &str = "event_tenancy";
const VALUES: [&str; 4] = ["U1_payment", "u\"ser\\_x", "ü_ß", ""];

fuzz_target!(|data: &[u8]| {
    let Some((&choice, payload)) = data.split_first() else { return };
    let value = VALUES[usize::from(choice) % VALUES.len()];
    let Ok(splice) = splice::plan_splice(Some(payload), &TenancyKey::new(KEY)) else { return };
    let mut out = Vec::new();
    splice::stamp_payload(payload, splice, KEY, value, &mut out);

    let before = serde_json::from_slice::<serde_json::Value>(payload);
    let after = serde_json::from_slice::<serde_json::Value>(&out);
    assert_eq!(before.is_ok(), after.is_ok(), "parses before: {:?}, after: {:?}", before.err(), after.as_ref().err());
    match splice {
        Splice::Insert { at, .. } => {
            assert_eq!(out[..at], payload[..at]);
            assert!(out.ends_with(&payload[at..]));
        }
        Splice::Replace { start, end } => {
            assert_eq!(out[..start], payload[..start]);
            assert!(out.ends_with(&payload[end..]));
        }
    }
    let (Ok(serde_json::Value::Object(mut was)), Ok(serde_json::Value::Object(mut now))) = (before, after) else {
        return;
    };
    assert_eq!(now.remove(KEY), Some(serde_json::Value::String(value.to_owned())), "the stamp");
    was.remove(KEY);
    assert_eq!(was, now, "every other member as it was");
});
