//! Wall-clock time as the whitelist, the decision log and the Config Mapper write it: Unix
//! milliseconds, and RFC 3339 on the wire. Its own module because both the core (expiry) and
//! the shell (audit, HTTP) read it, and neither should import the other for a clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix milliseconds as RFC 3339 to the second (negative: the epoch).
pub fn format_rfc3339_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn parse_rfc3339_ms(s: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339_weak(s).map_err(|e| e.to_string())?;
    let ms = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).map_err(|_| "too far in the future".to_string())?,
        Err(_) => return Err("before 1970".into()),
    };
    Ok(ms)
}

/// Wall-clock Unix milliseconds; read once per batch by the relay, never per record.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
