//! Pools (Cilium's cluster-pool): per family, cluster CIDRs carved into per-node blocks of
//! one mask size. Validation of a pool's configuration, block enumeration and the reserved
//! addresses of a block. Pure; no I/O.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::error::InvalidField;
use crate::prefix::{Family, IpPrefix};
use kino_api::quote::quote;

/// The pool used when a request names none.
pub const DEFAULT_POOL: &str = "default";
/// Longest pool name (it is a datastore namespace).
pub const MAX_POOL_NAME: usize = 63;
/// Longest node name (a datastore name, less room for nothing: names are used as is).
pub const MAX_NODE_NAME: usize = 253;

/// One family of a pool: its cluster CIDRs and the size of each node's block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyPool {
    /// Cluster CIDRs, in the order given (blocks are handed out in this order).
    pub cidrs: Vec<IpPrefix>,
    /// Prefix length of each node block.
    pub node_mask: u8,
}

impl FamilyPool {
    /// The family (of the first CIDR; validation makes them all the same).
    pub fn family(&self) -> Family {
        self.cidrs
            .first()
            .map(IpPrefix::family)
            .unwrap_or(Family::V4)
    }

    /// How many node blocks the CIDRs hold, saturating at `u128::MAX`.
    pub fn block_count(&self) -> u128 {
        self.cidrs
            .iter()
            .map(|c| c.subnet_count(self.node_mask).unwrap_or(u128::MAX))
            .fold(0u128, u128::saturating_add)
    }

    /// Addresses that can be handed out in one block (all but network, gateway, broadcast).
    pub fn assignable_per_block(&self) -> u128 {
        assignable_in(self.family(), self.node_mask)
    }

    /// Whether `block` is one of this family's node blocks.
    pub fn is_block(&self, block: &IpPrefix) -> bool {
        block.prefix_len() == self.node_mask && self.cidrs.iter().any(|c| c.contains_prefix(block))
    }

    /// The first block (in CIDR order, then address order) that is not in `claimed`.
    pub fn first_free_block(&self, claimed: &BTreeSet<IpPrefix>) -> Option<IpPrefix> {
        for cidr in &self.cidrs {
            let count = cidr.subnet_count(self.node_mask).unwrap_or(u128::MAX);
            let first = cidr.subnet(self.node_mask, 0)?;
            // Claimed blocks inside this CIDR, in address order: the first gap is free.
            let mut next: u128 = 0;
            for block in claimed.range(first..) {
                if !cidr.contains_prefix(block) {
                    break;
                }
                if block.prefix_len() != self.node_mask {
                    continue;
                }
                match cidr.subnet_index(block) {
                    Some(index) if index == next => next += 1,
                    Some(index) if index > next => break,
                    _ => {}
                }
            }
            if next < count {
                return cidr.subnet(self.node_mask, next);
            }
        }
        None
    }
}

/// Addresses that can be handed out in a block of `mask` bits: every address but the
/// network (first), gateway (second) and broadcast (last) ones. Saturates for huge blocks.
pub fn assignable_in(family: Family, mask: u8) -> u128 {
    let host = family.bits() - mask;
    if host >= 128 {
        return u128::MAX;
    }
    (1u128 << host).saturating_sub(3)
}

/// Which reserved address of a block an address is, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reserved {
    /// The block's first address.
    Network,
    /// The block's second address, held by the node's kino_host device.
    Gateway,
    /// The block's last address.
    Broadcast,
}

impl Reserved {
    /// How an operator would call it.
    pub fn describe(self) -> &'static str {
        match self {
            Reserved::Network => "the network address",
            Reserved::Gateway => "the gateway address (held by the node's kino_host)",
            Reserved::Broadcast => "the broadcast (last) address",
        }
    }
}

/// Whether `addr` is a reserved address of `block` (which must contain it).
pub fn reserved(block: &IpPrefix, addr: IpAddr) -> Option<Reserved> {
    let offset = block.offset_of(addr)?;
    let size = block.size().unwrap_or(u128::MAX);
    match offset {
        0 => Some(Reserved::Network),
        1 => Some(Reserved::Gateway),
        o if o == size - 1 => Some(Reserved::Broadcast),
        _ => None,
    }
}

/// The gateway address of a block: its first host address, as Cilium's cluster-pool gives
/// .1 to cilium_host.
pub fn gateway_of(block: &IpPrefix) -> IpAddr {
    block.addr_at(1).unwrap_or_else(|| block.network())
}

/// Where a pool is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolPhase {
    /// Written, being checked for overlaps.
    Creating,
    /// In use.
    Ready,
    /// DeletePool is checking it is empty.
    Deleting,
}

/// A validated pool configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Pool name.
    pub name: String,
    /// IPv4 part, if any.
    pub ipv4: Option<FamilyPool>,
    /// IPv6 part, if any.
    pub ipv6: Option<FamilyPool>,
}

/// A family's configuration as given by a client, before validation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawFamily {
    /// CIDR texts.
    pub cidrs: Vec<String>,
    /// Per-node mask size.
    pub node_mask_size: u32,
}

impl PoolConfig {
    /// Validates a pool as given by a client. Field names are relative to `field` (e.g.
    /// "pool"), so errors read `pool.ipv4.cidrs[1]: ...`.
    pub fn validate(
        field: &str,
        name: &str,
        ipv4: Option<&RawFamily>,
        ipv6: Option<&RawFamily>,
    ) -> Result<PoolConfig, InvalidField> {
        validate_pool_name(&format!("{field}.name"), name)?;
        if ipv4.is_none() && ipv6.is_none() {
            return Err(InvalidField::new(
                format!("{field}.ipv4"),
                "a pool needs at least one family: set ipv4 and/or ipv6",
            ));
        }
        let ipv4 = ipv4
            .map(|raw| validate_family(&format!("{field}.ipv4"), Family::V4, raw))
            .transpose()?;
        let ipv6 = ipv6
            .map(|raw| validate_family(&format!("{field}.ipv6"), Family::V6, raw))
            .transpose()?;
        Ok(PoolConfig {
            name: name.to_owned(),
            ipv4,
            ipv6,
        })
    }

    /// The part of one family, if the pool has it.
    pub fn family(&self, family: Family) -> Option<&FamilyPool> {
        match family {
            Family::V4 => self.ipv4.as_ref(),
            Family::V6 => self.ipv6.as_ref(),
        }
    }

    /// The families the pool has, IPv4 first.
    pub fn families(&self) -> impl Iterator<Item = (Family, &FamilyPool)> {
        Family::ALL
            .into_iter()
            .filter_map(|f| self.family(f).map(|p| (f, p)))
    }

    /// Every cluster CIDR of the pool.
    pub fn cidrs(&self) -> impl Iterator<Item = &IpPrefix> {
        self.families().flat_map(|(_, p)| p.cidrs.iter())
    }

    /// A CIDR of this pool that overlaps one of `other`'s, if any: (ours, theirs).
    pub fn overlap_with(&self, other: &PoolConfig) -> Option<(IpPrefix, IpPrefix)> {
        self.cidrs().find_map(|ours| {
            other
                .cidrs()
                .find(|theirs| ours.overlaps(theirs))
                .map(|theirs| (*ours, *theirs))
        })
    }

    /// The pool's family part that `block` belongs to, if it is one of its node blocks.
    pub fn block_family(&self, block: &IpPrefix) -> Option<&FamilyPool> {
        self.family(block.family()).filter(|p| p.is_block(block))
    }
}

fn validate_family(
    field: &str,
    family: Family,
    raw: &RawFamily,
) -> Result<FamilyPool, InvalidField> {
    if raw.cidrs.is_empty() {
        return Err(InvalidField::new(
            format!("{field}.cidrs"),
            format!("at least one {family} CIDR is required"),
        ));
    }
    let mut cidrs: Vec<IpPrefix> = Vec::with_capacity(raw.cidrs.len());
    for (i, text) in raw.cidrs.iter().enumerate() {
        let item = format!("{field}.cidrs[{i}]");
        let cidr: IpPrefix = text
            .trim()
            .parse()
            .map_err(|e: crate::prefix::PrefixError| InvalidField::new(&item, e.to_string()))?;
        if cidr.family() != family {
            return Err(InvalidField::new(
                item,
                format!(
                    "{cidr} is an {} CIDR; put it under the pool's {} part",
                    cidr.family(),
                    cidr.family().short().replace('v', "ipv")
                ),
            ));
        }
        if let Some(other) = cidrs.iter().find(|c| c.overlaps(&cidr)) {
            return Err(InvalidField::new(
                item,
                format!("{cidr} overlaps {other}, given before it in the same pool"),
            ));
        }
        cidrs.push(cidr);
    }
    let longest = cidrs.iter().map(IpPrefix::prefix_len).max().unwrap_or(0);
    let max = family.max_node_mask();
    let mask = raw.node_mask_size;
    if mask < u32::from(longest) || mask > u32::from(max) {
        let hint = if mask == 0 {
            format!(
                "is required: the prefix length of each node's block, e.g. {}",
                if family == Family::V4 { 24 } else { 120 }
            )
        } else {
            format!("{mask} is out of range")
        };
        return Err(InvalidField::new(
            format!("{field}.node_mask_size"),
            format!(
                "{hint}; it must be from {longest} (the longest cluster CIDR prefix) to {max} (a block keeps its network, gateway and broadcast addresses)"
            ),
        ));
    }
    Ok(FamilyPool {
        cidrs,
        node_mask: mask as u8,
    })
}

/// Checks a pool name: 1–63 characters of `[A-Za-z0-9._-]`, starting and ending with a
/// letter or digit (it is used as a datastore namespace).
pub fn validate_pool_name(field: &str, name: &str) -> Result<(), InvalidField> {
    validate_name(field, "pool", name, MAX_POOL_NAME, "-._", false)
}

/// Checks a node name: 1–253 characters of `[A-Za-z0-9._-]`, starting and ending with a
/// letter or digit (':' is reserved for kino-ipam's own records).
pub fn validate_node_name(field: &str, name: &str) -> Result<(), InvalidField> {
    validate_name(field, "node", name, MAX_NODE_NAME, "-._", false)
}

/// Checks a `what` name: 1..=`max` characters of letters (lower-case only when
/// `lower_case`), digits and `punctuation`, starting and ending with a letter or digit.
pub(crate) fn validate_name(
    field: &str,
    what: &str,
    name: &str,
    max: usize,
    punctuation: &str,
    lower_case: bool,
) -> Result<(), InvalidField> {
    if name.is_empty() {
        return Err(InvalidField::new(
            field,
            format!("a {what} name is required"),
        ));
    }
    if name.len() > max {
        return Err(InvalidField::new(
            field,
            format!(
                "{what} name {} is longer than {max} characters",
                quote(name)
            ),
        ));
    }
    let letter = |c: char| c.is_ascii_lowercase() || (!lower_case && c.is_ascii_uppercase());
    let allowed = |c: char| letter(c) || c.is_ascii_digit() || punctuation.contains(c);
    if let Some(bad) = name.chars().find(|c| !allowed(*c)) {
        return Err(InvalidField::new(
            field,
            format!(
                "{what} name {} contains {bad:?}; use {}letters, digits and {}",
                quote(name),
                if lower_case { "lower-case " } else { "" },
                punctuation
                    .chars()
                    .map(|c| format!("'{c}'"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        ));
    }
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge(name.chars().next()) || !edge(name.chars().last()) {
        return Err(InvalidField::new(
            field,
            format!(
                "{what} name {} must start and end with a letter or digit",
                quote(name)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn raw(cidrs: &[&str], mask: u32) -> RawFamily {
        RawFamily {
            cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            node_mask_size: mask,
        }
    }

    fn pool(v4: Option<RawFamily>, v6: Option<RawFamily>) -> Result<PoolConfig, InvalidField> {
        PoolConfig::validate("pool", "p", v4.as_ref(), v6.as_ref())
    }

    #[test]
    fn default_pool_shape() {
        let p = pool(
            Some(raw(&["10.0.0.0/8"], 24)),
            Some(raw(&["fd00::/104"], 120)),
        )
        .unwrap();
        let v4 = p.family(Family::V4).unwrap();
        assert_eq!(v4.block_count(), 65536);
        assert_eq!(v4.assignable_per_block(), 253);
        let v6 = p.family(Family::V6).unwrap();
        assert_eq!(v6.block_count(), 65536);
        assert_eq!(v6.assignable_per_block(), 253);
        assert_eq!(
            v4.first_free_block(&BTreeSet::new()).unwrap().to_string(),
            "10.0.0.0/24"
        );
    }

    #[test]
    fn bad_pools_name_the_field() {
        let cases: Vec<(Result<PoolConfig, InvalidField>, &str, &str)> = vec![
            (pool(None, None), "pool.ipv4", "at least one family"),
            (
                pool(Some(raw(&[], 24)), None),
                "pool.ipv4.cidrs",
                "at least one",
            ),
            (
                pool(Some(raw(&["10.0.0.0/8", "nope"], 24)), None),
                "pool.ipv4.cidrs[1]",
                "not a CIDR",
            ),
            (
                pool(Some(raw(&["10.0.0.1/8"], 24)), None),
                "pool.ipv4.cidrs[0]",
                "did you mean 10.0.0.0/8",
            ),
            (
                pool(Some(raw(&["fd00::/104"], 24)), None),
                "pool.ipv4.cidrs[0]",
                "IPv6",
            ),
            (
                pool(Some(raw(&["10.0.0.0/8", "10.1.0.0/16"], 24)), None),
                "pool.ipv4.cidrs[1]",
                "overlaps 10.0.0.0/8",
            ),
            (
                pool(Some(raw(&["10.0.0.0/8"], 31)), None),
                "pool.ipv4.node_mask_size",
                "to 30",
            ),
            (
                pool(Some(raw(&["10.0.0.0/16"], 8)), None),
                "pool.ipv4.node_mask_size",
                "from 16",
            ),
            (
                pool(Some(raw(&["10.0.0.0/16"], 0)), None),
                "pool.ipv4.node_mask_size",
                "is required",
            ),
            (
                pool(None, Some(raw(&["fd00::/104"], 127))),
                "pool.ipv6.node_mask_size",
                "to 126",
            ),
        ];
        for (result, field, words) in cases {
            let e = result.expect_err(field);
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().contains(words), "{e} should say {words:?}");
        }
        let e = PoolConfig::validate("pool", "bad/name", Some(&raw(&["10.0.0.0/8"], 24)), None)
            .unwrap_err();
        assert_eq!(e.field, "pool.name");
        assert!(validate_node_name("node", "block:10.0.0.0-24").is_err());
        assert!(validate_node_name("node", "node-1.example").is_ok());
    }

    #[test]
    fn reserved_addresses() {
        let block: IpPrefix = "10.0.1.0/24".parse().unwrap();
        let at = |s: &str| reserved(&block, s.parse().unwrap());
        assert_eq!(at("10.0.1.0"), Some(Reserved::Network));
        assert_eq!(at("10.0.1.1"), Some(Reserved::Gateway));
        assert_eq!(at("10.0.1.255"), Some(Reserved::Broadcast));
        assert_eq!(at("10.0.1.2"), None);
        assert_eq!(gateway_of(&block).to_string(), "10.0.1.1");
    }

    #[test]
    fn overlap_between_pools() {
        let a = pool(Some(raw(&["10.0.0.0/8"], 24)), None).unwrap();
        let b = pool(Some(raw(&["192.168.0.0/16", "10.5.0.0/16"], 24)), None).unwrap();
        let c = pool(None, Some(raw(&["fd00::/104"], 120))).unwrap();
        assert_eq!(
            a.overlap_with(&b)
                .map(|(x, y)| (x.to_string(), y.to_string())),
            Some(("10.0.0.0/8".into(), "10.5.0.0/16".into()))
        );
        assert_eq!(a.overlap_with(&c), None);
    }

    fn small_family() -> impl Strategy<Value = FamilyPool> {
        // Two disjoint CIDRs of a small 10.x space with a small number of blocks each.
        (0u8..4, 0u8..4, 24u8..=28, 0u8..=2).prop_map(|(a, b, len, extra)| {
            let first: IpPrefix = format!("10.{a}.0.0/{len}").parse().unwrap();
            let second: IpPrefix = format!("10.{}.0.0/{len}", a + 4 + b).parse().unwrap();
            FamilyPool {
                cidrs: vec![first, second],
                node_mask: (len + extra).min(30),
            }
        })
    }

    proptest! {
        #[test]
        fn first_free_block_is_the_smallest_unclaimed(
            family in small_family(),
            picks in proptest::collection::vec(any::<u16>(), 0..40),
        ) {
            // Every block in order.
            let all: Vec<IpPrefix> = family
                .cidrs
                .iter()
                .flat_map(|c| {
                    let n = c.subnet_count(family.node_mask).unwrap();
                    (0..n).map(move |i| c.subnet(family.node_mask, i).unwrap())
                })
                .collect();
            prop_assert_eq!(all.len() as u128, family.block_count());
            let claimed: BTreeSet<IpPrefix> =
                picks.iter().map(|i| all[*i as usize % all.len()]).collect();
            let expected = all.iter().find(|b| !claimed.contains(b)).copied();
            prop_assert_eq!(family.first_free_block(&claimed), expected);
            if let Some(block) = expected {
                prop_assert!(family.is_block(&block));
            }
        }

        #[test]
        fn reserved_are_exactly_three(len in 8u8..=30, index in any::<u32>()) {
            let block = IpPrefix::containing(
                IpAddr::V4(std::net::Ipv4Addr::from(index)), len).unwrap();
            let size = block.size().unwrap();
            let reserved_count = (0..size.min(4096))
                .chain(size.saturating_sub(2)..size)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|o| reserved(&block, block.addr_at(*o).unwrap()).is_some())
                .count();
            prop_assert_eq!(reserved_count, 3);
            prop_assert_eq!(assignable_in(Family::V4, len), size - 3);
        }
    }
}
