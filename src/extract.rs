//! Finding the user of an event: a header, the message key, or a JSON pointer into the payload.
//!
//! Pure: works on borrowed bytes, allocates only when a JSON string holds escapes.

use std::borrow::Cow;

use crate::json_scan::{self, Found, Step};

/// Read access to a record's headers, so the core does not depend on a Kafka client.
pub trait Headers {
    /// The value of the last header called `name` (Kafka allows repeats; the last one wins,
    /// as in most clients' "get" helpers).
    fn last(&self, name: &str) -> Option<&[u8]>;
}

impl Headers for [(&str, Option<&[u8]>)] {
    fn last(&self, name: &str) -> Option<&[u8]> {
        self.iter().rev().find(|(k, _)| *k == name).and_then(|(_, v)| *v)
    }
}

/// The parts of an input record the core reads.
pub struct RecordView<'a, H: Headers + ?Sized> {
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub headers: &'a H,
}

/// RFC 6901 pointer, pre-split into unescaped tokens so lookups do no parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPointer {
    text: String,
    tokens: Vec<String>,
    steps: Vec<Step>,
}

impl JsonPointer {
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("{text:?} is not a JSON pointer: it must start with '/', like \"/user_id\""));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            if raw.is_empty() {
                return Err(format!("{text:?} has an empty segment"));
            }
            let mut t = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => t.push('~'),
                        Some('1') => t.push('/'),
                        _ => return Err(format!("{text:?}: '~' must be followed by 0 or 1")),
                    }
                } else {
                    t.push(c);
                }
            }
            tokens.push(t);
        }
        let steps = tokens.iter().map(|t| Step::new(t)).collect();
        Ok(Self { text: text.to_owned(), tokens, steps })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }
}

impl std::fmt::Display for JsonPointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserLocator {
    Header(String),
    Key,
    Json(JsonPointer),
}

/// Why an event is production traffic without a whitelist lookup. Counted per reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Passthrough {
    /// The header, key or JSON field that names the user is absent, null or empty.
    NoUser,
    /// The user is there but is not UTF-8 text (or a JSON string/number).
    BadUser,
    /// The payload is not JSON where the route reads or writes JSON.
    NotJson,
    /// Payload stamping needs a JSON object; the payload is another JSON value.
    NotObject,
}

impl Passthrough {
    pub const ALL: [Passthrough; 4] = [Self::NoUser, Self::BadUser, Self::NotJson, Self::NotObject];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoUser => "no_user",
            Self::BadUser => "bad_user",
            Self::NotJson => "not_json",
            Self::NotObject => "not_object",
        }
    }
}

/// Users are identifiers, not documents: a longer value is treated as malformed.
pub const MAX_USER_LEN: usize = 256;

/// Finds the user of `record` as `locator` says.
pub fn user<'a, H: Headers + ?Sized>(
    locator: &UserLocator,
    record: &RecordView<'a, H>,
) -> Result<Cow<'a, str>, Passthrough> {
    match locator {
        UserLocator::Header(name) => text(record.headers.last(name)),
        UserLocator::Key => text(record.key),
        UserLocator::Json(pointer) => json_user(record.payload, pointer),
    }
}

fn text(bytes: Option<&[u8]>) -> Result<Cow<'_, str>, Passthrough> {
    match bytes {
        None | Some([]) => Err(Passthrough::NoUser),
        Some(b) if b.len() > MAX_USER_LEN => Err(Passthrough::BadUser),
        Some(b) => std::str::from_utf8(b).map(Cow::Borrowed).map_err(|_| Passthrough::BadUser),
    }
}

fn json_user<'a>(payload: Option<&'a [u8]>, pointer: &JsonPointer) -> Result<Cow<'a, str>, Passthrough> {
    let payload = payload.ok_or(Passthrough::NotJson)?;
    json_text_at(payload, &pointer.steps)
}

fn json_text_at<'a>(payload: &'a [u8], steps: &[Step]) -> Result<Cow<'a, str>, Passthrough> {
    match json_scan::lookup(payload, steps) {
        Found::Value { start, end } => {
            let raw = std::str::from_utf8(&payload[start..end]).map_err(|_| Passthrough::BadUser)?;
            json_scalar_text(raw)
        }
        Found::NotFound => Err(Passthrough::NoUser),
        Found::Invalid => Err(Passthrough::NotJson),
    }
}

/// A JSON string or number as user text; `raw` is the value's source text.
fn json_scalar_text(raw: &str) -> Result<Cow<'_, str>, Passthrough> {
    let bytes = raw.as_bytes();
    let first = *bytes.first().ok_or(Passthrough::NotJson)?;
    let user = match first {
        b'"' => {
            let inner = raw.get(1..raw.len().saturating_sub(1)).ok_or(Passthrough::NotJson)?;
            if !inner.contains('\\') {
                Cow::Borrowed(inner)
            } else {
                Cow::Owned(serde_json::from_str::<String>(raw).map_err(|_| Passthrough::NotJson)?)
            }
        }
        b'-' | b'0'..=b'9' => Cow::Borrowed(raw),
        b'n' => return Err(Passthrough::NoUser),
        _ => return Err(Passthrough::BadUser),
    };
    if user.is_empty() {
        Err(Passthrough::NoUser)
    } else if user.len() > MAX_USER_LEN {
        Err(Passthrough::BadUser)
    } else {
        Ok(user)
    }
}

/// The name of the tenancy stamp: a header name and a JSON member name.
///
/// Knowing a member is absent from a JSON object takes a scan of the whole object; a SIMD
/// substring search for `"name"` rules most payloads out first at a fraction of that cost.
/// (A member name spelled with `\u` escapes is therefore not recognised.)
#[derive(Debug, Clone)]
pub struct TenancyKey {
    name: String,
    step: [Step; 1],
    quoted: memchr::memmem::Finder<'static>,
}

impl TenancyKey {
    pub fn new(name: &str) -> Self {
        let quoted = format!("\"{name}\"").into_bytes();
        Self {
            name: name.to_owned(),
            step: [Step::new(name)],
            quoted: memchr::memmem::Finder::new(&quoted).into_owned(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// False when `payload` cannot hold a member of this name.
    pub fn may_be_in(&self, payload: &[u8]) -> bool {
        self.quoted.find(payload).is_some()
    }

    /// The span of this member's value at the top level of a JSON document.
    pub fn find_in(&self, payload: &[u8]) -> Found {
        if !self.may_be_in(payload) {
            return Found::NotFound;
        }
        json_scan::lookup(payload, &self.step)
    }
}

/// The upstream tenancy stamp of an event, if a producer library or gateway already set one:
/// the tenancy header, else the payload's top-level member found by [`TenancyKey::find_in`]
/// (`member`; pass [`Found::NotFound`] on routes that do not read JSON).
pub fn upstream_tenancy<'a, H: Headers + ?Sized>(
    record: &RecordView<'a, H>,
    key: &TenancyKey,
    member: Found,
) -> Option<Cow<'a, str>> {
    if let Some(v) = record.headers.last(key.as_str()) {
        return std::str::from_utf8(v).ok().filter(|s| !s.is_empty()).map(Cow::Borrowed);
    }
    let (Found::Value { start, end }, Some(payload)) = (member, record.payload) else { return None };
    let raw = std::str::from_utf8(payload.get(start..end)?).ok()?;
    json_scalar_text(raw).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestHeaders<'a> = [(&'a str, Option<&'a [u8]>)];

    fn view<'a>(
        key: Option<&'a [u8]>,
        payload: Option<&'a [u8]>,
        headers: &'a TestHeaders<'a>,
    ) -> RecordView<'a, TestHeaders<'a>> {
        RecordView { key, payload, headers }
    }

    fn ptr(p: &str) -> UserLocator {
        UserLocator::Json(JsonPointer::parse(p).unwrap())
    }

    #[test]
    fn header_last_value_wins() {
        let h: &[(&str, Option<&[u8]>)] = &[("x-user-id", Some(b"U0")), ("x-user-id", Some(b"U1"))];
        let r = view(None, None, h);
        assert_eq!(user(&UserLocator::Header("x-user-id".into()), &r).unwrap(), "U1");
        assert_eq!(user(&UserLocator::Header("other".into()), &r), Err(Passthrough::NoUser));
    }

    #[test]
    fn header_null_empty_and_binary() {
        let h: &[(&str, Option<&[u8]>)] = &[("a", None), ("b", Some(b"")), ("c", Some(&[0xff, 0xfe]))];
        let r = view(None, None, h);
        assert_eq!(user(&UserLocator::Header("a".into()), &r), Err(Passthrough::NoUser));
        assert_eq!(user(&UserLocator::Header("b".into()), &r), Err(Passthrough::NoUser));
        assert_eq!(user(&UserLocator::Header("c".into()), &r), Err(Passthrough::BadUser));
    }

    #[test]
    fn key_locator() {
        let h: &[(&str, Option<&[u8]>)] = &[];
        assert_eq!(user(&UserLocator::Key, &view(Some(b"U7"), None, h)).unwrap(), "U7");
        assert_eq!(user(&UserLocator::Key, &view(None, None, h)), Err(Passthrough::NoUser));
    }

    #[test]
    fn json_top_level_nested_and_cdc() {
        let h: &[(&str, Option<&[u8]>)] = &[];
        let p = br#"{"a":1,"user_id":"U1","x":[1,2]}"#;
        assert_eq!(user(&ptr("/user_id"), &view(None, Some(p), h)).unwrap(), "U1");
        let maxwell = br#"{"database":"shop","table":"orders","type":"insert","ts":1,"data":{"id":9,"user_id":"U2"}}"#;
        assert_eq!(user(&ptr("/data/user_id"), &view(None, Some(maxwell), h)).unwrap(), "U2");
        let arr = br#"{"users":[{"id":"A"},{"id":"B"}]}"#;
        assert_eq!(user(&ptr("/users/1/id"), &view(None, Some(arr), h)).unwrap(), "B");
        let numeric_key = br#"{"users":{"1":{"id":"C"}}}"#;
        assert_eq!(user(&ptr("/users/1/id"), &view(None, Some(numeric_key), h)).unwrap(), "C");
    }

    #[test]
    fn json_numbers_escapes_and_missing() {
        let h: &[(&str, Option<&[u8]>)] = &[];
        let r = |p: &'static [u8]| view(None, Some(p), h);
        assert_eq!(user(&ptr("/u"), &r(br#"{"u":12345}"#)).unwrap(), "12345");
        assert_eq!(user(&ptr("/u"), &r(br#"{"u":"a\"b\u0041"}"#)).unwrap(), "a\"bA");
        assert_eq!(user(&ptr("/u"), &r(br#"{"v":1}"#)), Err(Passthrough::NoUser));
        assert_eq!(user(&ptr("/u"), &r(br#"{"u":null}"#)), Err(Passthrough::NoUser));
        assert_eq!(user(&ptr("/u"), &r(br#"{"u":""}"#)), Err(Passthrough::NoUser));
        assert_eq!(user(&ptr("/u"), &r(br#"{"u":{"x":1}}"#)), Err(Passthrough::BadUser));
        assert_eq!(user(&ptr("/u"), &r(br#"{"u":true}"#)), Err(Passthrough::BadUser));
    }

    #[test]
    fn json_not_json() {
        let h: &[(&str, Option<&[u8]>)] = &[];
        let r = |p: &'static [u8]| view(None, Some(p), h);
        assert_eq!(user(&ptr("/u"), &r(b"\x00\x00\x00\x01avro")), Err(Passthrough::NotJson));
        assert_eq!(user(&ptr("/u"), &r(b"hello")), Err(Passthrough::NotJson));
        assert_eq!(user(&ptr("/u"), &view(None, None, h)), Err(Passthrough::NotJson));
    }

    #[test]
    fn pointer_parse_and_escapes() {
        assert_eq!(JsonPointer::parse("/a~1b/c~0d").unwrap().tokens(), ["a/b", "c~d"]);
        assert!(JsonPointer::parse("user_id").is_err());
        assert!(JsonPointer::parse("/a//b").is_err());
        assert!(JsonPointer::parse("/a~2").is_err());
        let h: &[(&str, Option<&[u8]>)] = &[];
        let p = br#"{"a/b":{"c~d":"U9"}}"#;
        assert_eq!(user(&ptr("/a~1b/c~0d"), &view(None, Some(p), h)).unwrap(), "U9");
    }

    #[test]
    fn upstream_from_header_then_payload() {
        let h: &[(&str, Option<&[u8]>)] = &[("event_tenancy", Some(b"U1_payment"))];
        let p = br#"{"event_tenancy":"U2_shipping"}"#;
        let key = TenancyKey::new("event_tenancy");
        let r = view(None, Some(p), h);
        assert_eq!(upstream_tenancy(&r, &key, key.find_in(p)).unwrap(), "U1_payment");
        let none: &[(&str, Option<&[u8]>)] = &[];
        let r = view(None, Some(p), none);
        assert_eq!(upstream_tenancy(&r, &key, key.find_in(p)).unwrap(), "U2_shipping");
        assert_eq!(upstream_tenancy(&r, &key, Found::NotFound), None);
        // Present only inside a nested object or a string: not a top-level stamp.
        let nested = br#"{"a":{"event_tenancy":"U3_x"},"b":"\"event_tenancy\""}"#;
        assert_eq!(key.find_in(nested), Found::NotFound);
    }
}
