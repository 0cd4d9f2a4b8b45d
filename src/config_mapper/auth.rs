//! Bearer tokens for writes. A token file holds one token per line:
//!
//! * `TOKEN`, or `name:TOKEN` — the name is who the audit records;
//! * `name:TOKEN:payment,shipping` — a token scoped to those services: it can whitelist users
//!   only for them, and change or remove only entries that hold nothing else;
//! * `name:TOKEN:SERVICES:pr-42,team-ledger-*` — also scoped to those environments (a name,
//!   or a prefix ending in `*`): it can place users, remove entries and end environments only
//!   there. `*` as SERVICES allows every service;
//! * `sha256=HEX` in place of `TOKEN` — the token's SHA-256, so the file need not hold the
//!   secret (`printf %s "$TOKEN" | sha256sum`).
//!
//! Comparison is constant-time, over every token.

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

/// Which services a token may whitelist users for, and in which environments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scope {
    /// `None`: every service.
    services: Option<Vec<String>>,
    /// `None`: every environment; else names, or prefixes ending in `*`.
    envs: Option<Vec<String>>,
}

impl Scope {
    pub const ALL: Self = Self { services: None, envs: None };

    pub fn of_services(services: Vec<String>) -> Self {
        Self { services: Some(services), envs: None }
    }

    pub fn with_envs(self, envs: Vec<String>) -> Self {
        Self { envs: Some(envs), ..self }
    }

    pub fn allows(&self, service: &str) -> bool {
        self.services.as_ref().is_none_or(|s| s.iter().any(|x| x == service))
    }

    /// Whether the token may place users in, or remove them from, environment `env`.
    pub fn allows_env(&self, env: &str) -> bool {
        self.envs.as_ref().is_none_or(|envs| {
            envs.iter().any(|e| match e.strip_suffix('*') {
                Some(prefix) => env.starts_with(prefix),
                None => e == env,
            })
        })
    }

    /// The services, when the token is scoped to some.
    pub fn services(&self) -> Option<&[String]> {
        self.services.as_deref()
    }

    /// The environments, when the token is scoped to some.
    pub fn envs(&self) -> Option<&[String]> {
        self.envs.as_deref()
    }

    pub fn is_all(&self) -> bool {
        self.services.is_none() && self.envs.is_none()
    }
}

/// What a token file line holds: the token itself, or its SHA-256.
#[derive(Clone)]
enum Secret {
    Plain(Vec<u8>),
    Sha256([u8; 32]),
}

#[derive(Clone)]
struct Token {
    name: String,
    secret: Secret,
    scope: Scope,
}

#[derive(Clone, Default)]
pub struct Tokens(Vec<Token>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_list().entries(self.0.iter().map(|t| (&t.name, &t.scope))).finish()
    }
}

pub enum Verdict<'a> {
    Allowed { who: &'a str, scope: &'a Scope },
    Missing,
    Wrong,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
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
            let mut fields = line.splitn(4, ':').map(str::trim);
            let (name, token, scope, envs) = match (fields.next(), fields.next(), fields.next(), fields.next()) {
                (Some(t), None, _, _) => ("token", t, None, None),
                (Some(n), Some(t), s, e) => (n, t, s, e),
                (None, ..) => continue,
            };
            if name.is_empty() {
                return Err((i + 1, "empty name before ':'"));
            }
            let secret = match token.strip_prefix("sha256=") {
                Some(hex) => Secret::Sha256(parse_hex(hex).ok_or((i + 1, "sha256= needs 64 hex digits"))?),
                None if token.len() < MIN_TOKEN_LEN => return Err((i + 1, "token shorter than 16 characters")),
                None => Secret::Plain(token.as_bytes().to_vec()),
            };
            let list = |s: &str| -> Vec<String> {
                s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(str::to_owned).collect()
            };
            let mut scope = match scope {
                None | Some("*") => Scope::ALL,
                Some(s) => {
                    let services = list(s);
                    if services.is_empty() {
                        return Err((i + 1, "empty service scope after the second ':'"));
                    }
                    Scope::of_services(services)
                }
            };
            if let Some(e) = envs {
                let envs = list(e);
                let valid = |e: &String| crate::environment::valid(e.strip_suffix('*').unwrap_or(e)) || e == "*";
                if envs.is_empty() || !envs.iter().all(valid) {
                    return Err((i + 1, "environment scope after the third ':' must list names or prefixes*"));
                }
                scope = scope.with_envs(envs);
            }
            out.push(Token { name: name.to_owned(), secret, scope });
        }
        Ok(Self(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first plain token, for a client that presents one.
    pub fn first(&self) -> Option<&str> {
        self.0.iter().find_map(|t| match &t.secret {
            Secret::Plain(p) => std::str::from_utf8(p).ok(),
            Secret::Sha256(_) => None,
        })
    }

    /// Checks an `Authorization` header value.
    pub fn check(&self, authorization: Option<&[u8]>) -> Verdict<'_> {
        let Some(presented) = authorization.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return Verdict::Missing;
        };
        let presented = presented.trim_ascii();
        let digest = sha256(presented);
        // Every token is compared, so timing does not tell which one (or whether any) matched.
        let mut found = None;
        for t in &self.0 {
            let same = match &t.secret {
                Secret::Plain(p) => p.as_slice().ct_eq(presented),
                Secret::Sha256(h) => h.as_slice().ct_eq(digest.as_slice()),
            };
            if bool::from(same) {
                found = Some(t);
            }
        }
        match found {
            Some(t) => Verdict::Allowed { who: &t.name, scope: &t.scope },
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
        assert!(matches!(t.check(Some(b"Bearer 0123456789abcdef0")), Verdict::Allowed { who: "alice", .. }));
        assert!(matches!(t.check(Some(b"Bearer 0123456789abcdefXYZ")), Verdict::Allowed { who: "token", .. }));
        assert!(matches!(t.check(Some(b"Bearer nope")), Verdict::Wrong));
        assert!(matches!(t.check(Some(b"Basic abc")), Verdict::Missing));
        assert!(matches!(t.check(None), Verdict::Missing));
        assert_eq!(Tokens::parse("short").unwrap_err().0, 1);
        assert!(format!("{t:?}").contains("alice") && !format!("{t:?}").contains("0123"));
    }

    #[test]
    fn scoped_and_hashed_tokens() {
        let computed: String = sha256(b"payments-team-secret-0001").iter().map(|b| format!("{b:02x}")).collect();
        let text = format!("pay:sha256={computed}:payment\nops:0123456789abcdef0:payment, shipping\n");
        let t = Tokens::parse(&text).unwrap();
        let Verdict::Allowed { who, scope } = t.check(Some(b"Bearer payments-team-secret-0001")) else {
            panic!("the hashed token was not accepted")
        };
        assert_eq!(who, "pay");
        assert!(scope.allows("payment") && !scope.allows("shipping"));
        let Verdict::Allowed { scope, .. } = t.check(Some(b"Bearer 0123456789abcdef0")) else { panic!() };
        assert_eq!(scope.services(), Some(&["payment".to_owned(), "shipping".to_owned()][..]));
        assert!(matches!(t.check(Some(computed.as_bytes())), Verdict::Missing));
        assert!(matches!(t.check(Some(format!("Bearer sha256={computed}").as_bytes())), Verdict::Wrong));
        assert_eq!(Tokens::parse("x:sha256=abc").unwrap_err().0, 1);
        assert_eq!(Tokens::parse("x:0123456789abcdef0: ,").unwrap_err().0, 1);
    }

    #[test]
    fn environment_scopes() {
        let t = Tokens::parse("ledger:0123456789abcdef0:*:team-ledger-*,pr-42\n").unwrap();
        let Verdict::Allowed { scope, .. } = t.check(Some(b"Bearer 0123456789abcdef0")) else { panic!() };
        assert!(scope.allows("anything") && scope.services().is_none());
        assert!(scope.allows_env("team-ledger-7") && scope.allows_env("pr-42"));
        assert!(!scope.allows_env("pr-43") && !scope.allows_env("rush"));
        assert!(Scope::ALL.allows_env("rush"));
        assert_eq!(Tokens::parse("x:0123456789abcdef0:*:Bad_Env").unwrap_err().0, 1);
        assert_eq!(Tokens::parse("x:0123456789abcdef0:payment:").unwrap_err().0, 1);
    }
}
