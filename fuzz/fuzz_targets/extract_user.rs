//! User extraction from a header, the key or a JSON pointer: never a panic, and the same answer
//! a full JSON parser gives wherever the document is valid.
#![no_main]
#![allow(dead_code)]

// The pure core, compiled here as it is in the library (see Cargo.toml).
#[path = "../../src/extract.rs"]
mod extract;
#[path = "../../src/json_scan.rs"]
mod json_scan;
#[path = "../../src/splice.rs"]
mod splice;

use extract::{JsonPointer, MAX_USER_LEN, Passthrough, RecordView, UserLocator};
use libfuzzer_sys::fuzz_target;

const POINTERS: [&str; 5] = ["/user_id", "/data/user_id", "/a/0/u", "/~1x~0y", "/0"];

fuzz_target!(|data: &[u8]| {
    let Some((&choice, bytes)) = data.split_first() else { return };
    let headers: &[(&str, Option<&[u8]>)] = &[("x-user-id", Some(b"shadowed")), ("x-user-id", Some(bytes))];
    let locator = match choice % 7 {
        0 => UserLocator::Header("x-user-id".into()),
        1 => UserLocator::Key,
        n => UserLocator::Json(JsonPointer::parse(POINTERS[usize::from(n - 2)]).expect("valid pointer")),
    };
    let record = RecordView { key: Some(bytes), payload: Some(bytes), headers };
    let found = extract::user(&locator, &record);
    match locator {
        UserLocator::Header(_) | UserLocator::Key => {
            // The last header wins; the bytes are the user when they are short, non-empty UTF-8.
            let want = match std::str::from_utf8(bytes) {
                _ if bytes.is_empty() => Err(Passthrough::NoUser),
                _ if bytes.len() > MAX_USER_LEN => Err(Passthrough::BadUser),
                Ok(s) => Ok(s),
                Err(_) => Err(Passthrough::BadUser),
            };
            assert_eq!(found.as_deref().map_err(|e| *e), want);
        }
        UserLocator::Json(pointer) => {
            let Ok(doc) = serde_json::from_slice::<serde_json::Value>(bytes) else { return };
            let at = doc.pointer(pointer.as_str());
            match (at, found) {
                (Some(serde_json::Value::String(s)), Ok(u)) => assert_eq!(*s, u, "string user"),
                (Some(serde_json::Value::String(s)), Err(e)) => {
                    assert!(s.is_empty() || s.len() > MAX_USER_LEN, "{s:?} refused as {e:?}")
                }
                (Some(serde_json::Value::Number(n)), Ok(u)) => {
                    assert_eq!(u.parse::<f64>().ok(), n.as_f64(), "numeric user {u}")
                }
                (None | Some(serde_json::Value::Null), Ok(u)) => panic!("user {u:?} where the document has none"),
                (None | Some(serde_json::Value::Null), Err(e)) => assert_eq!(e, Passthrough::NoUser),
                (Some(other), Ok(u)) => panic!("user {u:?} from a non-scalar {other}"),
                _ => {}
            }
        }
    }
});
