//! IP prefixes (`10.0.0.0/8`, `fd00::/104`) with the host bits zero.

use std::cmp::Ordering;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use kino_api::quote::quote;

/// An IPv4 or IPv6 prefix whose host bits are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// The prefix `addr/len`; fails when len is too long or host bits are set.
    pub fn new(addr: IpAddr, len: u8) -> Result<Cidr, String> {
        let max = max_len(addr);
        if len > max {
            return Err(format!("{addr}/{len}: prefix length above {max}"));
        }
        let cidr = Cidr { addr, len };
        if cidr.network() != addr {
            return Err(format!(
                "{addr}/{len}: host bits are set (did you mean {}/{len}?)",
                cidr.network()
            ));
        }
        Ok(cidr)
    }

    /// A single address as a /32 or /128.
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr {
            addr,
            len: max_len(addr),
        }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// True for IPv4.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// True for a /0.
    pub fn is_default(&self) -> bool {
        self.len == 0
    }

    fn network(&self) -> IpAddr {
        mask(self.addr, self.len)
    }

    /// True when `ip` is in the prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.len) == self.addr
    }

    /// True when `other` lies inside this prefix (or equals it).
    pub fn covers(&self, other: &Cidr) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }

    /// The prefix of length `len` (at most this one's) containing this one.
    pub fn supernet(&self, len: u8) -> Cidr {
        let len = len.min(self.len);
        Cidr {
            addr: mask(self.addr, len),
            len,
        }
    }

    /// The smallest and the largest prefix (in [`Ord`] order) that this one covers: every
    /// prefix it covers lies between them, inclusive.
    pub fn covered_bounds(&self) -> (Cidr, Cidr) {
        let last = match self.addr {
            IpAddr::V4(a) => {
                let host = if self.len >= 32 {
                    0
                } else {
                    u32::MAX >> self.len
                };
                IpAddr::V4((u32::from(a) | host).into())
            }
            IpAddr::V6(a) => {
                let host = if self.len >= 128 {
                    0
                } else {
                    u128::MAX >> self.len
                };
                IpAddr::V6((u128::from(a) | host).into())
            }
        };
        (*self, Cidr::host(last))
    }

    /// The datastore name of the prefix: '/' written '-' (`10.0.1.23-32`).
    pub fn name(&self) -> String {
        format!("{}-{}", self.addr, self.len)
    }
}

fn max_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len as u32)
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len as u32)
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `addr/len`, or a bare address (as a /32 or /128).
    fn from_str(s: &str) -> Result<Cidr, String> {
        let text = s.trim();
        match text.split_once('/') {
            Some((addr, len)) => {
                let addr: IpAddr = addr
                    .parse()
                    .map_err(|_| format!("{} is not a CIDR (ADDRESS/LENGTH)", quote(text)))?;
                let len: u8 = len
                    .parse()
                    .map_err(|_| format!("{}: the prefix length is not a number", quote(text)))?;
                Cidr::new(addr, len)
            }
            None => text
                .parse::<IpAddr>()
                .map(Cidr::host)
                .map_err(|_| format!("{} is not a CIDR (ADDRESS/LENGTH)", quote(text))),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Ord for Cidr {
    /// IPv4 before IPv6, then by address, then shorter prefixes first.
    fn cmp(&self, other: &Self) -> Ordering {
        (self.addr.is_ipv6(), self.addr, self.len).cmp(&(
            other.addr.is_ipv6(),
            other.addr,
            other.len,
        ))
    }
}

impl PartialOrd for Cidr {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_contains_covers() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert!(c.covers(&"10.1.0.0/16".parse().unwrap()));
        assert!(!"10.1.0.0/16".parse::<Cidr>().unwrap().covers(&c));
        assert_eq!(
            "10.0.0.1/8".parse::<Cidr>().unwrap_err(),
            "10.0.0.1/8: host bits are set (did you mean 10.0.0.0/8?)"
        );
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert_eq!(
            "fd00::1".parse::<Cidr>().unwrap().to_string(),
            "fd00::1/128"
        );
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        assert_eq!("10.0.1.0/24".parse::<Cidr>().unwrap().name(), "10.0.1.0-24");
        let p: Cidr = "10.1.2.3/32".parse().unwrap();
        assert_eq!(p.supernet(8).to_string(), "10.0.0.0/8");
        assert_eq!(p.supernet(0).to_string(), "0.0.0.0/0");
        assert_eq!(p.supernet(40), p);
        let (lo, hi) = c.covered_bounds();
        assert_eq!(
            (lo.to_string(), hi.to_string()),
            ("10.0.0.0/8".into(), "10.255.255.255/32".into())
        );
        let (lo, hi) = p.covered_bounds();
        assert_eq!((lo, hi), (p, p));
        let (_, hi) = "0.0.0.0/0".parse::<Cidr>().unwrap().covered_bounds();
        assert_eq!(hi.to_string(), "255.255.255.255/32");
        let (_, hi) = "fd00::/8".parse::<Cidr>().unwrap().covered_bounds();
        assert_eq!(
            hi.to_string(),
            "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"
        );
    }
}
