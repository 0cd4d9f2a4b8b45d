//! Bearer tokens for writes. A token file holds one token per line, optionally named
//! (`name:token`); the name is who the audit records. Comparison is constant-time.

use std::path::Path;

use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("token file {path}, line {line}: {reason}")]
    Invalid { path: String, line: usize, reason: &'static str },
}

/// Shortest token accepted: a bearer token is a password.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Clone, Default)]
pub struct Tokens(Vec<(String, Vec<u8>)>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_list().entries(self.0.iter().map(|(n, _)| n)).finish()
    }
}

pub enum Verdict<'a> {
    Allowed { who: &'a str },
    Missing,
    Wrong,
}

impl Tokens {
    pub fn none() -> Self {
        Self(Vec::new())
    }

    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read { path: p.clone(), source })?;
        Self::parse(&text).map_err(|(line, reason)| TokenError::Invalid { path: p, line, reason })
    }

    pub fn parse(text: &str) -> Result<Self, (usize, &'static str)> {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, token) = match line.split_once(':') {
                Some((n, t)) => (n.trim(), t.trim()),
                None => ("token", line),
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err((i + 1, "token shorter than 16 characters"));
            }
            if name.is_empty() {
                return Err((i + 1, "empty name before ':'"));
            }
            out.push((name.to_owned(), token.as_bytes().to_vec()));
        }
        Ok(Self(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first token, for a client that presents one.
    pub fn first(&self) -> Option<&str> {
        self.0.first().and_then(|(_, t)| std::str::from_utf8(t).ok())
    }

    /// Checks an `Authorization` header value.
    pub fn check(&self, authorization: Option<&[u8]>) -> Verdict<'_> {
        let Some(presented) = authorization.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return Verdict::Missing;
        };
        let presented = presented.trim_ascii();
        // Every token is compared, so timing does not tell which one (or whether any) matched.
        let mut who = None;
        for (name, token) in &self.0 {
            if bool::from(token.as_slice().ct_eq(presented)) {
                who = Some(name.as_str());
            }
        }
        match who {
            Some(who) => Verdict::Allowed { who },
            None => Verdict::Wrong,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_and_plain_tokens() {
        let t = Tokens::parse("# qa team\nalice:0123456789abcdef0\n0123456789abcdefXYZ\n").unwrap();
        assert!(matches!(t.check(Some(b"Bearer 0123456789abcdef0")), Verdict::Allowed { who: "alice" }));
        assert!(matches!(t.check(Some(b"Bearer 0123456789abcdefXYZ")), Verdict::Allowed { who: "token" }));
        assert!(matches!(t.check(Some(b"Bearer nope")), Verdict::Wrong));
        assert!(matches!(t.check(Some(b"Basic abc")), Verdict::Missing));
        assert!(matches!(t.check(None), Verdict::Missing));
        assert_eq!(Tokens::parse("short").unwrap_err().0, 1);
        assert!(format!("{t:?}").contains("alice") && !format!("{t:?}").contains("0123"));
    }
}
