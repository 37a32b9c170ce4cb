//! Where a service serves `/metrics`: a TCP address, or off.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;

/// The value of a `--metrics-address` flag: `host:port` (`:port` for every interface), or
/// `off` to serve no metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAddress {
    /// No `/metrics` endpoint.
    Off,
    /// Serve `http://<addr>/metrics`.
    Tcp(SocketAddr),
}

impl FromStr for MetricsAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("off") || s.eq_ignore_ascii_case("none") {
            return Ok(MetricsAddress::Off);
        }
        if let Some(port) = s.strip_prefix(':') {
            let port: u16 = port
                .parse()
                .map_err(|e| format!("{s:?}: port {port:?} is not a number: {e}"))?;
            return Ok(MetricsAddress::Tcp(SocketAddr::from((
                Ipv4Addr::UNSPECIFIED,
                port,
            ))));
        }
        s.parse().map(MetricsAddress::Tcp).map_err(|e| {
            format!(
                "{s:?} is not a metrics address ({e}); use host:port such as 127.0.0.1:9401, :9401 for every interface, or off"
            )
        })
    }
}

impl fmt::Display for MetricsAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsAddress::Off => f.write_str("off"),
            MetricsAddress::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_ports_and_off() {
        assert_eq!(
            "127.0.0.1:9401".parse::<MetricsAddress>(),
            Ok(MetricsAddress::Tcp("127.0.0.1:9401".parse().unwrap()))
        );
        assert_eq!(
            ":9402".parse::<MetricsAddress>(),
            Ok(MetricsAddress::Tcp("0.0.0.0:9402".parse().unwrap()))
        );
        assert_eq!(
            "[::1]:9403".parse::<MetricsAddress>().unwrap().to_string(),
            "[::1]:9403"
        );
        for off in ["off", "OFF", "none", ""] {
            assert_eq!(off.parse::<MetricsAddress>(), Ok(MetricsAddress::Off));
        }
        let error = "localhost".parse::<MetricsAddress>().unwrap_err();
        assert!(error.contains("127.0.0.1:9401"), "{error}");
        assert!(":x".parse::<MetricsAddress>().is_err());
    }
}
