//! The payload stamp: where `"event_tenancy": "U1_S1"` goes in a JSON object and how it is
//! written, splicing bytes without re-serialising or reordering the rest of the document. Pure;
//! it depends only on the JSON scan, so the fuzz targets build it alone.

use crate::extract::{Passthrough, TenancyKey};
use crate::json_scan::Found;

/// Where a payload stamp goes, computed once per event and reused for each Rush copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Splice {
    /// Insert `"key":"value"` at `at` (just after the object's `{`), with a comma after it
    /// unless the object is empty.
    Insert { at: usize, comma: bool },
    /// Replace the bytes `start..end` (the existing value of the key) with the new value.
    Replace { start: usize, end: usize },
}

/// Finds where `"key": "..."` goes in a JSON object payload without re-serialising it.
pub fn plan_splice(payload: Option<&[u8]>, key: &TenancyKey) -> Result<Splice, Passthrough> {
    let member = payload.map_or(Found::Invalid, |p| key.find_in(p));
    splice_for(payload, member)
}

/// [`plan_splice`] with the member already looked up.
pub(crate) fn splice_for(payload: Option<&[u8]>, member: Found) -> Result<Splice, Passthrough> {
    let payload = payload.ok_or(Passthrough::NotJson)?;
    let open = payload.iter().position(|b| !b.is_ascii_whitespace()).ok_or(Passthrough::NotJson)?;
    match payload[open] {
        b'{' => {}
        b'[' | b'"' | b't' | b'f' | b'n' | b'-' | b'0'..=b'9' => return Err(Passthrough::NotObject),
        _ => return Err(Passthrough::NotJson),
    }
    match member {
        // The scan skips values without validating them; a broken one replaced by the stamp
        // would turn a document that is not JSON into one that is (found by fuzzing).
        Found::Value { start, end } if serde_json::from_slice::<serde_json::Value>(&payload[start..end]).is_ok() => {
            Ok(Splice::Replace { start, end })
        }
        Found::Value { .. } => Err(Passthrough::NotJson),
        Found::NotFound => insert_at(payload, open),
        Found::Invalid => Err(Passthrough::NotJson),
    }
}

/// A new first member, just after the object's opening brace at `open`.
fn insert_at(payload: &[u8], open: usize) -> Result<Splice, Passthrough> {
    let at = open + 1;
    match payload[at..].iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'}') => Ok(Splice::Insert { at, comma: false }),
        Some(b'"') => Ok(Splice::Insert { at, comma: true }),
        _ => Err(Passthrough::NotJson),
    }
}

/// Writes `payload` with the stamp spliced in to `out` (cleared first).
pub fn stamp_payload(payload: &[u8], splice: Splice, key: &str, value: &str, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(payload.len() + key.len() + value.len() + 8);
    match splice {
        Splice::Insert { at, comma } => {
            out.extend_from_slice(&payload[..at]);
            push_json_string(out, key);
            out.push(b':');
            push_json_string(out, value);
            if comma {
                out.push(b',');
            }
            out.extend_from_slice(&payload[at..]);
        }
        Splice::Replace { start, end } => {
            out.extend_from_slice(&payload[..start]);
            push_json_string(out, value);
            out.extend_from_slice(&payload[end..]);
        }
    }
}

fn push_json_string(out: &mut Vec<u8>, s: &str) {
    let plain = s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}
