//! An endpoint's veth pair: the host side `lxc<hash>` in the node's namespace, the pod side
//! created directly inside the pod's namespace under the requested name (usually `eth0`) and
//! configured there (/32 and /128 addresses, link and `lo` up, a route to the gateway via the
//! device, then the default route via the gateway), and on the node a /32 (/128) route to the
//! pod via the lxc.
//!
//! [`create_veth`] is all or nothing: after any failure the lxc is deleted again, which takes
//! the pod side, its addresses and routes and the node's routes with it.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::PathBuf;

use super::EndpointError;
use crate::datapath::abi::LXC_PREFIX;
use crate::netlink::{LinkDetails, MacAddr, Netlink, NetlinkError};
use crate::netns::{open_netns, run_in_netns};

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// What to build for one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VethRequest {
    /// The container (sandbox) id, from CNI_CONTAINERID.
    pub container_id: String,
    /// The interface name inside the pod, from CNI_IFNAME (usually `eth0`).
    pub ifname: String,
    /// The pod's network namespace: `/run/netns/<name>` or `/proc/<pid>/ns/net`.
    pub netns: PathBuf,
    /// The pod's IPv4 address (a /32 in the pod).
    pub ipv4: Ipv4Addr,
    /// The pod's IPv6 address (a /128 in the pod), if it has one.
    pub ipv6: Option<Ipv6Addr>,
    /// The node's gateway (on `kino_host`): the pod's default route.
    pub gateway_v4: Ipv4Addr,
    /// The IPv6 gateway, when the pod has IPv6 and the node routes it.
    pub gateway_v6: Option<Ipv6Addr>,
    /// A MAC for the pod side (CNI `MAC=`), else the kernel picks one.
    pub mac: Option<MacAddr>,
    /// MTU of both ends, else the kernel's default (1500); see [`validate_mtu`].
    pub mtu: Option<u32>,
}

/// The veth pair built for an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointVeth {
    /// Host side name (`lxc` + 12 hex digits).
    pub lxc_name: String,
    /// Host side ifindex (in the node's namespace).
    pub lxc_ifindex: u32,
    /// Host side MAC: the source MAC of packets delivered to the pod.
    pub lxc_mac: MacAddr,
    /// Pod side name.
    pub pod_ifname: String,
    /// Pod side ifindex (in the pod's namespace).
    pub pod_ifindex: u32,
    /// Pod side MAC.
    pub pod_mac: MacAddr,
}

/// The host side name of the endpoint (`container_id`, `ifname`): `lxc` and the first 12 hex
/// digits of a 64-bit FNV-1a hash of both (stable across agent versions; 15 characters).
pub fn lxc_name(container_id: &str, ifname: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{LXC_PREFIX}{:012x}", hash >> 16)
}

/// Smallest MTU the kernel takes for an IPv4 interface (RFC 791).
pub const MIN_MTU_V4: u32 = 68;
/// Smallest MTU of an interface with IPv6 (RFC 8200): below it the kernel drops the
/// interface's IPv6 addresses.
pub const MIN_MTU_V6: u32 = 1280;
/// Largest MTU of a veth.
pub const MAX_MTU: u32 = 65_535;

/// Checks an endpoint MTU: [`MIN_MTU_V4`]..=[`MAX_MTU`], at least [`MIN_MTU_V6`] when the
/// pod has IPv6. The error says which bound was broken (callers prefix where the value came
/// from).
pub fn validate_mtu(mtu: u32, has_ipv6: bool) -> Result<(), String> {
    let min = if has_ipv6 { MIN_MTU_V6 } else { MIN_MTU_V4 };
    if (min..=MAX_MTU).contains(&mtu) {
        return Ok(());
    }
    let family = if has_ipv6 { " for a pod with IPv6" } else { "" };
    Err(format!(
        "mtu {mtu} is out of range: it must be between {min} and {MAX_MTU}{family}"
    ))
}

fn validate(request: &VethRequest) -> Result<(), EndpointError> {
    let invalid = |reason: String| Err(EndpointError::InvalidRequest(reason));
    if let Some(mtu) = request.mtu {
        validate_mtu(mtu, request.ipv6.is_some()).map_err(EndpointError::InvalidRequest)?;
    }
    if request.container_id.is_empty() {
        return invalid("the container id is empty".to_owned());
    }
    let name = &request.ifname;
    if name.is_empty() || name.len() > MAX_IFNAME {
        return invalid(format!(
            "interface name {name:?} must have 1 to {MAX_IFNAME} characters"
        ));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return invalid(format!(
            "interface name {name:?} is not a valid Linux interface name"
        ));
    }
    Ok(())
}

/// Builds the endpoint's veth pair and routes (see the module doc). Fails with
/// [`EndpointError::LxcExists`] if the lxc already exists (delete the endpoint first), and
/// leaves nothing behind on any failure.
pub async fn create_veth(
    netlink: &Netlink,
    request: &VethRequest,
) -> Result<EndpointVeth, EndpointError> {
    validate(request)?;
    let lxc = lxc_name(&request.container_id, &request.ifname);
    if netlink.link_by_name(&lxc).await?.is_some() {
        return Err(EndpointError::LxcExists { lxc });
    }
    let netns = open_netns(&request.netns)?;
    if let Err(e) = netlink
        .add_veth(
            &lxc,
            &request.ifname,
            Some(netns.as_fd()),
            request.mac,
            request.mtu,
        )
        .await
    {
        // The lxc did not exist a moment ago, so the name that clashed is the pod's.
        return Err(if e.is_exists() {
            EndpointError::PodInterfaceExists {
                ifname: request.ifname.clone(),
                netns: request.netns.clone(),
            }
        } else {
            e.into()
        });
    }
    drop(netns);

    match finish_veth(netlink, request, &lxc).await {
        Ok(veth) => Ok(veth),
        Err(e) => {
            if let Err(undo) = delete_veth(netlink, &lxc).await {
                tracing::warn!(lxc, error = %undo, "rolling back a failed endpoint veth: cannot delete the lxc");
            }
            Err(e)
        }
    }
}

async fn finish_veth(
    netlink: &Netlink,
    request: &VethRequest,
    lxc: &str,
) -> Result<EndpointVeth, EndpointError> {
    let host = netlink
        .link_by_name(lxc)
        .await?
        .ok_or_else(|| EndpointError::Vanished {
            lxc: lxc.to_owned(),
        })?;

    let pod = {
        let request = request.clone();
        run_in_netns(&request.netns.clone(), move || configure_pod(request)).await??
    };

    if request.ipv6.is_some() {
        // The node resolves the pod by NDP from the lxc's link-local address, which duplicate
        // address detection would keep "tentative" (unusable) for up to 2 s after the lxc
        // comes up: the node could not answer the pod's first packets.
        set_ipv6_sysctl(lxc, "accept_dad", "0")?;
    }
    netlink.set_up(host.index).await?;
    netlink
        .add_route_v4(request.ipv4, 32, host.index, None, None, true)
        .await?;
    if let Some(ipv6) = request.ipv6 {
        netlink
            .add_route_v6(ipv6, 128, host.index, None, true)
            .await?;
    }
    Ok(EndpointVeth {
        lxc_name: lxc.to_owned(),
        lxc_ifindex: host.index,
        lxc_mac: host.mac,
        pod_ifname: request.ifname.clone(),
        pod_ifindex: pod.index,
        pod_mac: pod.mac,
    })
}

/// Runs inside the pod's namespace, on its own thread and netlink connection.
async fn configure_pod(request: VethRequest) -> Result<LinkDetails, EndpointError> {
    let netlink = Netlink::connect().map_err(|source| EndpointError::NetlinkSocket {
        netns: request.netns.clone(),
        source,
    })?;
    let missing = || EndpointError::PodInterfaceMissing {
        ifname: request.ifname.clone(),
        netns: request.netns.clone(),
    };
    let link = netlink
        .link_by_name(&request.ifname)
        .await?
        .ok_or_else(missing)?;
    if request.ipv6.is_some() {
        configure_pod_ipv6(&request.ifname)?;
    }
    netlink
        .add_address(link.index, request.ipv4.into(), 32)
        .await?;
    if let Some(ipv6) = request.ipv6 {
        // No duplicate address detection: the address is the pod's alone (IPAM), and
        // usable at once rather than "tentative" for a second.
        netlink.add_address_v6_nodad(link.index, ipv6, 128).await?;
    }
    netlink.set_up(link.index).await?;
    if let Some(lo) = netlink.link_by_name("lo").await? {
        netlink.set_up(lo.index).await?;
    }
    // The gateway is not in the pod's /32: reach it on the link, then route everything via it.
    netlink
        .add_route_v4(request.gateway_v4, 32, link.index, None, None, true)
        .await?;
    netlink
        .add_route_v4(
            Ipv4Addr::UNSPECIFIED,
            0,
            link.index,
            Some(request.gateway_v4),
            None,
            false,
        )
        .await
        .map_err(|e| default_route_error(e, &request))?;
    if let (Some(_), Some(gateway)) = (request.ipv6, request.gateway_v6) {
        netlink
            .add_route_v6(gateway, 128, link.index, None, true)
            .await?;
        netlink
            .add_route_v6(Ipv6Addr::UNSPECIFIED, 0, link.index, Some(gateway), false)
            .await
            .map_err(|e| default_route_error(e, &request))?;
    }
    netlink.link_by_index(link.index).await?.ok_or_else(missing)
}

/// IPv6 on the pod side before it goes up: on even where the runtime turned it off by
/// default, and no router advertisements or SLAAC (the node sends none, and the pod's only
/// router is its gateway, set by route). Runs inside the pod's namespace, whose sysctls
/// `/proc/sys/net` shows to this thread.
fn configure_pod_ipv6(ifname: &str) -> Result<(), EndpointError> {
    for (name, value) in [("disable_ipv6", "0"), ("accept_ra", "0"), ("autoconf", "0")] {
        set_ipv6_sysctl(ifname, name, value)?;
    }
    Ok(())
}

/// Writes `net.ipv6.conf.<ifname>.<name>` in the calling thread's network namespace.
fn set_ipv6_sysctl(ifname: &str, name: &str, value: &str) -> Result<(), EndpointError> {
    let path = PathBuf::from(format!("/proc/sys/net/ipv6/conf/{ifname}/{name}"));
    std::fs::write(&path, value).map_err(|source| EndpointError::Sysctl { path, source })
}

fn default_route_error(e: NetlinkError, request: &VethRequest) -> EndpointError {
    if e.is_exists() {
        EndpointError::PodHasDefaultRoute {
            netns: request.netns.clone(),
        }
    } else {
        e.into()
    }
}

/// Deletes the lxc `lxc_name` (its pod side, addresses and both sides' routes go with it);
/// `Ok(false)` when it did not exist (the pod's namespace being gone deletes it too).
pub async fn delete_veth(netlink: &Netlink, lxc_name: &str) -> Result<bool, NetlinkError> {
    match netlink.link_by_name(lxc_name).await? {
        Some(link) => netlink.delete_link(link.index).await,
        None => Ok(false),
    }
}

/// Every lxc of the node (for garbage collection of endpoints the agent no longer knows).
pub async fn list_lxcs(netlink: &Netlink) -> Result<Vec<LinkDetails>, NetlinkError> {
    let mut links = netlink.links().await?;
    links.retain(|l| l.name.starts_with(LXC_PREFIX) && l.kind.as_deref() == Some("veth"));
    links.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(links)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lxc_names_are_stable_short_and_distinct() {
        let name = lxc_name("0123456789abcdef", "eth0");
        assert_eq!(name, lxc_name("0123456789abcdef", "eth0"));
        assert_eq!(name.len(), 15, "{name}");
        assert!(name.starts_with("lxc"));
        assert!(name[3..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(name, lxc_name("0123456789abcdef", "eth1"));
        assert_ne!(name, lxc_name("0123456789abcdeg", "eth0"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(lxc_name("ab", "c"), lxc_name("a", "bc"));
        // Pinned value: changing the hash would orphan every lxc of running nodes.
        assert_eq!(lxc_name("c1", "eth0"), "lxcf53f02b3bfe9");
    }

    #[test]
    fn rejects_bad_requests() {
        let ok = VethRequest {
            container_id: "c1".to_owned(),
            ifname: "eth0".to_owned(),
            netns: "/run/netns/x".into(),
            ipv4: Ipv4Addr::new(10, 0, 0, 2),
            ipv6: None,
            gateway_v4: Ipv4Addr::new(10, 0, 0, 1),
            gateway_v6: None,
            mac: None,
            mtu: Some(9000),
        };
        assert!(validate(&ok).is_ok());
        for (ifname, container_id) in [
            ("", "c1"),
            ("a-very-long-ifname", "c1"),
            ("eth/0", "c1"),
            ("eth 0", "c1"),
            ("eth0", ""),
        ] {
            let request = VethRequest {
                ifname: ifname.to_owned(),
                container_id: container_id.to_owned(),
                ..ok.clone()
            };
            assert!(
                matches!(validate(&request), Err(EndpointError::InvalidRequest(_))),
                "{ifname:?} {container_id:?}"
            );
        }
        let v6 = Some(Ipv6Addr::LOCALHOST);
        for (mtu, ipv6, valid) in [
            (68, None, true),
            (65_535, None, true),
            (1280, v6, true),
            (67, None, false),
            (0, None, false),
            (65_536, None, false),
            (1279, v6, false),
        ] {
            let request = VethRequest {
                mtu: Some(mtu),
                ipv6,
                ..ok.clone()
            };
            assert_eq!(validate(&request).is_ok(), valid, "mtu {mtu} ipv6 {ipv6:?}");
        }
        let message = validate_mtu(1000, true).expect_err("below the IPv6 minimum");
        assert_eq!(
            message,
            "mtu 1000 is out of range: it must be between 1280 and 65535 for a pod with IPv6"
        );
    }
}
