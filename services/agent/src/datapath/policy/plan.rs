//! Planning a change of an endpoint's entries: validating it (malformed keys, overlapping port
//! ranges) before anything is written, and ordering its writes so that no packet passes that
//! neither the old nor the new policy allows (see [`super`]).

use std::collections::BTreeMap;

use super::entry::{EntryChange, PolicyKey, Verdict};
use super::error::PolicyMapError;

/// One write of an update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    /// Add or change the entry of a key.
    Upsert(PolicyKey, Verdict),
    /// Remove the entry of a key.
    Delete(PolicyKey),
}

/// The writes turning `current` into `target`, in the safe order (see the docs of
/// [`super`]).
fn plan(current: &BTreeMap<PolicyKey, Verdict>, target: &BTreeMap<PolicyKey, Verdict>) -> Vec<Op> {
    let mut deny_upserts = Vec::new();
    let mut allow_upserts = Vec::new();
    let mut allow_deletes = Vec::new();
    let mut deny_deletes = Vec::new();
    for (key, verdict) in target {
        if current.get(key) != Some(verdict) {
            match verdict {
                Verdict::Deny => deny_upserts.push(Op::Upsert(*key, *verdict)),
                Verdict::Allow => allow_upserts.push(Op::Upsert(*key, *verdict)),
            }
        }
    }
    for (key, verdict) in current {
        if !target.contains_key(key) {
            match verdict {
                Verdict::Allow => allow_deletes.push(Op::Delete(*key)),
                Verdict::Deny => deny_deletes.push(Op::Delete(*key)),
            }
        }
    }
    let mut ops = deny_upserts;
    ops.extend(allow_deletes);
    ops.extend(deny_deletes);
    ops.extend(allow_upserts);
    ops
}

/// A key of `entries` (other than `key` and those `skip` names) in `key`'s group whose ports
/// overlap `key`'s, if any. Checks only the last range starting at or before `key`'s last
/// port: ranges of one group in `entries` do not overlap each other, so no earlier one can
/// reach further.
fn overlapping(
    entries: &BTreeMap<PolicyKey, Verdict>,
    key: &PolicyKey,
    skip: impl Fn(&PolicyKey) -> bool,
) -> Option<PolicyKey> {
    let (_, last) = key.ports()?;
    let group_start = PolicyKey {
        port: 1,
        end_port: 0,
        ..*key
    };
    let probe = PolicyKey {
        port: last,
        end_port: u16::MAX,
        ..*key
    };
    entries
        .range(group_start..=probe)
        .rev()
        .map(|(k, _)| *k)
        .find(|k| k != key && !skip(k))
        .filter(|k| k.overlaps(key))
}

/// The writes a change needs, validated: an invalid or overlapping key fails it before
/// anything is written. A delta costs O(k log n) for k named keys (no copy of the n entries);
/// a replace O(n log n).
pub(super) fn plan_change(
    endpoint: u32,
    current: &BTreeMap<PolicyKey, Verdict>,
    change: &EntryChange,
) -> Result<Vec<Op>, PolicyMapError> {
    let invalid = |reason| PolicyMapError::InvalidKey { endpoint, reason };
    let overlap = |new: &PolicyKey, existing: PolicyKey| PolicyMapError::Overlap {
        endpoint,
        new: *new,
        existing,
    };
    match change {
        EntryChange::Replace(target) => {
            for key in target.keys() {
                key.validate().map_err(invalid)?;
                if let Some(existing) = overlapping(target, key, |_| false) {
                    return Err(overlap(key, existing));
                }
            }
            Ok(plan(current, target))
        }
        EntryChange::Delta { upserts, deletes } => {
            // Deletes first, then upserts (a key in both ends up upserted).
            let mut named: BTreeMap<PolicyKey, Option<Verdict>> = BTreeMap::new();
            for key in deletes {
                named.insert(*key, None);
            }
            for (key, verdict) in upserts {
                key.validate().map_err(invalid)?;
                named.insert(*key, Some(*verdict));
            }
            let added: BTreeMap<PolicyKey, Verdict> = named
                .iter()
                .filter_map(|(k, v)| v.map(|v| (*k, v)))
                .collect();
            for key in added.keys() {
                // Against what stays of the current entries, and against the other upserts.
                let in_current = overlapping(current, key, |k| named.contains_key(k));
                if let Some(existing) = in_current.or_else(|| overlapping(&added, key, |_| false)) {
                    return Err(overlap(key, existing));
                }
            }
            let target: BTreeMap<PolicyKey, Verdict> = added
                .into_iter()
                .filter(|(k, v)| current.get(k) != Some(v))
                .collect();
            let gone: BTreeMap<PolicyKey, Verdict> = named
                .iter()
                .filter(|(_, v)| v.is_none())
                .filter_map(|(k, _)| current.get(k).map(|v| (*k, *v)))
                .collect();
            // `plan` over just the keys that change: `gone` as the current side of the
            // removals, `target` as the new side of the upserts.
            let mut ops = plan(&BTreeMap::new(), &target);
            let removals = plan(&gone, &BTreeMap::new());
            // Keep the safe order: deny upserts, removals (allows then denies), allow upserts.
            let split = ops
                .iter()
                .position(|op| matches!(op, Op::Upsert(_, Verdict::Allow)))
                .unwrap_or(ops.len());
            ops.splice(split..split, removals);
            Ok(ops)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::abi::Direction;

    #[test]
    fn overlapping_ranges_are_refused() {
        let k = |a, b| PolicyKey::range(Direction::Ingress, 300, 6, a, b);
        let current: BTreeMap<PolicyKey, Verdict> =
            [(k(1, 79), Verdict::Allow), (k(81, 1000), Verdict::Allow)].into();
        let ok = EntryChange::Delta {
            upserts: vec![(
                PolicyKey::port(Direction::Ingress, 300, 6, 80),
                Verdict::Deny,
            )],
            deletes: vec![],
        };
        assert!(plan_change(1, &current, &ok).is_ok());
        let bad = EntryChange::Delta {
            upserts: vec![(k(70, 90), Verdict::Deny)],
            deletes: vec![],
        };
        assert!(matches!(
            plan_change(1, &current, &bad),
            Err(PolicyMapError::Overlap { .. })
        ));
        // Deleting the overlapped key in the same delta makes it fine.
        let swap = EntryChange::Delta {
            upserts: vec![(k(70, 90), Verdict::Deny)],
            deletes: vec![k(1, 79), k(81, 1000)],
        };
        assert!(plan_change(1, &current, &swap).is_ok());
        // Another protocol, or the every-port key, does not overlap.
        let other = EntryChange::Delta {
            upserts: vec![
                (
                    PolicyKey::range(Direction::Ingress, 300, 17, 1, 100),
                    Verdict::Allow,
                ),
                (
                    PolicyKey::any_port(Direction::Ingress, 300, 6),
                    Verdict::Allow,
                ),
            ],
            deletes: vec![],
        };
        assert!(plan_change(1, &current, &other).is_ok());
        let replace =
            EntryChange::Replace([(k(1, 100), Verdict::Allow), (k(50, 60), Verdict::Deny)].into());
        assert!(plan_change(1, &BTreeMap::new(), &replace).is_err());
        // Two new keys overlapping each other in one delta.
        let both = EntryChange::Delta {
            upserts: vec![
                (k(2000, 2010), Verdict::Allow),
                (k(2005, 2020), Verdict::Allow),
            ],
            deletes: vec![],
        };
        assert!(plan_change(1, &current, &both).is_err());
    }

    /// A TCP key of ingress from identity 300 to port `port`.
    fn tcp(port: u16) -> PolicyKey {
        PolicyKey::port(Direction::Ingress, 300, 6, port)
    }

    /// The key of ingress from identity 300 to every TCP port.
    fn all_tcp() -> PolicyKey {
        PolicyKey::any_port(Direction::Ingress, 300, 6)
    }

    /// Every TCP port allowed but 80, and 22 allowed again (as its own key).
    fn tcp_policy() -> BTreeMap<PolicyKey, Verdict> {
        [
            (all_tcp(), Verdict::Allow),
            (tcp(80), Verdict::Deny),
            (tcp(22), Verdict::Allow),
        ]
        .into()
    }

    #[test]
    fn writes_never_open_a_gap() {
        let all = all_tcp();
        let current = tcp_policy();
        let target: BTreeMap<PolicyKey, Verdict> = [
            (tcp(443), Verdict::Allow),
            (tcp(22), Verdict::Deny),
            (tcp(8080), Verdict::Deny),
        ]
        .into();
        let ops = plan(&current, &target);
        assert_eq!(
            ops,
            vec![
                // New and changed denies first, ...
                Op::Upsert(tcp(22), Verdict::Deny),
                Op::Upsert(tcp(8080), Verdict::Deny),
                // ... then allows go (the broad one before the deny under it), ...
                Op::Delete(all),
                Op::Delete(tcp(80)),
                // ... then new allows.
                Op::Upsert(tcp(443), Verdict::Allow),
            ]
        );
        assert!(plan(&target, &target).is_empty());
    }

    #[test]
    fn deltas_write_only_what_changes_in_the_safe_order() {
        let all = all_tcp();
        let current = tcp_policy();
        let change = EntryChange::Delta {
            upserts: vec![
                (tcp(443), Verdict::Allow),
                (tcp(22), Verdict::Deny),
                (tcp(8080), Verdict::Deny),
                (tcp(80), Verdict::Deny),
            ],
            deletes: vec![all, tcp(80), tcp(9999)],
        };
        let ops = plan_change(1, &current, &change).expect("valid");
        assert_eq!(
            ops,
            vec![
                Op::Upsert(tcp(22), Verdict::Deny),
                Op::Upsert(tcp(8080), Verdict::Deny),
                Op::Delete(all),
                Op::Upsert(tcp(443), Verdict::Allow),
            ],
            "tcp(80) is deleted and upserted unchanged: no write; 9999 is not there"
        );
        // The same as replacing with the resulting set.
        let target: BTreeMap<PolicyKey, Verdict> = [
            (tcp(80), Verdict::Deny),
            (tcp(22), Verdict::Deny),
            (tcp(443), Verdict::Allow),
            (tcp(8080), Verdict::Deny),
        ]
        .into();
        assert_eq!(plan(&current, &target), ops);
    }
}
