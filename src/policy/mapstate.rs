//! The compiled form of an endpoint's policy: entries shaped like Cilium's LPM policy map, so the
//! datapath writer copies them verbatim.
//!
//! Key: `{identity (0 = any peer), direction, protocol (0 = any), port, port prefix length}`. In the LPM
//! trie the identity and direction are always matched exactly; the protocol is either wildcarded (and then
//! the port too) or exact, followed by a port prefix of 0..=16 bits. The datapath looks an
//! `(identity, proto, port)` up twice — with the peer's identity and with identity 0 — and a deny from
//! either lookup wins; otherwise any allow allows. Deny precedence for entries of the *same* identity
//! (where LPM would prefer a more specific allow) is resolved here: allows covered by a deny are dropped.

use std::collections::BTreeMap;
use std::fmt;

use super::identity::NumericIdentity;
use super::ports::{port_mask, prefix_contains, proto};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress = 0,
    Egress = 1,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    pub identity: NumericIdentity,
    pub direction: Direction,
    /// IP protocol; 0 = any protocol and any port.
    pub protocol: u8,
    /// Port (or ICMP type), masked to `port_prefix_len` bits.
    pub port: u16,
    /// 0..=16; 0 with a protocol means every port of it.
    pub port_prefix_len: u8,
}

impl PolicyKey {
    /// Bits always matched exactly: identity (32) and direction (8).
    pub const STATIC_PREFIX_BITS: u32 = 40;

    pub fn l3(identity: NumericIdentity, direction: Direction) -> Self {
        Self { identity, direction, protocol: proto::ANY, port: 0, port_prefix_len: 0 }
    }

    pub fn l4(identity: NumericIdentity, direction: Direction, protocol: u8, port: u16, port_prefix_len: u8) -> Self {
        let port = port & port_mask(port_prefix_len);
        Self { identity, direction, protocol, port, port_prefix_len }
    }

    /// The LPM prefix length of this key (identity + direction + protocol + port bits).
    pub fn lpm_prefix_len(&self) -> u32 {
        if self.protocol == proto::ANY {
            Self::STATIC_PREFIX_BITS
        } else {
            Self::STATIC_PREFIX_BITS + 8 + u32::from(self.port_prefix_len)
        }
    }

    /// Whether this key's L4 part matches a packet's protocol and port.
    pub fn matches_l4(&self, protocol: u8, port: u16) -> bool {
        self.protocol == proto::ANY
            || (self.protocol == protocol && prefix_contains(self.port, self.port_prefix_len, port))
    }

    /// Whether every packet this key's L4 part matches is also matched by `other`'s (same direction).
    fn l4_covered_by(&self, other: &PolicyKey) -> bool {
        other.protocol == proto::ANY
            || (other.protocol == self.protocol
                && other.port_prefix_len <= self.port_prefix_len
                && prefix_contains(other.port, other.port_prefix_len, self.port))
    }
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peer = if self.identity == NumericIdentity::ANY { "any".to_string() } else { self.identity.to_string() };
        match self.protocol {
            proto::ANY => write!(f, "{} {peer} any", self.direction),
            p => write!(f, "{} {peer} {p}/{}/{}", self.direction, self.port, self.port_prefix_len),
        }
    }
}

/// Value of a policy map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyValue {
    pub deny: bool,
}

impl PolicyValue {
    pub const ALLOW: Self = Self { deny: false };
    pub const DENY: Self = Self { deny: true };
}

/// The verdict of a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// An explicit deny rule matched.
    Deny,
    /// Enforcing, and nothing allows it.
    DefaultDeny,
}

/// A set of policy map entries with deny precedence already applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    entries: BTreeMap<PolicyKey, PolicyValue>,
}

impl MapState {
    /// Builds the entries from raw allow and deny keys.
    pub fn build(allows: impl IntoIterator<Item = PolicyKey>, denies: impl IntoIterator<Item = PolicyKey>) -> Self {
        let mut entries: BTreeMap<PolicyKey, PolicyValue> =
            denies.into_iter().map(|k| (k, PolicyValue::DENY)).collect();
        let deny_keys: Vec<PolicyKey> = entries.keys().copied().collect();
        for key in allows {
            let shadowed = deny_keys.iter().any(|d| {
                d.direction == key.direction
                    && (d.identity == key.identity || d.identity == NumericIdentity::ANY)
                    && key.l4_covered_by(d)
            });
            if !shadowed {
                entries.entry(key).or_insert(PolicyValue::ALLOW);
            }
        }
        Self { entries }
    }

    pub fn entries(&self) -> &BTreeMap<PolicyKey, PolicyValue> {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The longest-prefix entry for one identity, as the LPM trie would return it.
    fn lpm(&self, direction: Direction, identity: NumericIdentity, protocol: u8, port: u16) -> Option<PolicyValue> {
        let lo = PolicyKey::l3(identity, direction);
        let hi = PolicyKey { protocol: u8::MAX, port: u16::MAX, port_prefix_len: u8::MAX, ..lo };
        self.entries
            .range(lo..=hi)
            .filter(|(k, _)| k.matches_l4(protocol, port))
            .max_by_key(|(k, _)| k.lpm_prefix_len())
            .map(|(_, v)| *v)
    }

    /// The datapath's decision for a packet, given that the direction is enforced.
    pub fn lookup(&self, direction: Direction, identity: NumericIdentity, protocol: u8, port: u16) -> Verdict {
        let specific = self.lpm(direction, identity, protocol, port);
        let wildcard = self.lpm(direction, NumericIdentity::ANY, protocol, port);
        match (specific, wildcard) {
            (Some(v), _) | (_, Some(v)) if v.deny => Verdict::Deny,
            (Some(_), _) | (_, Some(_)) => Verdict::Allow,
            (None, None) => Verdict::DefaultDeny,
        }
    }

    /// What to write to bring a map holding `self` to `target`: upserts (new or changed) then deletes.
    pub fn diff(&self, target: &MapState) -> MapDelta {
        let upserts =
            target.entries.iter().filter(|(k, v)| self.entries.get(k) != Some(v)).map(|(k, v)| (*k, *v)).collect();
        let deletes = self.entries.keys().filter(|k| !target.entries.contains_key(k)).copied().collect();
        MapDelta { upserts, deletes }
    }
}

/// An incremental policy map update.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapDelta {
    pub upserts: Vec<(PolicyKey, PolicyValue)>,
    pub deletes: Vec<PolicyKey>,
}

impl MapDelta {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // case tables
mod tests {
    use super::*;

    const IN: Direction = Direction::Ingress;
    const X: NumericIdentity = NumericIdentity(300);
    const Y: NumericIdentity = NumericIdentity(301);
    const ANY: NumericIdentity = NumericIdentity::ANY;

    #[test]
    fn lpm_prefix_lengths() {
        assert_eq!(PolicyKey::l3(X, IN).lpm_prefix_len(), 40);
        assert_eq!(PolicyKey::l4(X, IN, proto::TCP, 0, 0).lpm_prefix_len(), 48);
        assert_eq!(PolicyKey::l4(X, IN, proto::TCP, 80, 16).lpm_prefix_len(), 64);
        assert_eq!(PolicyKey::l4(X, IN, proto::TCP, 8081, 15).port, 8080, "ports are stored masked");
    }

    #[test]
    fn deny_wins_over_allow_in_every_shape() {
        let tcp80 = |id| PolicyKey::l4(id, IN, proto::TCP, 80, 16);
        let tcp_all = |id| PolicyKey::l4(id, IN, proto::TCP, 0, 0);
        // (allows, denies, probe identity, probe port, verdict)
        let cases: Vec<(Vec<PolicyKey>, Vec<PolicyKey>, NumericIdentity, u16, Verdict)> = vec![
            // L3 deny beats a more specific L3+L4 allow of the same identity.
            (vec![tcp80(X)], vec![PolicyKey::l3(X, IN)], X, 80, Verdict::Deny),
            // L4 deny for everyone beats an L3 allow.
            (vec![PolicyKey::l3(X, IN)], vec![tcp80(ANY)], X, 80, Verdict::Deny),
            (vec![PolicyKey::l3(X, IN)], vec![tcp80(ANY)], X, 81, Verdict::Allow),
            // L3+L4 deny beats an allow-all.
            (vec![PolicyKey::l3(ANY, IN)], vec![tcp80(X)], X, 80, Verdict::Deny),
            (vec![PolicyKey::l3(ANY, IN)], vec![tcp80(X)], Y, 80, Verdict::Allow),
            // Port-wildcard deny beats a port allow.
            (vec![tcp80(X)], vec![tcp_all(X)], X, 80, Verdict::Deny),
            // Nothing matches: default deny.
            (vec![tcp80(X)], vec![], Y, 80, Verdict::DefaultDeny),
            (vec![tcp80(X)], vec![], X, 80, Verdict::Allow),
        ];
        for (i, (allows, denies, id, port, want)) in cases.into_iter().enumerate() {
            let state = MapState::build(allows, denies);
            assert_eq!(state.lookup(IN, id, proto::TCP, port), want, "case {i}: {state:?}");
        }
    }

    #[test]
    fn covered_allows_are_dropped_and_diff_is_minimal() {
        let state = MapState::build(
            [PolicyKey::l4(X, IN, proto::TCP, 80, 16), PolicyKey::l4(Y, IN, proto::TCP, 80, 16)],
            [PolicyKey::l3(X, IN)],
        );
        assert_eq!(state.len(), 2, "X's allow is shadowed by X's deny: {state:?}");
        let next = MapState::build([PolicyKey::l4(Y, IN, proto::TCP, 80, 16)], []);
        let delta = state.diff(&next);
        assert_eq!(delta.upserts, vec![]);
        assert_eq!(delta.deletes, vec![PolicyKey::l3(X, IN)]);
        assert!(next.diff(&next).is_empty());
    }
}
