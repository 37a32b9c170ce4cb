//! kube-proxy's nftables layout, written as pkg/proxy/nftables/proxier.go's knftables
//! transaction writes it (`nft -f -` input of `add`/`flush` commands) for ClusterIP services
//! with endpoints: table `ip kube-proxy`; base chains at `dstnat - 10` (filter) and
//! `dstnat`/`srcnat` (nat); `services` dispatches with ONE rule, `ip daddr . meta l4proto .
//! th dport vmap @service-ips`; a `service-…` chain per service marks off-cluster sources
//! for masquerade and picks an endpoint with `numgen random mod n vmap { i : goto
//! endpoint-… }`; an `endpoint-…` chain per endpoint marks hairpin traffic and `dnat to`s.
//!
//! A one-service change ([`add_one`], [`delete_one`]) is one transaction with that
//! service's verdict-map element and chains: what kube-proxy's incremental sync sends.

use std::fmt::Write;

use crate::iptables::CLUSTER_CIDR;
use crate::services::ServicePort;

const TABLE: &str = "ip kube-proxy";
const MASQ_MARK: &str = "0x4000";

/// The whole ruleset: kube-proxy's fixed chains, maps and rules, then every service.
pub fn full(services: &[ServicePort]) -> String {
    let mut out = String::with_capacity(4000 + services.len() * 3000);
    setup(&mut out);
    for map in [
        "firewall-ips",
        "no-endpoint-services",
        "no-endpoint-nodeports",
        "service-ips",
        "service-nodeports",
    ] {
        let _ = writeln!(out, "flush map {TABLE} {map}");
    }
    for s in services {
        service(&mut out, s);
    }
    out
}

/// One service appears: its chains, their rules and its `service-ips` element.
pub fn add_one(s: &ServicePort) -> String {
    let mut out = String::new();
    service(&mut out, s);
    out
}

/// One service goes: its element, then its chains (flushed, deleted; kernels ≥ 6.2 free
/// a chain as soon as no element points to it).
pub fn delete_one(s: &ServicePort) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "delete element {TABLE} service-ips {{ {} . tcp . {} }}",
        s.vip, s.port
    );
    let mut chains = vec![s.nft_service_chain()];
    chains.extend(s.endpoints.iter().map(|ep| s.nft_endpoint_chain(ep)));
    for chain in &chains {
        let _ = writeln!(out, "flush chain {TABLE} {chain}");
    }
    for chain in &chains {
        let _ = writeln!(out, "delete chain {TABLE} {chain}");
    }
    out
}

/// `setupNFTables`: the table, base chains, jump chains, masquerading, the maps.
fn setup(out: &mut String) {
    let _ = writeln!(
        out,
        "add table {TABLE} {{ comment \"rules for kube-proxy\" ; }}"
    );
    // dstnat = -100, srcnat = 100 (`priority dstnat-10` in knftables' spelling).
    for (name, kind, hook, priority) in [
        ("filter-prerouting", "filter", "prerouting", -110),
        ("filter-input", "filter", "input", -110),
        ("filter-forward", "filter", "forward", -110),
        ("filter-output", "filter", "output", -110),
        ("nat-prerouting", "nat", "prerouting", -100),
        ("nat-output", "nat", "output", -100),
        ("nat-postrouting", "nat", "postrouting", 100),
    ] {
        let _ = writeln!(
            out,
            "add chain {TABLE} {name} {{ type {kind} hook {hook} priority {priority} ; }}"
        );
        let _ = writeln!(out, "flush chain {TABLE} {name}");
    }
    let mut created: Vec<&str> = Vec::new();
    for (chain, from, extra) in [
        ("service-endpoints-check", "filter-input", "ct state new "),
        ("service-endpoints-check", "filter-forward", "ct state new "),
        ("service-endpoints-check", "filter-output", "ct state new "),
        ("firewall-check", "filter-prerouting", "ct state new "),
        ("firewall-check", "filter-output", "ct state new "),
        ("services", "nat-output", ""),
        ("services", "nat-prerouting", ""),
        ("masquerading", "nat-postrouting", ""),
    ] {
        ensure_chain(out, chain, &mut created);
        let _ = writeln!(out, "add rule {TABLE} {from} {extra}jump {chain}");
    }
    for chain in ["services", "masquerading", "mark-for-masquerade"] {
        ensure_chain(out, chain, &mut created);
    }
    let _ = writeln!(
        out,
        "add rule {TABLE} mark-for-masquerade mark set mark or {MASQ_MARK}"
    );
    let _ = writeln!(
        out,
        "add rule {TABLE} masquerading mark and {MASQ_MARK} == 0 return"
    );
    let _ = writeln!(
        out,
        "add rule {TABLE} masquerading mark set mark xor {MASQ_MARK}"
    );
    let _ = writeln!(out, "add rule {TABLE} masquerading masquerade fully-random");
    // nodePortAddresses matches all: the set is added and deleted (so it does not exist).
    let _ = writeln!(
        out,
        "add set {TABLE} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}"
    );
    let _ = writeln!(out, "delete set {TABLE} nodeport-ips");
    let vmap = |out: &mut String, name: &str, key: &str, comment: &str| {
        let _ = writeln!(
            out,
            "add map {TABLE} {name} {{ type {key} : verdict ; comment \"{comment}\" ; }}"
        );
    };
    let by_ip = "ipv4_addr . inet_proto . inet_service";
    let by_port = "inet_proto . inet_service";
    vmap(
        out,
        "no-endpoint-services",
        by_ip,
        "vmap to drop or reject packets to services with no endpoints",
    );
    vmap(
        out,
        "no-endpoint-nodeports",
        by_port,
        "vmap to drop or reject packets to service nodeports with no endpoints",
    );
    let _ = writeln!(
        out,
        "add chain {TABLE} reject-chain {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}"
    );
    let _ = writeln!(out, "flush chain {TABLE} reject-chain");
    let _ = writeln!(out, "add rule {TABLE} reject-chain reject");
    let _ = writeln!(
        out,
        "add rule {TABLE} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services"
    );
    let _ = writeln!(
        out,
        "add rule {TABLE} service-endpoints-check fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports"
    );
    vmap(
        out,
        "firewall-ips",
        by_ip,
        "destinations that are subject to LoadBalancerSourceRanges",
    );
    ensure_chain(out, "firewall-check", &mut created);
    let _ = writeln!(
        out,
        "add rule {TABLE} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips"
    );
    vmap(
        out,
        "service-ips",
        by_ip,
        "ClusterIP, ExternalIP and LoadBalancer IP traffic",
    );
    vmap(out, "service-nodeports", by_port, "NodePort traffic");
    let _ = writeln!(
        out,
        "add rule {TABLE} services ip daddr . meta l4proto . th dport vmap @service-ips"
    );
    let _ = writeln!(
        out,
        "add rule {TABLE} services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"
    );
}

/// knftables' ensureChain: add and flush, once per transaction.
fn ensure_chain<'a>(out: &mut String, chain: &'a str, created: &mut Vec<&'a str>) {
    if created.contains(&chain) {
        return;
    }
    let _ = writeln!(out, "add chain {TABLE} {chain}");
    let _ = writeln!(out, "flush chain {TABLE} {chain}");
    created.push(chain);
}

/// One service's chains, rules and `service-ips` element.
fn service(out: &mut String, s: &ServicePort) {
    let svc = s.nft_service_chain();
    let endpoints: Vec<String> = s
        .endpoints
        .iter()
        .map(|ep| s.nft_endpoint_chain(ep))
        .collect();
    for chain in endpoints.iter().chain(std::iter::once(&svc)) {
        let _ = writeln!(out, "add chain {TABLE} {chain}");
        let _ = writeln!(out, "flush chain {TABLE} {chain}");
    }
    let _ = writeln!(
        out,
        "add element {TABLE} service-ips {{ {} . tcp . {} : goto {svc} }}",
        s.vip, s.port
    );
    let _ = writeln!(
        out,
        "add rule {TABLE} {svc} ip daddr {} tcp dport {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
        s.vip, s.port
    );
    let vmap: Vec<String> = endpoints
        .iter()
        .enumerate()
        .map(|(i, chain)| format!("{i} : goto {chain}"))
        .collect();
    let _ = writeln!(
        out,
        "add rule {TABLE} {svc} numgen random mod {} vmap {{ {} }}",
        endpoints.len(),
        vmap.join(" , ")
    );
    for (ep, chain) in s.endpoints.iter().zip(&endpoints) {
        let _ = writeln!(
            out,
            "add rule {TABLE} {chain} ip saddr {} jump mark-for-masquerade",
            ep.ip()
        );
        let _ = writeln!(
            out,
            "add rule {TABLE} {chain} meta l4proto tcp dnat to {ep}"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::services::services;

    #[test]
    fn one_vmap_rule_dispatches_every_service() {
        let backends: Vec<Ipv4Addr> = (10..20).map(|i| Ipv4Addr::new(10, 244, 0, i)).collect();
        let s = services(3, &backends);
        let text = full(&s);
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("add rule ip kube-proxy services "))
                .count(),
            2,
            "the service-ips vmap and the nodeports vmap"
        );
        assert_eq!(
            text.matches("add element ip kube-proxy service-ips")
                .count(),
            3
        );
        assert!(text.contains("{ 10.96.0.3 . tcp . 80 : goto service-"));
        let pick = text
            .lines()
            .find(|l| l.contains("numgen random mod 10 vmap"))
            .expect("a numgen rule");
        assert_eq!(pick.matches(": goto endpoint-").count(), 10);
        assert!(text.contains("meta l4proto tcp dnat to 10.244.0.19:8080"));
        let add = add_one(&s[2]);
        assert_eq!(add.matches("add chain").count(), 11);
        let delete = delete_one(&s[2]);
        assert!(
            delete.starts_with("delete element ip kube-proxy service-ips { 10.96.0.3 . tcp . 80 }")
        );
        assert_eq!(delete.matches("delete chain").count(), 11);
    }
}
