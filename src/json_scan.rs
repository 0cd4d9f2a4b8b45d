//! A lazy JSON pointer lookup over raw bytes: walks only the path to the wanted value and skips
//! everything else without building anything.
//!
//! Why not a general parser: the bridge reads one small value out of documents it otherwise
//! passes on untouched, once per event. Skipping a string is one SIMD `memchr2` for the closing
//! quote; nothing is validated beyond what the walk reads, so a document broken after the wanted
//! value still yields it (the bytes go on unchanged either way).

use memchr::memchr2;

/// A step of a pointer: an object member, or an array index (a numeric token, which RFC 6901
/// also allows as a member name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub key: String,
    pub index: Option<usize>,
}

impl Step {
    pub fn new(key: &str) -> Self {
        let index = key.parse::<usize>().ok().filter(|_| key == "0" || !key.starts_with('0'));
        Self { key: key.to_owned(), index }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The value's bytes, `start..end` in the document.
    Value {
        start: usize,
        end: usize,
    },
    NotFound,
    /// The walk met bytes that are not JSON.
    Invalid,
}

/// Finds the value at `path` in `doc`.
pub fn lookup(doc: &[u8], path: &[Step]) -> Found {
    let mut s = Scanner { doc, i: 0 };
    match s.find(path) {
        Ok(f) => f,
        Err(Bad) => Found::Invalid,
    }
}

struct Bad;

struct Scanner<'a> {
    doc: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.doc.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Result<u8, Bad> {
        self.ws();
        self.doc.get(self.i).copied().ok_or(Bad)
    }

    fn expect(&mut self, b: u8) -> Result<(), Bad> {
        if self.peek()? == b {
            self.i += 1;
            Ok(())
        } else {
            Err(Bad)
        }
    }

    fn find(&mut self, path: &[Step]) -> Result<Found, Bad> {
        let Some((step, rest)) = path.split_first() else {
            let start = {
                self.ws();
                self.i
            };
            self.skip_value()?;
            return Ok(Found::Value { start, end: self.i });
        };
        match self.peek()? {
            b'{' => {
                self.i += 1;
                if self.peek()? == b'}' {
                    return Ok(Found::NotFound);
                }
                loop {
                    let (ks, ke, escaped) = self.string()?;
                    self.expect(b':')?;
                    if key_eq(&self.doc[ks..ke], escaped, &step.key) {
                        return self.find(rest);
                    }
                    self.skip_value()?;
                    match self.peek()? {
                        b',' => self.i += 1,
                        b'}' => return Ok(Found::NotFound),
                        _ => return Err(Bad),
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let Some(want) = step.index else { return Ok(Found::NotFound) };
                if self.peek()? == b']' {
                    return Ok(Found::NotFound);
                }
                let mut n = 0;
                loop {
                    if n == want {
                        return self.find(rest);
                    }
                    self.skip_value()?;
                    n += 1;
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => return Ok(Found::NotFound),
                        _ => return Err(Bad),
                    }
                }
            }
            // A scalar has no members; it must still be a well-formed one to count as JSON.
            _ => self.skip_value().map(|()| Found::NotFound),
        }
    }

    /// A string at the cursor; returns its contents' span and whether it holds escapes.
    fn string(&mut self) -> Result<(usize, usize, bool), Bad> {
        self.expect(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            let at = self.i + memchr2(b'"', b'\\', &self.doc[self.i..]).ok_or(Bad)?;
            if self.doc[at] == b'"' {
                self.i = at + 1;
                return Ok((start, at, escaped));
            }
            escaped = true;
            self.i = at + 2;
            if self.i > self.doc.len() {
                return Err(Bad);
            }
        }
    }

    fn skip_value(&mut self) -> Result<(), Bad> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' | b'[' => self.skip_container(),
            b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                let start = self.i;
                while let Some(b) = self.doc.get(self.i) {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
                        break;
                    }
                    self.i += 1;
                }
                scalar_ok(&self.doc[start..self.i]).then_some(()).ok_or(Bad)
            }
            _ => Err(Bad),
        }
    }

    /// Skips a whole object or array by bracket depth, stepping over strings.
    fn skip_container(&mut self) -> Result<(), Bad> {
        let mut depth = 0usize;
        while let Some(&b) = self.doc.get(self.i) {
            match b {
                b'"' => {
                    self.string()?;
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth = depth.checked_sub(1).ok_or(Bad)?;
                    if depth == 0 {
                        self.i += 1;
                        return Ok(());
                    }
                }
                _ => {}
            }
            self.i += 1;
        }
        Err(Bad)
    }
}

fn scalar_ok(s: &[u8]) -> bool {
    match s {
        b"true" | b"false" | b"null" => true,
        [b'-', rest @ ..] => rest.first().is_some_and(u8::is_ascii_digit) && number_tail(rest),
        [d, ..] if d.is_ascii_digit() => number_tail(s),
        _ => false,
    }
}

fn number_tail(s: &[u8]) -> bool {
    s.iter().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
}

fn key_eq(raw: &[u8], escaped: bool, want: &str) -> bool {
    if !escaped {
        return raw == want.as_bytes();
    }
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted).is_ok_and(|k| k == want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn path(p: &[&str]) -> Vec<Step> {
        p.iter().map(|s| Step::new(s)).collect()
    }

    fn get<'a>(doc: &'a str, p: &[&str]) -> Option<&'a str> {
        match lookup(doc.as_bytes(), &path(p)) {
            Found::Value { start, end } => Some(&doc[start..end]),
            _ => None,
        }
    }

    #[test]
    fn walks_objects_arrays_and_escapes() {
        let d = r#" { "a" : {"b":[10, {"c" : "x\"y"}]}, "k\u0041":true, "1":{"z":null} } "#;
        assert_eq!(get(d, &["a", "b", "0"]), Some("10"));
        assert_eq!(get(d, &["a", "b", "1", "c"]), Some(r#""x\"y""#));
        assert_eq!(get(d, &["kA"]), Some("true"));
        assert_eq!(get(d, &["1", "z"]), Some("null"));
        assert_eq!(get(d, &["a"]), Some(r#"{"b":[10, {"c" : "x\"y"}]}"#));
        assert_eq!(lookup(d.as_bytes(), &path(&["a", "b", "2"])), Found::NotFound);
        assert_eq!(lookup(d.as_bytes(), &path(&["nope"])), Found::NotFound);
        assert_eq!(lookup(d.as_bytes(), &path(&["a", "b", "0", "deeper"])), Found::NotFound);
    }

    #[test]
    fn broken_documents_are_invalid() {
        for d in [
            "",
            "x",
            "not json at all",
            "nul",
            "{",
            r#"{"a" 1}"#,
            r#"{"a":tru}"#,
            r#"{"a":"open}"#,
            r#"{"a":[1,2}"#,
            "{\"a\":1 \"b\":2}",
        ] {
            assert_eq!(lookup(d.as_bytes(), &path(&["b"])), Found::Invalid, "{d:?}");
        }
    }

    fn arb_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            // Floats that survive serde_json's text round trip exactly.
            (-1000i32..1000, 0u8..4).prop_map(|(m, e)| serde_json::json!(m as f64 * 10f64.powi(e as i32) + 0.5)),
            "[a-c\"\\\\/\u{e9}\n]{0,6}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-c0-2\"]{1,3}", inner, 0..5)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Agrees with serde_json's RFC 6901 pointer on every path into random documents.
        #[test]
        fn agrees_with_serde_json(v in arb_value(), p in prop::collection::vec("[a-c0-2\"]{1,3}", 1..4), pretty in any::<bool>()) {
            let doc = if pretty { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) }.unwrap();
            let pointer: String = p.iter().map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1"))).collect();
            let want = v.pointer(&pointer);
            let steps: Vec<Step> = p.iter().map(|s| Step::new(s)).collect();
            match lookup(doc.as_bytes(), &steps) {
                Found::Value { start, end } => {
                    let got: serde_json::Value = serde_json::from_str(&doc[start..end]).unwrap();
                    prop_assert_eq!(Some(&got), want);
                }
                Found::NotFound => prop_assert_eq!(want, None),
                Found::Invalid => prop_assert!(false, "valid document reported invalid: {}", doc),
            }
        }
    }
}
