//! Unit tests of the incremental compiler (`compile.rs` and its submodules): results
//! against hand-checked entries, and the work counted per change.

use super::*;
use crate::cidr::Cidr;
use crate::identity;
use crate::labels::Labels;
use crate::policy::model::{Entity, Policy, PolicyKey};
use crate::policy::parse_documents;
use crate::policy_map::Enforcement;

fn policy(yaml: &str) -> Policy {
    let out = parse_documents(yaml, "shop");
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    out.policies.into_iter().next().unwrap()
}

fn labels(text: &str) -> Labels {
    Labels::parse_list(text).unwrap()
}

fn entries(c: &Compiler, id: u32) -> Vec<String> {
    c.policy(id)
        .unwrap()
        .entries
        .iter()
        .map(|(k, e)| format!("{k} {:?}", e.verdict))
        .collect()
}

#[test]
fn compiles_and_recompiles_incrementally() {
    let mut c = Compiler::new(CompilerConfig::default());
    c.upsert_identity(300, labels("container:namespace=shop,container:app=web"));
    c.upsert_identity(301, labels("container:namespace=shop,container:app=lb"));
    c.upsert_identity(302, labels("container:namespace=other,container:app=lb"));
    let changes = c.recompile();
    assert_eq!(changes.len(), 3);
    let p = c.policy(300).unwrap();
    assert_eq!(p.enforcement, Enforcement::default());
    assert!(p.entries.is_empty());

    c.upsert_policy(policy(
        r#"
apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: lb}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  - fromCIDRSet: [{cidr: 192.168.0.0/16, except: [192.168.1.0/24]}]
"#,
    ));
    let changes = c.recompile();
    assert_eq!(
        changes.iter().map(|c| c.identity).collect::<Vec<_>>(),
        vec![300]
    );
    let p = c.policy(300).unwrap();
    assert!(p.enforcement.ingress && !p.enforcement.egress);
    let cidr16 = c.cidr_identities()[&"192.168.0.0/16".parse().unwrap()];
    assert_eq!(
        entries(&c, 300),
        vec![
            "ingress 1 */ANY Allow".to_owned(),
            "ingress 301 80/TCP Allow".to_owned(),
            format!("ingress {cidr16} */ANY Allow"),
        ]
    );
    // A new matching peer identity recompiles only the subject.
    c.upsert_identity(
        303,
        labels("container:namespace=shop,container:app=lb,container:v=2"),
    );
    let changes = c.recompile();
    let ids: Vec<u32> = changes.iter().map(|c| c.identity).collect();
    assert_eq!(ids, vec![300, 303]);
    assert!(entries(&c, 300).contains(&"ingress 303 80/TCP Allow".to_owned()));
    // Deleting the policy lifts enforcement.
    c.delete_policy(&PolicyKey {
        namespace: "shop".into(),
        name: "web".into(),
    });
    c.recompile();
    assert!(c.policy(300).unwrap().entries.is_empty());
    assert!(c.cidr_identities().is_empty());
}

#[test]
fn cidr_identities_are_selected_by_cidr_and_entity_rules() {
    let mut c = Compiler::new(CompilerConfig::default());
    c.upsert_identity(300, labels("container:namespace=shop,container:app=web"));
    c.upsert_identity(301, labels("container:namespace=shop,container:app=lb"));
    c.upsert_policy(policy(
        r#"
apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  - fromEntities: [world]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  egress:
  - toCIDR: [192.168.0.0/16]
"#,
    ));
    c.recompile();
    // Prefixes named later, by another policy, get CIDR identities that the rules
    // above select when their CIDR covers them (and no exception does); world selects
    // every CIDR identity.
    c.upsert_policy(policy(
        r#"
apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: lb}
spec:
  endpointSelector: {matchLabels: {app: lb}}
  egress:
  - toCIDR: [10.2.3.4/32, 10.1.5.0/24, 192.168.1.1/32, 172.16.0.0/12]
"#,
    ));
    c.recompile();
    let id = |p: &str| c.cidr_identities()[&p.parse::<Cidr>().unwrap()];
    let (host, in8, except, in16, other) = (
        id("10.2.3.4/32"),
        id("10.1.5.0/24"),
        id("10.1.0.0/16"),
        id("192.168.1.1/32"),
        id("172.16.0.0/12"),
    );
    let has = |c: &Compiler, entry: String| entries(c, 300).contains(&entry);
    assert!(has(&c, format!("ingress {host} 80/TCP Allow")));
    assert!(!has(&c, format!("ingress {in8} 80/TCP Allow")));
    assert!(!has(&c, format!("ingress {except} 80/TCP Allow")));
    assert!(!has(&c, format!("ingress {other} 80/TCP Allow")));
    for world in [host, in8, except, in16, other, identity::WORLD] {
        assert!(has(&c, format!("ingress {world} 443/TCP Allow")), "{world}");
    }
    assert!(has(&c, format!("egress {in16} */ANY Allow")));
    assert!(!has(&c, format!("egress {host} */ANY Allow")));
    // A selector added after the CIDR identities exist finds them too.
    c.upsert_policy(policy(
        r#"
apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: web-more}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toCIDRSet: [{cidr: 10.0.0.0/14, except: [10.2.0.0/16]}]
"#,
    ));
    c.recompile();
    assert!(has(&c, format!("egress {in8} */ANY Allow")));
    assert!(!has(&c, format!("egress {host} */ANY Allow")));
    // The incremental state equals a compilation from scratch.
    let mut scratch = Compiler::new(CompilerConfig::default());
    scratch.upsert_identity(300, labels("container:namespace=shop,container:app=web"));
    scratch.upsert_identity(301, labels("container:namespace=shop,container:app=lb"));
    for p in c.policies().values() {
        scratch.upsert_policy((**p).clone());
    }
    scratch.recompile();
    assert_eq!(scratch.compiled(), c.compiled());
    // Prefixes no policy names any more leave every selector.
    c.delete_policy(&PolicyKey {
        namespace: "shop".into(),
        name: "lb".into(),
    });
    c.recompile();
    assert!(!c.cidr_identities().values().any(|i| *i == host));
    assert!(
        !entries(&c, 300)
            .iter()
            .any(|e| e.contains(&host.to_string()))
    );
    assert!(has(
        &c,
        format!("egress {} */ANY Allow", id_of(&c, "10.0.0.0/14"))
    ));
    let world: Vec<u32> = c
        .selector_matches(&PeerSelector::Entity(Entity::World))
        .iter()
        .copied()
        .collect();
    let mut expected: Vec<u32> = c.cidr_identities().values().copied().collect();
    expected.push(identity::WORLD);
    expected.sort();
    assert_eq!(world, expected);
}

fn id_of(c: &Compiler, prefix: &str) -> u32 {
    c.cidr_identities()[&prefix.parse::<Cidr>().unwrap()]
}

/// bench-policy's setup: client → server, and `n` /32 CIDRs allowed in (server) and out
/// (client) in policies of 5 000, plus the prober.
fn with_cidrs(n: usize) -> Compiler {
    let mut c = Compiler::new(CompilerConfig::default());
    for (id, app) in [(300, "client"), (301, "server"), (302, "prober")] {
        c.upsert_identity(
            id,
            labels(&format!("container:namespace=shop,container:app={app}")),
        );
    }
    c.upsert_policy(policy(
        r#"
apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: base}
specs:
- endpointSelector: {matchLabels: {app: server}}
  ingress: [{fromEndpoints: [{matchLabels: {app: client}}]}]
- endpointSelector: {matchLabels: {app: client}}
  egress: [{toEndpoints: [{matchLabels: {app: server}}]}]
"#,
    ));
    for (k, first) in (0..n).step_by(5000).enumerate() {
        let cidrs: Vec<String> = (first..n.min(first + 5000))
            .map(|i| {
                format!(
                    "\"{}/32\"",
                    std::net::Ipv4Addr::from(0x6440_0000 + i as u32)
                )
            })
            .collect();
        let cidrs = cidrs.join(",");
        c.upsert_policy(policy(&format!(
            r#"{{"apiVersion": "kino.io/v1", "kind": "KinoNetworkPolicy",
                    "metadata": {{"name": "cidrs-{k}"}}, "specs": [
                    {{"endpointSelector": {{"matchLabels": {{"app": "server"}}}},
                      "ingress": [{{"fromCIDR": [{cidrs}]}}]}},
                    {{"endpointSelector": {{"matchLabels": {{"app": "client"}}}},
                      "egress": [{{"toCIDR": [{cidrs}]}}]}}]}}"#
        )));
    }
    c.recompile();
    assert_eq!(
        c.policy(301).unwrap().entries.len(),
        n + 2,
        "N + client + host"
    );
    c
}

/// The work of one change and what it changed, checking the incremental result against
/// a compilation from scratch.
fn change(c: &mut Compiler, f: impl FnOnce(&mut Compiler)) -> (Work, Vec<IdentityChange>) {
    let before = c.work();
    f(c);
    let changes = c.recompile();
    let work = c.work().since(&before);
    for id in [300, 301, 302] {
        assert_eq!(
            c.compile_from_scratch(id).as_ref(),
            c.policy(id).map(|p| p.as_ref()),
            "identity {id}"
        );
    }
    (work, changes)
}

#[test]
fn a_change_costs_what_it_touches_not_what_is_installed() {
    const PROBE: &str = r#"
apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: probe}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: prober}}]
"#;
    const ONE_CIDR: &str = r#"
apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: one-more}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromCIDR: [198.51.100.7/32]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
"#;
    let key = |name: &str| PolicyKey {
        namespace: "shop".into(),
        name: name.into(),
    };
    // The same changes beside 10 000 entries and beside none: the work differs by at
    // most a few looked-up prefixes and selectors, never by the entries.
    let mut works = Vec::new();
    for n in [0, 10_000] {
        let mut c = with_cidrs(n);
        let mut work = Vec::new();
        let (w, changes) = change(&mut c, |c| c.upsert_policy(policy(PROBE)));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].identity, 301);
        assert_eq!(changes[0].entries.len(), 1, "the prober's entry");
        work.push(w);
        let (w, changes) = change(&mut c, |c| c.delete_policy(&key("probe")));
        assert_eq!(changes[0].entries.len(), 1);
        work.push(w);
        // A new prefix: a CIDR identity and its entry, without renumbering or revisiting
        // the other prefixes.
        let ids = c.cidr_identities().clone();
        let (w, changes) = change(&mut c, |c| c.upsert_policy(policy(ONE_CIDR)));
        assert_eq!(changes[0].entries.len(), 1, "{changes:?}");
        assert_eq!(c.cidr_identities().len(), ids.len() + 1);
        assert!(ids.iter().all(|(p, id)| c.cidr_identities()[p] == *id));
        work.push(w);
        let (w, changes) = change(&mut c, |c| c.delete_policy(&key("one-more")));
        assert_eq!(changes[0].entries.len(), 1);
        assert_eq!(c.cidr_identities(), &ids);
        work.push(w);
        // The prober's labels change: it is re-resolved whole (it has no entry), the
        // server's policy is not touched.
        let (w, changes) = change(&mut c, |c| {
            c.upsert_identity(
                302,
                labels("container:namespace=shop,container:app=prober,container:v=2"),
            )
        });
        assert_eq!(changes.len(), 0);
        work.push(w);
        works.push(work);
    }
    for (small, large) in works[0].iter().zip(&works[1]) {
        // A prefix's 33 supernets and the 5 entities are the largest part.
        assert!(large.total() <= 64, "{large:?}");
        assert!(large.total() <= small.total() + 16, "{small:?} → {large:?}");
    }
}
