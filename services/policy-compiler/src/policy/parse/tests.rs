//! Unit tests of the policy document reader (`parse.rs` and its submodules): what each
//! kind of document parses to, and errors that name their path.

use super::*;
use crate::policy::model::{Entity, Protocol, SourceFormat};

fn errors(text: &str) -> Vec<String> {
    parse_documents(text, "")
        .errors
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn kino_policy_in_yaml() {
    let text = r#"
apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata:
  name: web
  namespace: shop
spec:
  description: web from lb
  endpointSelector:
    matchLabels: {app: web}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: lb}
      matchExpressions:
      - {key: env, operator: In, values: [prod]}
    fromCIDRSet:
    - cidr: 10.0.0.0/8
      except: [10.1.0.0/16]
    toPorts:
    - ports:
      - {port: "80", protocol: TCP}
      - {port: 8000, endPort: 8080}
  egressDeny:
  - toEntities: [world]
"#;
    let out = parse_documents(text, "");
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let policy = &out.policies[0];
    assert_eq!(policy.key.to_string(), "shop/web");
    let PolicySpec::Kino(k) = &policy.spec else {
        panic!()
    };
    let rule = &k.rules[0];
    assert_eq!(rule.path, "spec");
    assert_eq!(rule.ingress[0].ports.len(), 2);
    assert_eq!(rule.ingress[0].ports[1].end_port, 8080);
    assert_eq!(rule.ingress[0].ports[1].protocol, Protocol::Any);
    assert_eq!(rule.ingress[0].cidr_sets[0].except.len(), 1);
    assert_eq!(rule.egress_deny[0].entities, vec![Entity::World]);
    assert_eq!(rule.description, "web from lb");
}

#[test]
fn errors_name_the_path() {
    let text = r#"
apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports:
      - {port: "80"}
      - {port: "99999"}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np}
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}
    ports:
    - {port: http}
  egres: []
"#;
    let errs = errors(text);
    assert_eq!(
        errs,
        vec![
            "document 0, spec.ingress[0].toPorts[0].ports[1].port: \"99999\" is not a port (1-65535)",
            "document 1, spec.egres: unknown field; expected one of podSelector, ingress, egress, policyTypes",
            "document 1, spec.ingress[0].from[0].ipBlock.except[0]: 192.168.0.0/16 is not inside 10.0.0.0/8",
            "document 1, spec.ingress[0].ports[0].port: \"http\": named ports are not supported; give the port number",
        ]
    );
}

#[test]
fn k8s_defaults_and_json_lists() {
    let text = r#"[{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
            "metadata":{"name":"a"},"spec":{"podSelector":{},"egress":[{"ports":[{"port":53,"protocol":"UDP"}]}]}},
            {"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
            "metadata":{"name":"b","namespace":"x"},"spec":{"podSelector":{},"ingress":[{}]}}]"#;
    let out = parse_documents(text, "team");
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(out.policies.len(), 2);
    assert_eq!(out.policies[0].key.namespace, "team");
    let PolicySpec::K8s(a) = &out.policies[0].spec else {
        panic!()
    };
    assert!(a.ingress_type && a.egress_type);
    assert_eq!(a.egress[0].ports[0].protocol, Protocol::Udp);
    let PolicySpec::K8s(b) = &out.policies[1].spec else {
        panic!()
    };
    assert!(b.ingress_type && !b.egress_type);
    assert_eq!(out.policies[0].format, SourceFormat::Json);
}

#[test]
fn yaml_syntax_errors_and_bad_kinds() {
    let errs = errors("apiVersion: v1\nkind: [\n");
    assert!(errs[0].contains("not valid YAML"), "{errs:?}");
    let errs = errors("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n");
    assert!(
        errs[0].starts_with("document 0, kind: v1/Pod is not a policy kind"),
        "{errs:?}"
    );
    assert_eq!(
        errors(""),
        vec!["document 0: no policy document in the text"]
    );
}
