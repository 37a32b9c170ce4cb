//! The CNI result: one domain type ([`CniResult`]) and its wire form in each version kino-cni
//! speaks, both ways (printing ADD's result, reading `prevResult`).
//!
//! | field | 0.4.0 | 1.0.0 | 1.1.0 |
//! |---|---|---|---|
//! | `ips[].version` (`"4"`/`"6"`) | required | — | — |
//! | `interfaces[].mtu`, `socketPath`, `pciID` | — | — | optional |
//! | `routes[].mtu`, `advmss`, `priority`, `table`, `scope` | — | — | optional |
//!
//! Empty lists and an empty `dns` are left out, as libcni does.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::CniVersion;
use crate::errors::{CniError, ErrorCode};

/// An interface address with its prefix length, host bits kept (`10.0.1.23/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length (≤ 32 for IPv4, ≤ 128 for IPv6).
    pub prefix: u8,
}

impl Cidr {
    /// Whether this is an IPv4 address.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not ADDRESS/PREFIX"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?}: {addr:?} is not an IP address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("{text:?}: {prefix:?} is not a prefix length"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("{text:?}: the prefix length is more than {max}"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A CNI result (ADD's output, the `prevResult` of later calls).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    /// Interfaces created (host side first by convention, then the pod side).
    pub interfaces: Vec<Interface>,
    /// Addresses, each on one of `interfaces`.
    pub ips: Vec<IpConfig>,
    /// Routes set in the pod.
    pub routes: Vec<Route>,
    /// DNS settings (may be empty).
    pub dns: Dns,
}

/// One interface of a result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Hardware address.
    pub mac: Option<String>,
    /// MTU (1.1.0).
    pub mtu: Option<u32>,
    /// Network namespace path for pod interfaces; `None` for host interfaces.
    pub sandbox: Option<String>,
    /// Socket path (1.1.0, vhost-user and the like).
    pub socket_path: Option<String>,
    /// PCI id (1.1.0, SR-IOV and the like).
    pub pci_id: Option<String>,
}

/// One address of a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpConfig {
    /// Address and prefix as configured on the interface.
    pub address: Cidr,
    /// Gateway of that subnet.
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`].
    pub interface: Option<usize>,
}

/// One route of a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix.
    pub dst: Cidr,
    /// Next hop; `None` for the plugin's default.
    pub gw: Option<IpAddr>,
    /// Route MTU (1.1.0).
    pub mtu: Option<u32>,
    /// Advertised MSS (1.1.0).
    pub advmss: Option<u32>,
    /// Route priority / metric (1.1.0).
    pub priority: Option<u32>,
    /// Routing table (1.1.0).
    pub table: Option<u32>,
    /// Route scope (1.1.0).
    pub scope: Option<u32>,
}

/// DNS settings of a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// resolv.conf options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

impl CniResult {
    /// Checks what the spec requires of a result: every `interface` index points into
    /// `interfaces`, gateways are of their address's family, routes' next hops of their
    /// destination's family.
    pub fn validate(&self) -> Result<(), String> {
        for ip in &self.ips {
            if let Some(index) = ip.interface
                && index >= self.interfaces.len()
            {
                return Err(format!(
                    "ips entry {} names interface {index}, but there are only {} interfaces",
                    ip.address,
                    self.interfaces.len()
                ));
            }
            if let Some(gateway) = ip.gateway
                && gateway.is_ipv4() != ip.address.is_ipv4()
            {
                return Err(format!(
                    "ips entry {}: gateway {gateway} is of the other address family",
                    ip.address
                ));
            }
        }
        for route in &self.routes {
            if let Some(gw) = route.gw
                && gw.is_ipv4() != route.dst.is_ipv4()
            {
                return Err(format!(
                    "route to {}: next hop {gw} is of the other address family",
                    route.dst
                ));
            }
        }
        Ok(())
    }

    /// This plugin's result placed after `prev` (kino-cni run later in a chain): interfaces,
    /// addresses and routes appended (interface indexes shifted), DNS kept from `prev` unless
    /// it set none.
    pub fn chained_after(self, prev: CniResult) -> CniResult {
        let shift = prev.interfaces.len();
        let mut result = prev;
        result.interfaces.extend(self.interfaces);
        result.ips.extend(self.ips.into_iter().map(|ip| IpConfig {
            interface: ip.interface.map(|index| index + shift),
            ..ip
        }));
        result.routes.extend(self.routes);
        if result.dns.is_empty() {
            result.dns = self.dns;
        }
        result
    }

    /// Index of the pod-side interface `ifname` in `netns` (the one CHECK verifies).
    pub fn sandbox_interface(&self, ifname: &str, netns: Option<&str>) -> Option<usize> {
        self.interfaces.iter().position(|interface| {
            interface.name == ifname
                && interface.sandbox.as_deref().is_some_and(|sandbox| {
                    !sandbox.is_empty() && netns.is_none_or(|netns| netns == sandbox)
                })
        })
    }

    /// The result as JSON in `version` (what ADD prints).
    pub fn to_json(&self, version: CniVersion) -> String {
        let json = match version {
            CniVersion::V0_4_0 => serde_json::to_string(&wire::ResultV040::from(self)),
            CniVersion::V1_0_0 => serde_json::to_string(&wire::ResultV100::from(self)),
            CniVersion::V1_1_0 => serde_json::to_string(&wire::ResultV110::from(self)),
        };
        json.expect("result types serialise")
    }

    /// Reads a `prevResult` written in `version`: 6 when it is not a result object, 7 when a
    /// value in it is invalid (an address, an interface index).
    pub fn from_prev_result(value: &Value, version: CniVersion) -> Result<CniResult, CniError> {
        let parsed: wire::AnyResult = serde_json::from_value(value.clone()).map_err(|e| {
            CniError::new(
                ErrorCode::DecodingFailure,
                "cannot decode prevResult",
                format!(
                    "\"prevResult\" is not a CNI {} result: {e}",
                    version.as_str()
                ),
            )
        })?;
        let invalid = |reason: String| {
            CniError::new(
                ErrorCode::InvalidNetworkConfig,
                "invalid prevResult",
                format!("\"prevResult\": {reason}"),
            )
        };
        let result = parsed.into_domain(version).map_err(invalid)?;
        result.validate().map_err(invalid)?;
        Ok(result)
    }
}

/// The JSON shapes of each version.
mod wire {
    use super::*;

    fn ip_text(ip: &Option<IpAddr>) -> Option<String> {
        ip.map(|ip| ip.to_string())
    }

    fn family(cidr: &Cidr) -> &'static str {
        if cidr.is_ipv4() { "4" } else { "6" }
    }

    /// Interfaces in 0.4.0 and 1.0.0.
    #[derive(Serialize)]
    pub struct InterfaceV040 {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        mac: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        sandbox: Option<String>,
    }

    impl From<&Interface> for InterfaceV040 {
        fn from(i: &Interface) -> Self {
            InterfaceV040 {
                name: i.name.clone(),
                mac: i.mac.clone(),
                sandbox: i.sandbox.clone(),
            }
        }
    }

    /// Interfaces in 1.1.0.
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct InterfaceV110 {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        mac: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        mtu: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        sandbox: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        socket_path: Option<String>,
        #[serde(rename = "pciID", skip_serializing_if = "Option::is_none")]
        pci_id: Option<String>,
    }

    impl From<&Interface> for InterfaceV110 {
        fn from(i: &Interface) -> Self {
            InterfaceV110 {
                name: i.name.clone(),
                mac: i.mac.clone(),
                mtu: i.mtu,
                sandbox: i.sandbox.clone(),
                socket_path: i.socket_path.clone(),
                pci_id: i.pci_id.clone(),
            }
        }
    }

    /// Addresses in 0.4.0: with `version`.
    #[derive(Serialize)]
    pub struct IpV040 {
        version: &'static str,
        address: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        gateway: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        interface: Option<usize>,
    }

    impl From<&IpConfig> for IpV040 {
        fn from(ip: &IpConfig) -> Self {
            IpV040 {
                version: family(&ip.address),
                address: ip.address.to_string(),
                gateway: ip_text(&ip.gateway),
                interface: ip.interface,
            }
        }
    }

    /// Addresses in 1.0.0 and 1.1.0: no `version`.
    #[derive(Serialize)]
    pub struct IpV100 {
        address: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        gateway: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        interface: Option<usize>,
    }

    impl From<&IpConfig> for IpV100 {
        fn from(ip: &IpConfig) -> Self {
            IpV100 {
                address: ip.address.to_string(),
                gateway: ip_text(&ip.gateway),
                interface: ip.interface,
            }
        }
    }

    /// Routes in 0.4.0 and 1.0.0.
    #[derive(Serialize)]
    pub struct RouteV040 {
        dst: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        gw: Option<String>,
    }

    impl From<&Route> for RouteV040 {
        fn from(r: &Route) -> Self {
            RouteV040 {
                dst: r.dst.to_string(),
                gw: ip_text(&r.gw),
            }
        }
    }

    /// Routes in 1.1.0: with the route attributes.
    #[derive(Serialize)]
    pub struct RouteV110 {
        dst: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        gw: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        mtu: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        advmss: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        priority: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        table: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        scope: Option<u32>,
    }

    impl From<&Route> for RouteV110 {
        fn from(r: &Route) -> Self {
            RouteV110 {
                dst: r.dst.to_string(),
                gw: ip_text(&r.gw),
                mtu: r.mtu,
                advmss: r.advmss,
                priority: r.priority,
                table: r.table,
                scope: r.scope,
            }
        }
    }

    fn dns(result: &CniResult) -> Option<Dns> {
        (!result.dns.is_empty()).then(|| result.dns.clone())
    }

    macro_rules! result_type {
        ($name:ident, $version:literal, $interface:ty, $ip:ty, $route:ty) => {
            /// A whole result in one version.
            #[derive(Serialize)]
            #[serde(rename_all = "camelCase")]
            pub struct $name {
                cni_version: &'static str,
                #[serde(skip_serializing_if = "Vec::is_empty")]
                interfaces: Vec<$interface>,
                #[serde(skip_serializing_if = "Vec::is_empty")]
                ips: Vec<$ip>,
                #[serde(skip_serializing_if = "Vec::is_empty")]
                routes: Vec<$route>,
                #[serde(skip_serializing_if = "Option::is_none")]
                dns: Option<Dns>,
            }

            impl From<&CniResult> for $name {
                fn from(result: &CniResult) -> Self {
                    $name {
                        cni_version: $version,
                        interfaces: result.interfaces.iter().map(Into::into).collect(),
                        ips: result.ips.iter().map(Into::into).collect(),
                        routes: result.routes.iter().map(Into::into).collect(),
                        dns: dns(result),
                    }
                }
            }
        };
    }

    result_type!(ResultV040, "0.4.0", InterfaceV040, IpV040, RouteV040);
    result_type!(ResultV100, "1.0.0", InterfaceV040, IpV100, RouteV040);
    result_type!(ResultV110, "1.1.0", InterfaceV110, IpV100, RouteV110);

    /// Any version's result, as read from `prevResult` (fields of later versions are
    /// ignored when reading an earlier one).
    #[derive(Deserialize)]
    pub struct AnyResult {
        #[serde(default)]
        interfaces: Option<Vec<AnyInterface>>,
        #[serde(default)]
        ips: Option<Vec<AnyIp>>,
        #[serde(default)]
        routes: Option<Vec<AnyRoute>>,
        #[serde(default)]
        dns: Option<Dns>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct AnyInterface {
        name: String,
        #[serde(default)]
        mac: Option<String>,
        #[serde(default)]
        mtu: Option<u32>,
        #[serde(default)]
        sandbox: Option<String>,
        #[serde(default)]
        socket_path: Option<String>,
        #[serde(default, rename = "pciID")]
        pci_id: Option<String>,
    }

    #[derive(Deserialize)]
    struct AnyIp {
        #[serde(default)]
        version: Option<String>,
        address: String,
        #[serde(default)]
        gateway: Option<String>,
        #[serde(default)]
        interface: Option<usize>,
    }

    #[derive(Deserialize)]
    struct AnyRoute {
        dst: String,
        #[serde(default)]
        gw: Option<String>,
        #[serde(default)]
        mtu: Option<u32>,
        #[serde(default)]
        advmss: Option<u32>,
        #[serde(default)]
        priority: Option<u32>,
        #[serde(default)]
        table: Option<u32>,
        #[serde(default)]
        scope: Option<u32>,
    }

    fn optional_ip(text: Option<String>, what: &str) -> Result<Option<IpAddr>, String> {
        match text.filter(|t| !t.is_empty()) {
            None => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|_| format!("{what} {text:?} is not an IP address")),
        }
    }

    fn non_empty(text: Option<String>) -> Option<String> {
        text.filter(|t| !t.is_empty())
    }

    impl AnyResult {
        pub fn into_domain(self, version: CniVersion) -> Result<CniResult, String> {
            let v1_1 = version >= CniVersion::V1_1_0;
            let interfaces = self
                .interfaces
                .unwrap_or_default()
                .into_iter()
                .map(|i| Interface {
                    name: i.name,
                    mac: non_empty(i.mac),
                    mtu: i.mtu.filter(|_| v1_1),
                    sandbox: non_empty(i.sandbox),
                    socket_path: non_empty(i.socket_path).filter(|_| v1_1),
                    pci_id: non_empty(i.pci_id).filter(|_| v1_1),
                })
                .collect();
            let ips = self
                .ips
                .unwrap_or_default()
                .into_iter()
                .map(|ip| {
                    let address: Cidr = ip.address.parse()?;
                    if version == CniVersion::V0_4_0
                        && let Some(given) = ip.version.as_deref()
                        && given != family(&address)
                    {
                        return Err(format!(
                            "ips entry {address} says version {given:?} but is an IPv{} address",
                            family(&address)
                        ));
                    }
                    Ok(IpConfig {
                        address,
                        gateway: optional_ip(ip.gateway, "gateway")?,
                        interface: ip.interface,
                    })
                })
                .collect::<Result<_, String>>()?;
            let routes = self
                .routes
                .unwrap_or_default()
                .into_iter()
                .map(|r| {
                    Ok(Route {
                        dst: r.dst.parse()?,
                        gw: optional_ip(r.gw, "route gw")?,
                        mtu: r.mtu.filter(|_| v1_1),
                        advmss: r.advmss.filter(|_| v1_1),
                        priority: r.priority.filter(|_| v1_1),
                        table: r.table.filter(|_| v1_1),
                        scope: r.scope.filter(|_| v1_1),
                    })
                })
                .collect::<Result<_, String>>()?;
            Ok(CniResult {
                interfaces,
                ips,
                routes,
                dns: self.dns.unwrap_or_default(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// What the agent's CreateEndpoint gives for a dual-stack pod.
    fn kino_result() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "lxc1a2b3c4d5e6f".into(),
                    mac: Some("5e:3a:10:00:00:01".into()),
                    mtu: Some(1500),
                    ..Interface::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("0a:58:0a:00:01:17".into()),
                    mtu: Some(1500),
                    sandbox: Some("/run/netns/pod1".into()),
                    ..Interface::default()
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.0.1.23/32".parse().unwrap(),
                    gateway: Some("10.0.1.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00::17/128".parse().unwrap(),
                    gateway: Some("fd00::1".parse().unwrap()),
                    interface: Some(1),
                },
            ],
            routes: vec![
                Route {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    gw: Some("10.0.1.1".parse().unwrap()),
                    mtu: None,
                    advmss: None,
                    priority: None,
                    table: None,
                    scope: None,
                },
                Route {
                    dst: "::/0".parse().unwrap(),
                    gw: Some("fd00::1".parse().unwrap()),
                    mtu: Some(1450),
                    advmss: None,
                    priority: Some(10),
                    table: None,
                    scope: None,
                },
            ],
            dns: Dns::default(),
        }
    }

    fn json_of(result: &CniResult, version: CniVersion) -> Value {
        serde_json::from_str(&result.to_json(version)).expect("valid JSON")
    }

    #[test]
    fn version_0_4_0_has_ip_versions_and_no_1_1_fields() {
        assert_eq!(
            json_of(&kino_result(), CniVersion::V0_4_0),
            json!({
                "cniVersion": "0.4.0",
                "interfaces": [
                    {"name": "lxc1a2b3c4d5e6f", "mac": "5e:3a:10:00:00:01"},
                    {"name": "eth0", "mac": "0a:58:0a:00:01:17", "sandbox": "/run/netns/pod1"}
                ],
                "ips": [
                    {"version": "4", "address": "10.0.1.23/32", "gateway": "10.0.1.1", "interface": 1},
                    {"version": "6", "address": "fd00::17/128", "gateway": "fd00::1", "interface": 1}
                ],
                "routes": [
                    {"dst": "0.0.0.0/0", "gw": "10.0.1.1"},
                    {"dst": "::/0", "gw": "fd00::1"}
                ]
            })
        );
    }

    #[test]
    fn version_1_0_0_drops_ip_versions() {
        assert_eq!(
            json_of(&kino_result(), CniVersion::V1_0_0),
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "lxc1a2b3c4d5e6f", "mac": "5e:3a:10:00:00:01"},
                    {"name": "eth0", "mac": "0a:58:0a:00:01:17", "sandbox": "/run/netns/pod1"}
                ],
                "ips": [
                    {"address": "10.0.1.23/32", "gateway": "10.0.1.1", "interface": 1},
                    {"address": "fd00::17/128", "gateway": "fd00::1", "interface": 1}
                ],
                "routes": [
                    {"dst": "0.0.0.0/0", "gw": "10.0.1.1"},
                    {"dst": "::/0", "gw": "fd00::1"}
                ]
            })
        );
    }

    #[test]
    fn version_1_1_0_has_mtu_and_route_attributes() {
        let mut result = kino_result();
        result.dns = Dns {
            nameservers: vec!["10.0.1.1".into()],
            search: vec!["svc.local".into()],
            ..Dns::default()
        };
        result.interfaces[0].pci_id = Some("0000:00:01.0".into());
        result.interfaces[0].socket_path = Some("/run/vhost.sock".into());
        assert_eq!(
            json_of(&result, CniVersion::V1_1_0),
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [
                    {"name": "lxc1a2b3c4d5e6f", "mac": "5e:3a:10:00:00:01", "mtu": 1500,
                     "socketPath": "/run/vhost.sock", "pciID": "0000:00:01.0"},
                    {"name": "eth0", "mac": "0a:58:0a:00:01:17", "mtu": 1500, "sandbox": "/run/netns/pod1"}
                ],
                "ips": [
                    {"address": "10.0.1.23/32", "gateway": "10.0.1.1", "interface": 1},
                    {"address": "fd00::17/128", "gateway": "fd00::1", "interface": 1}
                ],
                "routes": [
                    {"dst": "0.0.0.0/0", "gw": "10.0.1.1"},
                    {"dst": "::/0", "gw": "fd00::1", "mtu": 1450, "priority": 10}
                ],
                "dns": {"nameservers": ["10.0.1.1"], "search": ["svc.local"]}
            })
        );
    }

    #[test]
    fn every_version_round_trips_through_prev_result() {
        for version in [CniVersion::V0_4_0, CniVersion::V1_0_0, CniVersion::V1_1_0] {
            let printed = json_of(&kino_result(), version);
            let read = CniResult::from_prev_result(&printed, version).expect("reads back");
            let mut expected = kino_result();
            if version < CniVersion::V1_1_0 {
                // What the version cannot carry is lost, as it would be on the wire.
                for interface in &mut expected.interfaces {
                    interface.mtu = None;
                }
                expected.routes[1].mtu = None;
                expected.routes[1].priority = None;
            }
            assert_eq!(read, expected, "{}", version.as_str());
        }
    }

    #[test]
    fn prev_result_of_the_reference_bridge_plugin_reads() {
        // Shape of bridge + host-local 1.1.1 output in a 1.0.0 chain.
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "veth1234", "mac": "aa:bb:cc:dd:ee:02"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/run/netns/x"}
            ],
            "ips": [{"interface": 2, "address": "10.88.0.5/16", "gateway": "10.88.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        });
        let result = CniResult::from_prev_result(&prev, CniVersion::V1_0_0).expect("reads");
        assert_eq!(result.interfaces.len(), 3);
        assert_eq!(
            result.sandbox_interface("eth0", Some("/run/netns/x")),
            Some(2)
        );
        assert_eq!(result.sandbox_interface("eth0", Some("/run/netns/y")), None);
        assert_eq!(result.sandbox_interface("cni0", None), None, "host side");
        assert!(result.dns.is_empty());
        assert_eq!(result.routes[0].gw, None);
    }

    #[test]
    fn bad_prev_results_have_codes_6_and_7() {
        for (prev, code, needle) in [
            (json!("a string"), ErrorCode::DecodingFailure, "not a CNI"),
            (
                json!({"ips": [{"gateway": "10.0.0.1"}]}),
                ErrorCode::DecodingFailure,
                "address",
            ),
            (
                json!({"ips": [{"address": "10.0.0.300/32"}]}),
                ErrorCode::InvalidNetworkConfig,
                "not an IP",
            ),
            (
                json!({"ips": [{"address": "10.0.0.3"}]}),
                ErrorCode::InvalidNetworkConfig,
                "ADDRESS/PREFIX",
            ),
            (
                json!({"ips": [{"address": "10.0.0.3/33"}]}),
                ErrorCode::InvalidNetworkConfig,
                "more than 32",
            ),
            (
                json!({"ips": [{"address": "10.0.0.3/32", "interface": 0}]}),
                ErrorCode::InvalidNetworkConfig,
                "only 0 interfaces",
            ),
            (
                json!({"ips": [{"version": "6", "address": "10.0.0.3/32"}]}),
                ErrorCode::InvalidNetworkConfig,
                "version \"6\"",
            ),
            (
                json!({"ips": [{"address": "10.0.0.3/32", "gateway": "fd00::1"}]}),
                ErrorCode::InvalidNetworkConfig,
                "other address family",
            ),
            (
                json!({"routes": [{"dst": "::/0", "gw": "10.0.0.1"}]}),
                ErrorCode::InvalidNetworkConfig,
                "other address family",
            ),
        ] {
            let error = CniResult::from_prev_result(&prev, CniVersion::V0_4_0).expect_err(needle);
            assert_eq!(error.code, code, "{needle}: {error}");
            assert!(error.details.contains(needle), "{needle}: {error}");
        }
    }

    #[test]
    fn chaining_appends_and_shifts_interface_indexes() {
        let prev = CniResult {
            interfaces: vec![Interface {
                name: "dummy0".into(),
                ..Interface::default()
            }],
            ips: vec![IpConfig {
                address: "192.168.5.5/24".parse().unwrap(),
                gateway: None,
                interface: Some(0),
            }],
            routes: vec![],
            dns: Dns {
                nameservers: vec!["192.168.5.1".into()],
                ..Dns::default()
            },
        };
        let merged = kino_result().chained_after(prev);
        assert_eq!(merged.interfaces.len(), 3);
        assert_eq!(merged.interfaces[2].name, "eth0");
        assert_eq!(merged.ips[0].interface, Some(0));
        assert_eq!(merged.ips[1].interface, Some(2));
        assert_eq!(merged.ips[2].interface, Some(2));
        assert_eq!(merged.routes.len(), 2);
        assert_eq!(merged.dns.nameservers, ["192.168.5.1"]);
        merged.validate().expect("still valid");
        let alone = kino_result().chained_after(CniResult::default());
        assert_eq!(alone, kino_result());
    }

    #[test]
    fn cidrs_keep_host_bits() {
        let cidr: Cidr = "10.0.1.23/24".parse().expect("parses");
        assert_eq!(cidr.to_string(), "10.0.1.23/24");
        assert!("fd00::1/129".parse::<Cidr>().is_err());
        assert!("fd00::1/x".parse::<Cidr>().is_err());
    }
}
