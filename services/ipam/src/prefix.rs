//! IP families, addresses as integers and IP prefixes (CIDRs): the arithmetic every other
//! module builds on. Pure; no I/O.

use kino_api::quote::quote;
use std::cmp::Ordering;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// Bits in an address of this family.
    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// Longest per-node block prefix: a block needs room for its network, gateway and
    /// broadcast addresses plus at least one address to hand out.
    pub fn max_node_mask(self) -> u8 {
        self.bits() - 2
    }

    /// The family of an address.
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// "IPv4" or "IPv6", for messages and tables.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// "v4" or "v6", as used in datastore names.
    pub fn short(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An address as an integer (IPv4 in the low 32 bits).
pub fn addr_to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address of `family` whose integer is `value` (truncated to the family's width).
pub fn u128_to_addr(family: Family, value: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(value as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

/// The datastore name of an address: its usual text, except that an IPv6 address whose
/// short form starts or ends with ':' (not a valid datastore name) is written in full.
/// Deterministic, so one address always maps to one name.
pub fn address_name(addr: IpAddr) -> String {
    let text = addr.to_string();
    if !(text.starts_with(':') || text.ends_with(':')) {
        return text;
    }
    let IpAddr::V6(v6) = addr else {
        return text;
    };
    v6.segments()
        .iter()
        .map(|s| format!("{s:04x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Why a text is not a valid prefix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// No '/length' part.
    #[error("{} is not a CIDR: write address/length, e.g. 10.0.0.0/8 or fd00::/104", quote(.0))]
    MissingLength(String),
    /// The address part does not parse.
    #[error("{} is not a CIDR: the address part is not an IP address", quote(.0))]
    BadAddress(String),
    /// The length part does not parse or is too long.
    #[error("{} is not a CIDR: the prefix length must be a number from 0 to {max}", quote(.text))]
    BadLength {
        /// The text given.
        text: String,
        /// Longest prefix of its family.
        max: u8,
    },
    /// Bits are set after the prefix length.
    #[error("{} has host bits set after /{len}; did you mean {suggestion}?", quote(.text))]
    HostBits {
        /// The text given.
        text: String,
        /// Its prefix length.
        len: u8,
        /// The same prefix with host bits cleared.
        suggestion: IpPrefix,
    },
}

/// An IP prefix (CIDR) with its host bits zero, e.g. 10.0.1.0/24 or fd00::100/120.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    family: Family,
    network: u128,
    len: u8,
}

impl IpPrefix {
    /// The prefix of `len` bits containing `addr` (host bits cleared). `None` if `len` is
    /// longer than the family's addresses.
    pub fn containing(addr: IpAddr, len: u8) -> Option<IpPrefix> {
        let family = Family::of(addr);
        if len > family.bits() {
            return None;
        }
        let network = addr_to_u128(addr) & mask(family, len);
        Some(IpPrefix {
            family,
            network,
            len,
        })
    }

    /// The family.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Bits after the prefix.
    pub fn host_bits(&self) -> u8 {
        self.family.bits() - self.len
    }

    /// The network address as an integer.
    pub fn network_u128(&self) -> u128 {
        self.network
    }

    /// The network (first) address.
    pub fn network(&self) -> IpAddr {
        u128_to_addr(self.family, self.network)
    }

    /// The last address (IPv4's broadcast address).
    pub fn last(&self) -> IpAddr {
        u128_to_addr(
            self.family,
            self.network | !mask(self.family, self.len) & full(self.family),
        )
    }

    /// Addresses in the prefix; `None` when it is 2^128 (::/0).
    pub fn size(&self) -> Option<u128> {
        pow2(self.host_bits())
    }

    /// The address `offset` addresses after the network address, if inside.
    pub fn addr_at(&self, offset: u128) -> Option<IpAddr> {
        if self.size().is_some_and(|size| offset >= size) {
            return None;
        }
        Some(u128_to_addr(self.family, self.network + offset))
    }

    /// How far `addr` is from the network address, if inside.
    pub fn offset_of(&self, addr: IpAddr) -> Option<u128> {
        self.contains(addr)
            .then(|| addr_to_u128(addr) - self.network)
    }

    /// Whether `addr` is inside.
    pub fn contains(&self, addr: IpAddr) -> bool {
        Family::of(addr) == self.family
            && addr_to_u128(addr) & mask(self.family, self.len) == self.network
    }

    /// Whether `other` lies entirely inside this prefix.
    pub fn contains_prefix(&self, other: &IpPrefix) -> bool {
        other.family == self.family
            && other.len >= self.len
            && other.network & mask(self.family, self.len) == self.network
    }

    /// Whether the two prefixes share any address.
    pub fn overlaps(&self, other: &IpPrefix) -> bool {
        self.contains_prefix(other) || other.contains_prefix(self)
    }

    /// How many subnets of length `len` it holds; `None` if `len` is shorter than this
    /// prefix or longer than the family's addresses, or the count is 2^128.
    pub fn subnet_count(&self, len: u8) -> Option<u128> {
        if len < self.len || len > self.family.bits() {
            return None;
        }
        pow2(len - self.len)
    }

    /// The `index`-th subnet of length `len`, in address order.
    pub fn subnet(&self, len: u8, index: u128) -> Option<IpPrefix> {
        if len < self.len || len > self.family.bits() {
            return None;
        }
        if pow2(len - self.len).is_some_and(|count| index >= count) {
            return None;
        }
        // A /0 subnet of ::/0 is 2^128 addresses long, past u128; it is the only one, at 0.
        let offset = if index == 0 {
            0
        } else {
            index.checked_mul(pow2(self.family.bits() - len)?)?
        };
        Some(IpPrefix {
            family: self.family,
            network: self.network + offset,
            len,
        })
    }

    /// Where `subnet` is among this prefix's subnets of its length, if it is one.
    pub fn subnet_index(&self, subnet: &IpPrefix) -> Option<u128> {
        if !self.contains_prefix(subnet) {
            return None;
        }
        // Shifting by 128 (a /0 of IPv6) has no u128 result; the only such subnet is at 0.
        let shift = u32::from(self.family.bits() - subnet.len);
        Some(
            (subnet.network - self.network)
                .checked_shr(shift)
                .unwrap_or(0),
        )
    }

    /// The prefix in datastore-name form: '/' written as '-' (10.0.1.0-24).
    pub fn name(&self) -> String {
        format!("{}-{}", self.network(), self.len)
    }

    /// The longest text every address of the prefix starts with (for a datastore name
    /// prefix filter; it may match addresses outside the prefix too).
    pub fn common_text_prefix(&self) -> String {
        let first = self.network().to_string();
        let last = self.last().to_string();
        first
            .chars()
            .zip(last.chars())
            .take_while(|(a, b)| a == b)
            .map(|(a, _)| a)
            .collect()
    }
}

impl Ord for IpPrefix {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.family, self.network, self.len).cmp(&(other.family, other.network, other.len))
    }
}

impl PartialOrd for IpPrefix {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.len)
    }
}

impl FromStr for IpPrefix {
    type Err = PrefixError;

    /// Parses "address/length" strictly: host bits must be zero.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, len) = text
            .split_once('/')
            .ok_or_else(|| PrefixError::MissingLength(text.to_owned()))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| PrefixError::BadAddress(text.to_owned()))?;
        let family = Family::of(addr);
        let bad_length = || PrefixError::BadLength {
            text: text.to_owned(),
            max: family.bits(),
        };
        if len.is_empty() || !len.chars().all(|c| c.is_ascii_digit()) || len.len() > 3 {
            return Err(bad_length());
        }
        let len: u8 = len.parse().map_err(|_| bad_length())?;
        let prefix = IpPrefix::containing(addr, len).ok_or_else(bad_length)?;
        if prefix.network != addr_to_u128(addr) {
            return Err(PrefixError::HostBits {
                text: text.to_owned(),
                len,
                suggestion: prefix,
            });
        }
        Ok(prefix)
    }
}

/// All-ones of the family's width.
fn full(family: Family) -> u128 {
    match family {
        Family::V4 => u128::from(u32::MAX),
        Family::V6 => u128::MAX,
    }
}

/// The network mask of `len` bits, within the family's width.
fn mask(family: Family, len: u8) -> u128 {
    let host = family.bits() - len;
    if host >= 128 {
        0
    } else {
        full(family) & !((1u128 << host) - 1)
    }
}

/// 2^bits, or `None` at 2^128.
fn pow2(bits: u8) -> Option<u128> {
    1u128.checked_shl(u32::from(bits)).filter(|_| bits < 128)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(text: &str) -> IpPrefix {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!(p("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(p("fd00::/104").to_string(), "fd00::/104");
        assert_eq!(p("0.0.0.0/0").size(), Some(1 << 32));
        assert_eq!(p("::/0").size(), None);
        assert_eq!(p("10.0.1.0/24").last().to_string(), "10.0.1.255");
        assert_eq!(p("fd00::100/120").last().to_string(), "fd00::1ff");
        assert_eq!(p("10.0.1.0/24").name(), "10.0.1.0-24");
    }

    #[test]
    fn refuses_bad_text_with_a_hint() {
        assert!(matches!(
            "10.0.0.0".parse::<IpPrefix>(),
            Err(PrefixError::MissingLength(_))
        ));
        assert!(matches!(
            "10.0.0/8".parse::<IpPrefix>(),
            Err(PrefixError::BadAddress(_))
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<IpPrefix>(),
            Err(PrefixError::BadLength { max: 32, .. })
        ));
        assert!(matches!(
            "10.0.0.0/+8".parse::<IpPrefix>(),
            Err(PrefixError::BadLength { .. })
        ));
        let e = "10.0.0.1/8".parse::<IpPrefix>().unwrap_err().to_string();
        assert!(e.contains("did you mean 10.0.0.0/8"), "{e}");
    }

    #[test]
    fn subnets_and_text_prefixes() {
        let pool = p("10.0.0.0/8");
        assert_eq!(pool.subnet_count(24), Some(65536));
        assert_eq!(pool.subnet(24, 1).unwrap().to_string(), "10.0.1.0/24");
        assert_eq!(pool.subnet(24, 65536), None);
        assert_eq!(pool.subnet_index(&p("10.0.2.0/24")), Some(2));
        assert_eq!(p("10.0.1.0/24").common_text_prefix(), "10.0.1.");
        assert_eq!(p("fd00::100/120").common_text_prefix(), "fd00::1");
        let v6 = p("fd00::/104");
        assert_eq!(v6.subnet(120, 1).unwrap().to_string(), "fd00::100/120");
        assert_eq!(p("::/0").subnet_count(128), None);
    }

    #[test]
    fn address_names_are_valid_datastore_names() {
        let names = [
            ("10.0.1.2", "10.0.1.2"),
            ("fd00::17", "fd00::17"),
            ("::1", "0000:0000:0000:0000:0000:0000:0000:0001"),
            ("fd00:0:0:1::", "fd00:0000:0000:0001:0000:0000:0000:0000"),
        ];
        for (addr, name) in names {
            assert_eq!(address_name(addr.parse().unwrap()), name);
        }
    }

    fn any_prefix() -> impl Strategy<Value = IpPrefix> {
        prop_oneof![
            (any::<u32>(), 0u8..=32).prop_map(|(a, l)| {
                IpPrefix::containing(IpAddr::V4(Ipv4Addr::from(a)), l).unwrap()
            }),
            (any::<u128>(), 0u8..=128).prop_map(|(a, l)| {
                IpPrefix::containing(IpAddr::V6(Ipv6Addr::from(a)), l).unwrap()
            }),
        ]
    }

    proptest! {
        #[test]
        fn text_round_trips(prefix in any_prefix()) {
            prop_assert_eq!(prefix.to_string().parse::<IpPrefix>(), Ok(prefix));
        }

        #[test]
        fn overlap_is_symmetric_and_means_a_shared_address(a in any_prefix(), b in any_prefix()) {
            prop_assert_eq!(a.overlaps(&b), b.overlaps(&a));
            let shared = a.contains(b.network()) || b.contains(a.network());
            prop_assert_eq!(a.overlaps(&b), shared);
        }

        #[test]
        fn subnets_lie_inside_and_index_back(prefix in any_prefix(), extra in 0u8..=16, index in any::<u128>()) {
            let len = prefix.prefix_len().saturating_add(extra).min(prefix.family().bits());
            if let Some(count) = prefix.subnet_count(len) {
                let index = index % count;
                let subnet = prefix.subnet(len, index).unwrap();
                prop_assert!(prefix.contains_prefix(&subnet));
                prop_assert_eq!(subnet.prefix_len(), len);
                prop_assert_eq!(prefix.subnet_index(&subnet), Some(index));
            }
        }

        #[test]
        fn offsets_round_trip(prefix in any_prefix(), offset in any::<u128>()) {
            let offset = match prefix.size() { Some(size) => offset % size, None => offset };
            let addr = prefix.addr_at(offset).unwrap();
            prop_assert!(prefix.contains(addr));
            prop_assert_eq!(prefix.offset_of(addr), Some(offset));
            prop_assert!(prefix.common_text_prefix().len() <= addr.to_string().len());
            prop_assert!(addr.to_string().starts_with(&prefix.common_text_prefix()));
        }

        #[test]
        fn address_names_are_names(addr in any::<u128>(), v4 in any::<u32>()) {
            for addr in [IpAddr::V6(Ipv6Addr::from(addr)), IpAddr::V4(Ipv4Addr::from(v4))] {
                let name = address_name(addr);
                prop_assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || ".:-".contains(c)));
                prop_assert!(name.starts_with(|c: char| c.is_ascii_alphanumeric()));
                prop_assert!(name.ends_with(|c: char| c.is_ascii_alphanumeric()));
            }
        }
    }
}
