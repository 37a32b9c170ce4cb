//! kube-proxy's iptables layout, written line for line as pkg/proxy/iptables/proxier.go's
//! `syncProxyRules` writes its `iptables-restore --noflush --counters` input for ClusterIP
//! services with endpoints (no NodePorts, no load balancers, cluster-CIDR local detection):
//!
//! - nat: `KUBE-SERVICES` holds one rule per service port (`-d VIP/32 -p tcp --dport P -j
//!   KUBE-SVC-…`), in the order kube-proxy walks its service map, then the NodePorts tail
//!   rule; `KUBE-SVC-…` marks traffic from outside the cluster CIDR for masquerade, then
//!   picks an endpoint with `-m statistic --mode random --probability 1/(n-i)`;
//!   `KUBE-SEP-…` marks hairpin traffic and DNATs; `KUBE-POSTROUTING` masquerades marked
//!   packets; with more than 1 000 endpoints in all, kube-proxy's "large cluster mode" drops
//!   the comments of the SVC→SEP and SEP rules;
//! - filter: the empty service/firewall chains and `KUBE-FORWARD`'s three rules;
//! - the jumps from the built-in chains that kube-proxy installs with `iptables -I` at its
//!   first sync ([`jumps`]).
//!
//! A partial sync (kube-proxy ≥ 1.27, `MinimizeIPTablesRestore`) writes the same input but
//! the chains of unchanged services: KUBE-SERVICES is still written whole (its rules go to
//! `natRules` before the skip), so a one-service change restores S + 1 rules of it plus that
//! service's chains ([`partial_add`], [`partial_delete`]).

use std::fmt::Write;

use crate::services::ServicePort;

/// The cluster CIDR kube-proxy is given (`--cluster-cidr`): pods are local, others masqueraded.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
const MASQ_MARK: &str = "0x4000";
/// kube-proxy's `largeClusterEndpointsThreshold`.
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// The `iptables-restore --noflush` input that installs kube-proxy's jump rules (its
/// `iptablesJumpChains`, inserted first in the built-in chains), creating the chains.
pub fn jumps() -> String {
    let mut out = String::from("*filter\n");
    for chain in [
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-SERVICES",
        "KUBE-FORWARD",
        "KUBE-PROXY-FIREWALL",
    ] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    let new = "-m conntrack --ctstate NEW";
    for (chain, from, comment, extra) in [
        (
            "KUBE-EXTERNAL-SERVICES",
            "INPUT",
            "kubernetes externally-visible service portals",
            new,
        ),
        (
            "KUBE-EXTERNAL-SERVICES",
            "FORWARD",
            "kubernetes externally-visible service portals",
            new,
        ),
        (
            "KUBE-NODEPORTS",
            "INPUT",
            "kubernetes health check service ports",
            "",
        ),
        (
            "KUBE-SERVICES",
            "FORWARD",
            "kubernetes service portals",
            new,
        ),
        ("KUBE-SERVICES", "OUTPUT", "kubernetes service portals", new),
        ("KUBE-FORWARD", "FORWARD", "kubernetes forwarding rules", ""),
        (
            "KUBE-PROXY-FIREWALL",
            "INPUT",
            "kubernetes load balancer firewall",
            new,
        ),
        (
            "KUBE-PROXY-FIREWALL",
            "OUTPUT",
            "kubernetes load balancer firewall",
            new,
        ),
        (
            "KUBE-PROXY-FIREWALL",
            "FORWARD",
            "kubernetes load balancer firewall",
            new,
        ),
    ] {
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!("{extra} ")
        };
        let _ = writeln!(
            out,
            "-I {from} {extra}-m comment --comment \"{comment}\" -j {chain}"
        );
    }
    out.push_str("COMMIT\n*nat\n");
    for chain in ["KUBE-SERVICES", "KUBE-POSTROUTING"] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for (chain, from, comment) in [
        ("KUBE-SERVICES", "OUTPUT", "kubernetes service portals"),
        ("KUBE-SERVICES", "PREROUTING", "kubernetes service portals"),
        (
            "KUBE-POSTROUTING",
            "POSTROUTING",
            "kubernetes postrouting rules",
        ),
    ] {
        let _ = writeln!(
            out,
            "-I {from} -m comment --comment \"{comment}\" -j {chain}"
        );
    }
    out.push_str("COMMIT\n");
    out
}

/// A full sync: every chain and rule of `services`, in that order in KUBE-SERVICES.
pub fn full(services: &[ServicePort]) -> String {
    let all: Vec<&ServicePort> = services.iter().collect();
    restore(services, &all, &[])
}

/// A partial sync after `added` (the last of `services`) appeared: KUBE-SERVICES whole,
/// `added`'s chains.
pub fn partial_add(services: &[ServicePort]) -> String {
    let added: Vec<&ServicePort> = services.last().into_iter().collect();
    restore(services, &added, &[])
}

/// A partial sync after `deleted` went away from `services` (which no longer hold it):
/// KUBE-SERVICES whole, `deleted`'s chains flushed and removed.
pub fn partial_delete(services: &[ServicePort], deleted: &ServicePort) -> String {
    restore(services, &[], &[deleted])
}

/// The restore input: `services` in KUBE-SERVICES, the chains of `written`, `deleted`'s
/// chains flushed and deleted.
fn restore(services: &[ServicePort], written: &[&ServicePort], deleted: &[&ServicePort]) -> String {
    let endpoints: usize = services.iter().map(|s| s.endpoints.len()).sum();
    let large = endpoints > LARGE_CLUSTER_ENDPOINTS;
    let mut out = String::with_capacity(200 + written.len() * 2000 + services.len() * 160);
    out.push_str("*filter\n");
    for chain in [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
    ] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    out.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    let _ = writeln!(
        out,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
    );
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    out.push_str("COMMIT\n*nat\n");
    for chain in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for s in written.iter().chain(deleted) {
        let _ = writeln!(out, ":{} - [0:0]", s.svc_chain());
        for ep in &s.endpoints {
            let _ = writeln!(out, ":{} - [0:0]", s.sep_chain(ep));
        }
    }
    let _ = writeln!(
        out,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    );
    let _ = writeln!(out, "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}");
    out.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    let _ = writeln!(out, "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}");
    let mut next_written = written.iter().peekable();
    for s in services {
        let name = s.port_name_string();
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {}/32 --dport {} -j {}",
            s.vip,
            s.port,
            s.svc_chain()
        );
        if next_written.peek().is_some_and(|w| std::ptr::eq(**w, s)) {
            next_written.next();
            service_chains(&mut out, s, large);
        }
    }
    out.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    for s in deleted {
        let _ = writeln!(out, "-X {}", s.svc_chain());
        for ep in &s.endpoints {
            let _ = writeln!(out, "-X {}", s.sep_chain(ep));
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// The rules of one service's KUBE-SVC and KUBE-SEP chains.
fn service_chains(out: &mut String, s: &ServicePort, large: bool) {
    let name = s.port_name_string();
    let svc = s.svc_chain();
    let _ = writeln!(
        out,
        "-A {svc} -m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {}/32 --dport {} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ",
        s.vip, s.port
    );
    let comment = |text: &str| {
        if large {
            String::new()
        } else {
            format!(" -m comment --comment \"{text}\"")
        }
    };
    let n = s.endpoints.len();
    for (i, ep) in s.endpoints.iter().enumerate() {
        let statistic = if i + 1 < n {
            format!(
                " -m statistic --mode random --probability {:.10}",
                1.0 / (n - i) as f64
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "-A {svc}{}{statistic} -j {}",
            comment(&format!("{name} -> {ep}")),
            s.sep_chain(ep)
        );
    }
    for ep in &s.endpoints {
        let sep = s.sep_chain(ep);
        let _ = writeln!(
            out,
            "-A {sep}{} -s {}/32 -j KUBE-MARK-MASQ",
            comment(&name),
            ep.ip()
        );
        let _ = writeln!(
            out,
            "-A {sep}{} -m tcp -p tcp -j DNAT --to-destination {ep}",
            comment(&name)
        );
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::services::services;

    fn backends() -> Vec<Ipv4Addr> {
        (10..20).map(|i| Ipv4Addr::new(10, 244, 0, i)).collect()
    }

    #[test]
    fn a_full_sync_walks_services_in_order_and_picks_endpoints_uniformly() {
        let s = services(3, &backends());
        let text = full(&s);
        let services_rules: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES"))
            .collect();
        assert_eq!(services_rules.len(), 4, "3 services and the nodeports tail");
        assert!(services_rules[2].contains("-d 10.96.0.3/32 --dport 80"));
        assert!(services_rules[3].contains("KUBE-NODEPORTS"));
        let svc = s[0].svc_chain();
        let picks: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("-A {svc} ")) && l.contains("KUBE-SEP-"))
            .collect();
        assert_eq!(picks.len(), 10);
        assert!(picks[0].contains("--probability 0.1000000000"));
        assert!(picks[8].contains("--probability 0.5000000000"));
        assert!(
            !picks[9].contains("statistic"),
            "the last endpoint is taken always"
        );
        // 30 endpoints: comments kept (not large-cluster mode).
        assert!(picks[0].contains("-> 10.244.0.10:8080"));
        assert!(text.contains(&format!(
            "-A {} -m comment --comment \"bench/svc-00000:http\" -m tcp -p tcp -j DNAT --to-destination 10.244.0.10:8080",
            s[0].sep_chain(&s[0].endpoints[0])
        )));
        assert_eq!(text.matches("COMMIT").count(), 2);
    }

    #[test]
    fn large_clusters_lose_endpoint_comments() {
        let s = services(101, &backends());
        let text = full(&s);
        let sep = s[0].sep_chain(&s[0].endpoints[0]);
        assert!(text.contains(&format!(
            "-A {sep} -m tcp -p tcp -j DNAT --to-destination 10.244.0.10:8080"
        )));
    }

    #[test]
    fn partial_syncs_rewrite_kube_services_and_one_service() {
        let s = services(5, &backends());
        let add = partial_add(&s);
        assert_eq!(
            add.lines()
                .filter(|l| l.starts_with("-A KUBE-SERVICES"))
                .count(),
            6
        );
        assert!(add.contains(&format!(":{} - [0:0]", s[4].svc_chain())));
        assert!(!add.contains(&s[0].svc_chain().replace("KUBE-SVC", ":KUBE-SVC")));
        assert_eq!(
            add.lines().filter(|l| l.starts_with(":KUBE-SEP-")).count(),
            10
        );
        let del = partial_delete(&s[..4], &s[4]);
        assert_eq!(
            del.lines()
                .filter(|l| l.starts_with("-A KUBE-SERVICES"))
                .count(),
            5
        );
        assert_eq!(del.lines().filter(|l| l.starts_with("-X ")).count(), 11);
        assert!(!del.contains(&format!("-A {}", s[4].svc_chain())));
    }

    #[test]
    fn jumps_hook_every_kube_chain() {
        let text = jumps();
        assert!(text.contains(
            "-I PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
        ));
        assert!(text.contains("-I POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"));
        assert_eq!(text.lines().filter(|l| l.starts_with("-I ")).count(), 12);
    }
}
