//! The spec of a Kubernetes NetworkPolicy: pod selector, ingress `from` / egress `to`
//! peers (pod and namespace selectors or an ipBlock) with ports, and policyTypes (defaulted
//! as Kubernetes does).

use serde_json::Value;

use super::{Reader, index, join};
use crate::policy::model::{K8sPeer, K8sPolicy, K8sRule, Protocol};
use crate::policy::validate::show;

impl Reader {
    pub(super) fn k8s(&mut self, value: &Value) -> K8sPolicy {
        let mut policy = K8sPolicy::default();
        let Some(spec) = self.mapping(
            value,
            "spec",
            &["podSelector", "ingress", "egress", "policyTypes"],
        ) else {
            return policy;
        };
        match spec.get("podSelector") {
            Some(selector) => policy.pod_selector = self.selector(selector, "spec.podSelector"),
            None => self.error(
                "spec.podSelector",
                "podSelector is required (use {} to select every pod of the namespace)",
            ),
        }
        for (field, ingress) in [("ingress", true), ("egress", false)] {
            let list_path = join("spec", field);
            let peers_field = if ingress { "from" } else { "to" };
            let mut rules = Vec::new();
            for (i, item) in self.list(spec, field, "spec").iter().enumerate() {
                let p = index(&list_path, i);
                let Some(rule_map) = self.mapping(item, &p, &[peers_field, "ports"]) else {
                    continue;
                };
                let mut rule = K8sRule::default();
                let peers_path = join(&p, peers_field);
                for (j, peer) in self.list(rule_map, peers_field, &p).iter().enumerate() {
                    if let Some(peer) = self.k8s_peer(peer, &index(&peers_path, j)) {
                        rule.peers.push(peer);
                    }
                }
                let ports_path = join(&p, "ports");
                for (j, port) in self.list(rule_map, "ports", &p).iter().enumerate() {
                    if let Some(port) = self.port(port, &index(&ports_path, j), Protocol::Tcp) {
                        if port.protocol == Protocol::Any {
                            self.error(
                                &join(&index(&ports_path, j), "protocol"),
                                "\"ANY\" is not a NetworkPolicy protocol (TCP, UDP or SCTP)",
                            );
                            continue;
                        }
                        rule.ports.push(port);
                    }
                }
                rules.push(rule);
            }
            if ingress {
                policy.ingress = rules;
            } else {
                policy.egress = rules;
            }
        }
        match spec.get("policyTypes") {
            None | Some(Value::Null) => {
                policy.ingress_type = true;
                policy.egress_type = spec.get("egress").is_some_and(|e| !e.is_null());
            }
            Some(_) => {
                let types = self.list(spec, "policyTypes", "spec");
                for (i, t) in types.iter().enumerate() {
                    match t.as_str() {
                        Some("Ingress") => policy.ingress_type = true,
                        Some("Egress") => policy.egress_type = true,
                        _ => self.error(
                            &index("spec.policyTypes", i),
                            format!("{} is not a policy type (Ingress or Egress)", show(t)),
                        ),
                    }
                }
            }
        }
        policy
    }

    fn k8s_peer(&mut self, value: &Value, path: &str) -> Option<K8sPeer> {
        let map = self.mapping(
            value,
            path,
            &["podSelector", "namespaceSelector", "ipBlock"],
        )?;
        let pod = map
            .get("podSelector")
            .filter(|v| !v.is_null())
            .map(|v| self.selector(v, &join(path, "podSelector")));
        let namespace = map
            .get("namespaceSelector")
            .filter(|v| !v.is_null())
            .map(|v| self.selector(v, &join(path, "namespaceSelector")));
        let ip_block = map.get("ipBlock").filter(|v| !v.is_null());
        match (ip_block, pod.is_some() || namespace.is_some()) {
            (Some(_), true) => {
                self.error(
                    &join(path, "ipBlock"),
                    "ipBlock cannot be combined with podSelector or namespaceSelector; use separate peers",
                );
                None
            }
            (Some(block), false) => self
                .cidr_rule(block, &join(path, "ipBlock"), &["cidr", "except"])
                .map(K8sPeer::IpBlock),
            (None, true) => Some(K8sPeer::Selectors { pod, namespace }),
            (None, false) => {
                self.error(
                    path,
                    "a peer needs podSelector, namespaceSelector or ipBlock",
                );
                None
            }
        }
    }
}
