//! The service network: the service CIDRs a ClusterIP must be in (one per family at most)
//! and the NodePort range, as kino-ipam's `--service-cidr` and `--node-port-range` give
//! them. Checked once at start-up, so every request is validated against a sane network;
//! `GetServiceNetwork` hands it to the agents, which route the CIDRs as unreachable.

use std::net::IpAddr;
use std::ops::RangeInclusive;

use kino_api::quote::quote;

use crate::pool::PoolConfig;
use crate::prefix::{Family, IpPrefix};

/// Default service CIDRs (Kubernetes' `--service-cluster-ip-range` style, one per family).
pub const DEFAULT_SERVICE_CIDRS: [&str; 2] = ["172.20.0.0/16", "fd00:ffff::/112"];
/// Default NodePort range, as Kubernetes' `--service-node-port-range`.
pub const DEFAULT_NODE_PORTS: RangeInclusive<u16> = 30000..=32767;

/// The service CIDRs and the NodePort range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceNetwork {
    cidrs: Vec<IpPrefix>,
    node_ports: RangeInclusive<u16>,
}

/// Why a service network is refused (at start-up: the flags say which).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NetworkError(pub String);

impl Default for ServiceNetwork {
    fn default() -> Self {
        let cidrs = DEFAULT_SERVICE_CIDRS
            .iter()
            .map(|c| c.parse().expect("the default service CIDRs parse"))
            .collect();
        ServiceNetwork {
            cidrs,
            node_ports: DEFAULT_NODE_PORTS,
        }
    }
}

impl ServiceNetwork {
    /// The network of `cidrs` (at most one per family, at least one) and the NodePort range
    /// written `FIRST-LAST`.
    pub fn parse(cidrs: &[String], node_ports: &str) -> Result<ServiceNetwork, NetworkError> {
        let mut parsed: Vec<IpPrefix> = Vec::new();
        for text in cidrs.iter().map(|c| c.trim()).filter(|c| !c.is_empty()) {
            let cidr: IpPrefix = text
                .parse()
                .map_err(|e| NetworkError(format!("--service-cidr: {e}")))?;
            if let Some(other) = parsed.iter().find(|p| p.family() == cidr.family()) {
                return Err(NetworkError(format!(
                    "--service-cidr: {cidr} and {other} are both {}; give at most one service CIDR per family",
                    cidr.family()
                )));
            }
            if cidr.size().is_some_and(|size| size < 4) {
                return Err(NetworkError(format!(
                    "--service-cidr: {cidr} holds fewer than 4 addresses; give a shorter prefix"
                )));
            }
            parsed.push(cidr);
        }
        if parsed.is_empty() {
            return Err(NetworkError(
                "--service-cidr: give at least one service CIDR (e.g. 172.20.0.0/16)".into(),
            ));
        }
        parsed.sort_by_key(|c| c.family() == Family::V6);
        Ok(ServiceNetwork {
            cidrs: parsed,
            node_ports: parse_port_range(node_ports)?,
        })
    }

    /// The service CIDRs, IPv4 first.
    pub fn cidrs(&self) -> &[IpPrefix] {
        &self.cidrs
    }

    /// The NodePort range.
    pub fn node_ports(&self) -> &RangeInclusive<u16> {
        &self.node_ports
    }

    /// The service CIDR holding `addr`, if any.
    pub fn cidr_of(&self, addr: IpAddr) -> Option<&IpPrefix> {
        self.cidrs.iter().find(|c| c.contains(addr))
    }

    /// The service CIDR of `family`, if the network has one.
    pub fn cidr_of_family(&self, family: Family) -> Option<&IpPrefix> {
        self.cidrs.iter().find(|c| c.family() == family)
    }

    /// A service CIDR overlapping a CIDR of `pool`, if any: (service CIDR, pool CIDR).
    pub fn overlap_with(&self, pool: &PoolConfig) -> Option<(IpPrefix, IpPrefix)> {
        self.cidrs.iter().find_map(|ours| {
            pool.cidrs()
                .find(|theirs| ours.overlaps(theirs))
                .map(|theirs| (*ours, *theirs))
        })
    }

    /// The error refusing a pool that overlaps the service network, if it does.
    pub fn check_pool(&self, pool: &PoolConfig) -> Result<(), NetworkError> {
        match self.overlap_with(pool) {
            None => Ok(()),
            Some((service, theirs)) => Err(NetworkError(format!(
                "service CIDR {service} overlaps {theirs} of pool {:?}: a ClusterIP must never be a pod's address; choose another --service-cidr or another pool CIDR",
                pool.name
            ))),
        }
    }
}

/// `FIRST-LAST`, both 1..65535, FIRST ≤ LAST.
fn parse_port_range(text: &str) -> Result<RangeInclusive<u16>, NetworkError> {
    let bad = || {
        NetworkError(format!(
            "--node-port-range {}: write FIRST-LAST with ports from 1 to 65535, e.g. 30000-32767",
            quote(text)
        ))
    };
    let (first, last) = text.trim().split_once('-').ok_or_else(bad)?;
    let first: u16 = first.trim().parse().map_err(|_| bad())?;
    let last: u16 = last.trim().parse().map_err(|_| bad())?;
    if first == 0 || first > last {
        return Err(bad());
    }
    Ok(first..=last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::RawFamily;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_are_kubernetes_like() {
        let network = ServiceNetwork::default();
        assert_eq!(
            network
                .cidrs()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["172.20.0.0/16", "fd00:ffff::/112"]
        );
        assert_eq!(network.node_ports(), &(30000..=32767));
        assert_eq!(
            ServiceNetwork::parse(&strings(&DEFAULT_SERVICE_CIDRS), "30000-32767"),
            Ok(network)
        );
    }

    #[test]
    fn flags_are_checked_with_the_fix() {
        let error = |cidrs: &[&str], ports: &str| {
            ServiceNetwork::parse(&strings(cidrs), ports)
                .unwrap_err()
                .to_string()
        };
        assert!(error(&["10.96.0.0/12", "10.97.0.0/16"], "30000-32767").contains("at most one"));
        assert!(error(&["10.96.0.1/12"], "30000-32767").contains("did you mean 10.96.0.0/12"));
        assert!(error(&[], "30000-32767").contains("at least one"));
        assert!(error(&["10.96.0.0/31"], "30000-32767").contains("fewer than 4"));
        for ports in ["", "30000", "0-10", "32767-30000", "30000-70000", "a-b"] {
            assert!(
                error(&["10.96.0.0/12"], ports).contains("FIRST-LAST"),
                "{ports}"
            );
        }
        let v6_first = ServiceNetwork::parse(&strings(&["fd00:1::/112", "10.96.0.0/12"]), "1-2")
            .expect("valid");
        assert_eq!(
            v6_first.cidrs()[0].to_string(),
            "10.96.0.0/12",
            "IPv4 first"
        );
        assert!(
            v6_first
                .cidr_of("fd00:1::5".parse().unwrap())
                .is_some_and(|c| c.family() == Family::V6)
        );
    }

    #[test]
    fn a_pool_overlapping_a_service_cidr_is_named() {
        let network = ServiceNetwork::default();
        let pool = |cidr: &str| {
            PoolConfig::validate(
                "pool",
                "blue",
                Some(&RawFamily {
                    cidrs: vec![cidr.into()],
                    node_mask_size: 24,
                }),
                None,
            )
            .unwrap()
        };
        assert_eq!(network.check_pool(&pool("10.0.0.0/8")), Ok(()));
        let error = network.check_pool(&pool("172.16.0.0/12")).unwrap_err();
        assert!(
            error
                .0
                .contains("service CIDR 172.20.0.0/16 overlaps 172.16.0.0/12 of pool \"blue\""),
            "{error}"
        );
    }
}
