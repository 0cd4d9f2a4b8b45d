//! The decision: for one event and each service of its route, Rush or production.
//! And the stamp that marks a Rush copy: `event_tenancy = {user}_{service}`.
//!
//! Pure. A decision is made once per event from one snapshot; every output of that event is
//! built from the same [`Decision`], which is what keeps "exactly one of prod/Rush" true.

use std::borrow::Cow;

use crate::config::{Route, UpstreamStamps};
use crate::environment::{self, Env};
use crate::extract::{self, Headers, Passthrough, RecordView, TenancyKey, UserLocator};
use crate::json_scan::Found;
use crate::splice::splice_for;
pub use crate::splice::{Splice, plan_splice, stamp_payload};
use crate::whitelist::Whitelist;

/// A set of a route's services, by index into `Route::services` (at most 64 per route).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServiceSet(u64);

impl ServiceSet {
    pub const EMPTY: Self = Self(0);

    pub fn contains(self, i: usize) -> bool {
        i < 64 && self.0 & (1 << i) != 0
    }
    pub fn insert(&mut self, i: usize) {
        if i < 64 {
            self.0 |= 1 << i;
        }
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }
    /// The indices in the set, ascending.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..64).filter(move |i| self.contains(*i))
    }
}

/// Why the decision came out as it did; the relay counts each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The user was found and looked up (whitelisted for some, all or none of the services).
    Whitelist,
    /// The event already carried a tenancy stamp: it names the services; the route's
    /// `upstream_stamps` policy says whether the whitelist must hold each (user, service).
    Upstream,
    /// The event is production traffic without a lookup.
    Passthrough(Passthrough),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'a> {
    /// Services whose copy goes to the Rush cluster; every other service's copy goes to prod.
    pub rush: ServiceSet,
    /// The user the Rush copies are stamped for (present whenever `rush` is not empty).
    pub user: Option<Cow<'a, str>>,
    pub reason: Reason,
    /// Present when the route stamps payloads and `rush` is not empty.
    pub splice: Option<Splice>,
    /// Services an upstream stamp named for a (user, service) the whitelist does not hold:
    /// their copies stay on prod, and are counted.
    pub rejected: ServiceSet,
    /// The environment of each Rush copy.
    pub envs: Envs,
}

/// The environment of each service of a decision's Rush copies: the default one unless named
/// here. Empty (no allocation) for every event that stays in production or in the default
/// environment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envs(Vec<(usize, Env)>);

impl Envs {
    /// The environment of service `i`'s Rush copy.
    pub fn of(&self, i: usize) -> &str {
        self.0.iter().find(|(j, _)| *j == i).map_or(environment::DEFAULT, |(_, e)| e)
    }

    fn keep(&mut self, services: ServiceSet) {
        self.0.retain(|(i, _)| services.contains(*i));
    }
}

/// The cluster one output of an event goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cluster {
    Prod,
    Rush,
}

impl Cluster {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prod => "prod",
            Self::Rush => "rush",
        }
    }
}

impl Decision<'_> {
    fn prod(reason: Reason) -> Self {
        Self {
            rush: ServiceSet::EMPTY,
            user: None,
            reason,
            splice: None,
            rejected: ServiceSet::EMPTY,
            envs: Envs::default(),
        }
    }

    /// The one cluster that receives service `i`'s copy: the whole invariant in one place.
    pub fn cluster(&self, i: usize) -> Cluster {
        if self.rush.contains(i) { Cluster::Rush } else { Cluster::Prod }
    }
}

/// What an event's decision depends on besides the whitelist, found once per event: the user
/// to look up, or a decision that needs no whitelist (an upstream stamp, production traffic).
/// Lookup mode finds it before asking the Config Mapper and decides with it afterwards, so a
/// record's user is extracted once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject<'a> {
    kind: SubjectKind<'a>,
    /// Where the stamp member is in the payload (payload and JSON routes only).
    member: Found,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SubjectKind<'a> {
    User(Cow<'a, str>),
    /// An upstream stamp naming `named` of the route's services for `user`; with `verify`,
    /// honoured only where the whitelist holds the pair.
    Stamped {
        user: Option<Cow<'a, str>>,
        named: ServiceSet,
        verify: bool,
    },
    Passthrough(Passthrough),
}

impl Subject<'_> {
    /// The user whose whitelist entry decides; `None` when the whitelist is not consulted.
    pub fn user(&self) -> Option<&str> {
        match &self.kind {
            SubjectKind::User(u) => Some(u),
            SubjectKind::Stamped { user: Some(u), named, verify: true } if !named.is_empty() => Some(u),
            _ => None,
        }
    }

    /// Detached from the record it was found in (for a record that waits for a lookup).
    pub fn into_owned(self) -> Subject<'static> {
        let own = |c: Cow<'_, str>| Cow::Owned(c.into_owned());
        let kind = match self.kind {
            SubjectKind::User(u) => SubjectKind::User(own(u)),
            SubjectKind::Stamped { user, named, verify } => SubjectKind::Stamped { user: user.map(own), named, verify },
            SubjectKind::Passthrough(p) => SubjectKind::Passthrough(p),
        };
        Subject { kind, member: self.member }
    }
}

/// Finds the [`Subject`] of `record` of `route`. `key` names the tenancy stamp (header and
/// JSON member).
pub fn subject<'a, H: Headers + ?Sized>(route: &Route, record: &RecordView<'a, H>, key: &TenancyKey) -> Subject<'a> {
    let json_route = route.stamp.payload() || matches!(route.user, UserLocator::Json(_));
    // One search for the stamp member serves both the upstream check and the splice plan.
    let member = match record.payload {
        Some(p) if json_route => key.find_in(p),
        _ => Found::NotFound,
    };
    let stamp = match route.upstream_stamps {
        UpstreamStamps::Ignore => None,
        UpstreamStamps::Verify | UpstreamStamps::Trust => extract::upstream_tenancy(record, key, member),
    };
    let kind = match stamp {
        Some(stamp) => {
            let (named, user) = upstream_services(route, &stamp);
            let verify = route.upstream_stamps == UpstreamStamps::Verify;
            SubjectKind::Stamped { user: user.map(|u| Cow::Owned(u.to_owned())), named, verify }
        }
        None => match extract::user(&route.user, record) {
            Ok(u) => SubjectKind::User(u),
            Err(p) => SubjectKind::Passthrough(p),
        },
    };
    Subject { kind, member }
}

/// Decides `record` of `route` against `whitelist` at `now_ms`.
///
/// `key` names the tenancy stamp (header and JSON member).
pub fn decide<'a, H: Headers + ?Sized, W: Whitelist + ?Sized>(
    route: &Route,
    record: &RecordView<'a, H>,
    whitelist: &W,
    now_ms: i64,
    key: &TenancyKey,
) -> Decision<'a> {
    decide_subject(route, record.payload, subject(route, record, key), whitelist, now_ms)
}

/// Decides an event whose [`Subject`] is known; `payload` is the event's (for the splice).
pub fn decide_subject<'a, W: Whitelist + ?Sized>(
    route: &Route,
    payload: Option<&[u8]>,
    subject: Subject<'a>,
    whitelist: &W,
    now_ms: i64,
) -> Decision<'a> {
    let mut rejected = ServiceSet::EMPTY;
    // A trusted stamp names no environment: its copies go to the default one.
    let (rush, envs, user, reason) = match subject.kind {
        SubjectKind::Stamped { user, named, verify: false } => (named, Envs::default(), user, Reason::Upstream),
        SubjectKind::Stamped { user, named, verify: true } => {
            let (held, mut envs) =
                user.as_deref().map_or_else(Default::default, |u| whitelisted(route, whitelist, u, now_ms));
            let rush = ServiceSet(named.0 & held.0);
            rejected = ServiceSet(named.0 & !held.0);
            envs.keep(rush);
            (rush, envs, user, Reason::Upstream)
        }
        SubjectKind::Passthrough(p) => return Decision::prod(Reason::Passthrough(p)),
        SubjectKind::User(user) => {
            let (rush, envs) = whitelisted(route, whitelist, &user, now_ms);
            (rush, envs, Some(user), Reason::Whitelist)
        }
    };
    if rush.is_empty() {
        return Decision { rush, user, reason, splice: None, rejected, envs };
    }
    let splice = if route.stamp.payload() {
        match splice_for(payload, subject.member) {
            Ok(s) => Some(s),
            // A Rush copy we cannot stamp would reach Rush unmarked; keep the event in prod.
            Err(p) => return Decision::prod(Reason::Passthrough(p)),
        }
    } else {
        None
    };
    Decision { rush, user, reason, splice, rejected, envs }
}

/// The route's services the whitelist places `user` in at `now_ms`, and where.
fn whitelisted<W: Whitelist + ?Sized>(route: &Route, whitelist: &W, user: &str, now_ms: i64) -> (ServiceSet, Envs) {
    let mut set = ServiceSet::EMPTY;
    let mut envs = Envs::default();
    let Some(entry) = whitelist.entry(user) else { return (set, envs) };
    for (i, s) in route.services.iter().enumerate() {
        if let Some(p) = entry.placement_of(&s.name, now_ms) {
            set.insert(i);
            if !environment::is_default(&p.env) {
                envs.0.push((i, p.env.clone()));
            }
        }
    }
    (set, envs)
}

/// Reads an upstream stamp: one or more comma-separated `{user}_{service}` values.
/// Returns the route's services it names and the user they name (items naming another user
/// than the first are ignored). An item names one service: the longest of the route's service
/// names it ends with, so with `payment` and `order_payment`, `U1_order_payment` is U1's
/// `order_payment`, never `U1_order`'s `payment`.
fn upstream_services<'s>(route: &Route, stamp: &'s str) -> (ServiceSet, Option<&'s str>) {
    let mut named = ServiceSet::EMPTY;
    let mut user = None;
    for item in stamp.split(',').map(str::trim) {
        let longest = route
            .services
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let u = item.strip_suffix(s.name.as_str())?.strip_suffix('_').filter(|u| !u.is_empty())?;
                Some((s.name.len(), i, u))
            })
            .max_by_key(|(len, _, _)| *len);
        let Some((_, i, u)) = longest else { continue };
        if user.is_some_and(|prev| prev != u) {
            continue;
        }
        user = Some(u);
        named.insert(i);
    }
    (named, user)
}

/// `{user}_{service}`, the blog's `U1_S1`.
pub fn tenancy_value(user: &str, service: &str, out: &mut String) {
    out.clear();
    out.reserve(user.len() + 1 + service.len());
    out.push_str(user);
    out.push('_');
    out.push_str(service);
}

#[cfg(test)]
#[path = "tenancy_tests.rs"]
mod tests;
