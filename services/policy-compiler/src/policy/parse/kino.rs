//! The spec of a KinoNetworkPolicy / KinoClusterwideNetworkPolicy (and Cilium's spellings):
//! `spec` or `specs` rules, each an endpoint selector with ingress / egress allow and deny
//! peer rules. Cilium features kino does not enforce (L7, FQDNs, node selectors, …) are
//! errors, never silently ignored.

use serde_json::{Map, Value};

use super::{Reader, index, join};
use crate::policy::model::{DefaultDeny, KinoPolicy, KinoRule, PeerRule, Protocol};
use crate::policy::validate::{self, show};
use crate::selector::Selector;

impl Reader {
    pub(super) fn kino(&mut self, root: &Map<String, Value>) -> KinoPolicy {
        let mut rules = Vec::new();
        if let Some(spec) = root.get("spec").filter(|v| !v.is_null())
            && let Some(rule) = self.kino_rule(spec, "spec")
        {
            rules.push(rule);
        }
        for (i, spec) in self.list(root, "specs", "").iter().enumerate() {
            if let Some(rule) = self.kino_rule(spec, &index("specs", i)) {
                rules.push(rule);
            }
        }
        if rules.is_empty() && self.errors.is_empty() {
            self.error("spec", "spec (or specs) is required");
        }
        KinoPolicy { rules }
    }

    fn kino_rule(&mut self, value: &Value, path: &str) -> Option<KinoRule> {
        let map = self.mapping(
            value,
            path,
            &[
                "endpointSelector",
                "nodeSelector",
                "ingress",
                "ingressDeny",
                "egress",
                "egressDeny",
                "description",
                "labels",
                "enableDefaultDeny",
            ],
        )?;
        if map.contains_key("nodeSelector") {
            self.error(
                &join(path, "nodeSelector"),
                "host policies (nodeSelector) are not supported; use endpointSelector",
            );
        }
        let endpoint_selector = match map.get("endpointSelector") {
            Some(selector) => self.selector(selector, &join(path, "endpointSelector")),
            None => {
                self.error(
                    &join(path, "endpointSelector"),
                    "endpointSelector is required (use {} to select every endpoint)",
                );
                Selector::everything()
            }
        };
        let description = self.string(map, "description", path).unwrap_or_default();
        let mut default_deny = DefaultDeny::default();
        if let Some(value) = map.get("enableDefaultDeny").filter(|v| !v.is_null()) {
            let p = join(path, "enableDefaultDeny");
            if let Some(dd) = self.mapping(value, &p, &["ingress", "egress"]) {
                for (field, slot) in [
                    ("ingress", &mut default_deny.ingress),
                    ("egress", &mut default_deny.egress),
                ] {
                    match dd.get(field) {
                        None | Some(Value::Null) => {}
                        Some(Value::Bool(b)) => *slot = Some(*b),
                        Some(other) => {
                            let msg = format!("{} is not true or false", show(other));
                            self.error(&join(&p, field), msg);
                        }
                    }
                }
            }
        }
        let mut rule = KinoRule {
            path: path.to_owned(),
            endpoint_selector,
            description,
            default_deny,
            ..KinoRule::default()
        };
        rule.ingress = self.peer_rules(map, "ingress", path, true);
        rule.ingress_deny = self.peer_rules(map, "ingressDeny", path, true);
        rule.egress = self.peer_rules(map, "egress", path, false);
        rule.egress_deny = self.peer_rules(map, "egressDeny", path, false);
        Some(rule)
    }

    fn peer_rules(
        &mut self,
        map: &Map<String, Value>,
        field: &str,
        path: &str,
        ingress: bool,
    ) -> Vec<PeerRule> {
        let list_path = join(path, field);
        let items = self.list(map, field, path);
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.peer_rule(item, &index(&list_path, i), ingress))
            .collect()
    }

    fn peer_rule(&mut self, value: &Value, path: &str, ingress: bool) -> Option<PeerRule> {
        let (endpoints, cidr, cidr_set, entities) = if ingress {
            ("fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities")
        } else {
            ("toEndpoints", "toCIDR", "toCIDRSet", "toEntities")
        };
        let unsupported: &[&str] = if ingress {
            &[
                "fromRequires",
                "fromGroups",
                "fromNodes",
                "icmps",
                "authentication",
            ]
        } else {
            &[
                "toRequires",
                "toGroups",
                "toNodes",
                "toServices",
                "toFQDNs",
                "icmps",
                "authentication",
            ]
        };
        let mut allowed = vec![endpoints, cidr, cidr_set, entities, "toPorts"];
        allowed.extend_from_slice(unsupported);
        let map = self.mapping(value, path, &allowed)?;
        for field in unsupported {
            if map.contains_key(*field) {
                self.error(&join(path, field), format!("{field} is not supported"));
            }
        }
        let mut rule = PeerRule::default();
        for (i, item) in self.list(map, endpoints, path).iter().enumerate() {
            let p = index(&join(path, endpoints), i);
            rule.endpoints.push(self.selector(item, &p));
        }
        for (i, item) in self.list(map, cidr, path).iter().enumerate() {
            match validate::cidr(item) {
                Ok(c) => rule.cidrs.push(c),
                Err(message) => self.error(&index(&join(path, cidr), i), message),
            }
        }
        for (i, item) in self.list(map, cidr_set, path).iter().enumerate() {
            let p = index(&join(path, cidr_set), i);
            if let Some(set) = self.cidr_rule(item, &p, &["cidr", "except", "cidrGroupRef"]) {
                rule.cidr_sets.push(set);
            }
        }
        for (i, item) in self.list(map, entities, path).iter().enumerate() {
            match validate::entity(item) {
                Ok(e) => {
                    if !rule.entities.contains(&e) {
                        rule.entities.push(e);
                    }
                }
                Err(message) => self.error(&index(&join(path, entities), i), message),
            }
        }
        for (i, item) in self.list(map, "toPorts", path).iter().enumerate() {
            let p = index(&join(path, "toPorts"), i);
            let Some(port_rule) = self.mapping(
                item,
                &p,
                &[
                    "ports",
                    "rules",
                    "listener",
                    "originatingTLS",
                    "terminatingTLS",
                    "serverNames",
                ],
            ) else {
                continue;
            };
            for field in [
                "rules",
                "listener",
                "originatingTLS",
                "terminatingTLS",
                "serverNames",
            ] {
                if port_rule.contains_key(field) {
                    self.error(
                        &join(&p, field),
                        format!("{field} (L7 policy) is not supported"),
                    );
                }
            }
            let ports_path = join(&p, "ports");
            for (j, port) in self.list(port_rule, "ports", &p).iter().enumerate() {
                if let Some(port) = self.port(port, &index(&ports_path, j), Protocol::Any) {
                    rule.ports.push(port);
                }
            }
        }
        Some(rule)
    }
}
