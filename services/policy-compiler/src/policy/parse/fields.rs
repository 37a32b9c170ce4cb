//! The typed fields both document kinds use: label selectors, `{port, endPort, protocol}`
//! entries and CIDR blocks with exceptions, each checked with its path.

use std::collections::BTreeSet;

use kino_api::quote::quote;
use serde_json::Value;

use super::{Reader, index, join};
use crate::policy::DocumentError;
use crate::policy::model::{CidrRule, PortRule, Protocol};
use crate::policy::validate::{self, scalar_text, show};
use crate::selector::{Operator, Requirement, Selector, SelectorKey};

impl Reader {
    /// A `{port, endPort, protocol}` entry; `default_protocol` when none is given.
    pub(super) fn port(
        &mut self,
        value: &Value,
        path: &str,
        default_protocol: Protocol,
    ) -> Option<PortRule> {
        let map = self.mapping(value, path, &["port", "endPort", "protocol"])?;
        let protocol = match map.get("protocol") {
            None | Some(Value::Null) => default_protocol,
            Some(p) => match validate::protocol(p) {
                Ok(p) => p,
                Err(message) => {
                    self.error(&join(path, "protocol"), message);
                    return None;
                }
            },
        };
        let port = match map.get("port") {
            None | Some(Value::Null) => 0,
            Some(p) => match validate::port(p) {
                Ok(p) => p,
                Err(message) => {
                    self.error(&join(path, "port"), message);
                    return None;
                }
            },
        };
        let end_port = match map.get("endPort") {
            None | Some(Value::Null) => None,
            Some(p) => match validate::port(p) {
                Ok(0) => {
                    self.error(&join(path, "endPort"), "\"0\" is not a port (1-65535)");
                    return None;
                }
                Ok(p) => Some(p),
                Err(message) => {
                    self.error(&join(path, "endPort"), message);
                    return None;
                }
            },
        };
        match validate::port_rule(port, end_port, protocol) {
            Ok(rule) => Some(rule),
            Err((field, message)) => {
                self.error(&join(path, field), message);
                None
            }
        }
    }

    pub(super) fn cidr_rule(
        &mut self,
        value: &Value,
        path: &str,
        allowed: &[&str],
    ) -> Option<CidrRule> {
        let map = self.mapping(value, path, allowed)?;
        if map.contains_key("cidrGroupRef") {
            self.error(&join(path, "cidrGroupRef"), "cidrGroupRef is not supported");
        }
        let cidr = match map.get("cidr") {
            Some(c) => match validate::cidr(c) {
                Ok(c) => c,
                Err(message) => {
                    self.error(&join(path, "cidr"), message);
                    return None;
                }
            },
            None => {
                self.error(&join(path, "cidr"), "cidr is required");
                return None;
            }
        };
        let mut rule = CidrRule {
            cidr,
            except: Vec::new(),
        };
        let except_path = join(path, "except");
        for (i, item) in self.list(map, "except", path).iter().enumerate() {
            let p = index(&except_path, i);
            match validate::cidr(item).and_then(|e| validate::except_inside(&rule, &e).map(|_| e)) {
                Ok(e) => rule.except.push(e),
                Err(message) => self.error(&p, message),
            }
        }
        Some(rule)
    }

    pub(super) fn selector(&mut self, value: &Value, path: &str) -> Selector {
        let mut selector = Selector::everything();
        if value.is_null() {
            return selector;
        }
        let Some(map) = self.mapping(value, path, &["matchLabels", "matchExpressions"]) else {
            return selector;
        };
        if let Some(labels) = map.get("matchLabels").filter(|v| !v.is_null()) {
            let p = join(path, "matchLabels");
            selector.match_labels = self.string_map(labels, &p);
            for (key, value) in &selector.match_labels {
                if let Err(message) =
                    validate::selector_key(key).and_then(|()| validate::selector_value(key, value))
                {
                    self.errors.push(DocumentError {
                        document: self.document,
                        policy: self.policy.clone(),
                        path: join(&p, key),
                        message,
                        line: 0,
                    });
                }
            }
        }
        let expressions_path = join(path, "matchExpressions");
        for (i, item) in self.list(map, "matchExpressions", path).iter().enumerate() {
            let p = index(&expressions_path, i);
            let Some(expr) = self.mapping(item, &p, &["key", "operator", "values"]) else {
                continue;
            };
            let key = self.string(expr, "key", &p).unwrap_or_default();
            if let Err(message) = validate::selector_key(&key) {
                self.error(&join(&p, "key"), message);
                continue;
            }
            let operator = match self.string(expr, "operator", &p).as_deref() {
                Some("In") => Operator::In,
                Some("NotIn") => Operator::NotIn,
                Some("Exists") => Operator::Exists,
                Some("DoesNotExist") => Operator::DoesNotExist,
                other => {
                    self.error(
                        &join(&p, "operator"),
                        format!(
                            "{} is not an operator (In, NotIn, Exists, DoesNotExist)",
                            quote(other.unwrap_or(""))
                        ),
                    );
                    continue;
                }
            };
            let mut values = BTreeSet::new();
            let values_path = join(&p, "values");
            for (j, v) in self.list(expr, "values", &p).iter().enumerate() {
                match scalar_text(v) {
                    Some(text) => {
                        if let Err(message) = validate::selector_value(&key, &text) {
                            self.error(&index(&values_path, j), message);
                        }
                        values.insert(text);
                    }
                    None => self.error(
                        &index(&values_path, j),
                        format!("{} is not a string", show(v)),
                    ),
                }
            }
            match operator {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    self.error(
                        &values_path,
                        format!("{} needs at least one value", operator.as_str()),
                    );
                    continue;
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                    self.error(
                        &values_path,
                        format!("{} takes no values", operator.as_str()),
                    );
                    continue;
                }
                _ => {}
            }
            selector.match_expressions.push(Requirement {
                key: SelectorKey::parse(&key),
                operator,
                values,
            });
        }
        selector
    }
}
