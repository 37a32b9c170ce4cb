//! Field-level checks of policy documents. Each returns the value or a message saying what
//! is wrong and what is expected; the parser prefixes the field's path.

use kino_api::limits;
use kino_api::quote::quote;
use serde_json::Value;

use crate::cidr::Cidr;
use crate::policy::model::{CidrRule, Entity, PortRule, Protocol};

/// The longest name (datastore names: 1–253 characters of `[A-Za-z0-9._:-]`).
pub const MAX_NAME_LEN: usize = 253;

/// Checks a policy name or namespace against the datastore's name rules.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} is required"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{}: a {what} has at most {MAX_NAME_LEN} characters",
            quote(name)
        ));
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    if !name.chars().all(ok_char) {
        return Err(format!(
            "{}: a {what} has only letters, digits and . _ : -",
            quote(name)
        ));
    }
    let first = name.chars().next().unwrap_or('-');
    let last = name.chars().last().unwrap_or('-');
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return Err(format!(
            "{}: a {what} starts and ends with a letter or digit",
            quote(name)
        ));
    }
    Ok(())
}

/// A scalar as text (strings as they are, numbers and booleans printed), for error messages
/// and for fields that accept either.
pub fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A short rendering of any value for messages.
pub fn show(value: &Value) -> String {
    match value {
        Value::String(s) => quote(s).to_string(),
        Value::Null => "null".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
        other => quote(&other.to_string()).to_string(),
    }
}

/// A port: a number or numeric string, 0 (every port) or 1–65535. Named ports are refused.
pub fn port(value: &Value) -> Result<u16, String> {
    let text =
        scalar_text(value).ok_or_else(|| format!("{} is not a port (1-65535)", show(value)))?;
    match text.trim().parse::<i64>() {
        Ok(n) if (0..=65535).contains(&n) => Ok(n as u16),
        Ok(_) => Err(format!("{} is not a port (1-65535)", quote(&text))),
        Err(_) if !text.is_empty() && text.chars().any(|c| c.is_ascii_alphabetic()) => {
            Err(format!(
                "{}: named ports are not supported; give the port number",
                quote(&text)
            ))
        }
        Err(_) => Err(format!("{} is not a port (1-65535)", quote(&text))),
    }
}

/// A protocol name: TCP, UDP, SCTP, ICMP, ICMPv6 or ANY (any case).
pub fn protocol(value: &Value) -> Result<Protocol, String> {
    let text = scalar_text(value).unwrap_or_default();
    Ok(match text.to_ascii_uppercase().as_str() {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        "ICMP" => Protocol::Icmp,
        "ICMPV6" => Protocol::Icmpv6,
        "ANY" => Protocol::Any,
        _ => {
            return Err(format!(
                "{} is not a protocol (TCP, UDP, SCTP, ICMP, ICMPv6 or ANY)",
                show(value)
            ));
        }
    })
}

/// Checks a port rule's combination of port, end port and protocol.
pub fn port_rule(
    port: u16,
    end_port: Option<u16>,
    protocol: Protocol,
) -> Result<PortRule, (&'static str, String)> {
    if !protocol.has_ports() && (port != 0 || end_port.is_some()) {
        return Err((
            "port",
            format!(
                "{} has no ports; leave port and endPort out",
                protocol.as_str()
            ),
        ));
    }
    let end_port = match end_port {
        None => 0,
        Some(_) if port == 0 => {
            return Err((
                "endPort",
                "endPort needs port (the first port of the range)".into(),
            ));
        }
        Some(e) if e < port => {
            return Err((
                "endPort",
                format!("{e} is below port {port}; a range is port..endPort"),
            ));
        }
        Some(e) if e == port => 0,
        Some(e) => e,
    };
    Ok(PortRule {
        port,
        end_port,
        protocol,
    })
}

/// A CIDR (or a bare address, as a /32 or /128).
pub fn cidr(value: &Value) -> Result<Cidr, String> {
    match value {
        Value::String(s) => s.parse(),
        other => Err(format!("{} is not a CIDR (ADDRESS/LENGTH)", show(other))),
    }
}

/// Checks an exception lies inside its CIDR.
pub fn except_inside(rule: &CidrRule, except: &Cidr) -> Result<(), String> {
    if !rule.cidr.covers(except) {
        return Err(format!("{except} is not inside {}", rule.cidr));
    }
    Ok(())
}

/// An entity name.
pub fn entity(value: &Value) -> Result<Entity, String> {
    let text = scalar_text(value).unwrap_or_default();
    Ok(match text.as_str() {
        "host" => Entity::Host,
        "remote-node" => Entity::RemoteNode,
        "world" => Entity::World,
        "cluster" => Entity::Cluster,
        "all" => Entity::All,
        "init" | "health" | "unmanaged" | "kube-apiserver" | "ingress" | "world-ipv4"
        | "world-ipv6" | "none" => {
            return Err(format!(
                "entity {} is not supported; use host, remote-node, world, cluster or all",
                quote(&text)
            ));
        }
        _ => {
            return Err(format!(
                "{} is not an entity (host, remote-node, world, cluster, all)",
                show(value)
            ));
        }
    })
}

/// Checks a selector key (`key`, `source:key`).
pub fn selector_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.ends_with(':') {
        return Err(format!("{}: a label key is required", quote(key)));
    }
    if key.contains('=') || key.chars().any(char::is_whitespace) {
        return Err(format!(
            "{} is not a label key (no '=' or spaces)",
            quote(key)
        ));
    }
    let (_, name) = selector_source(key);
    limits::check_label_key("", name).map_err(|e| e.problem)
}

/// A selector's key split into its source (`k8s:`, `any:`, none) and the label key.
fn selector_source(key: &str) -> (Option<&str>, &str) {
    match key.split_once(':') {
        Some((source, name)) => (Some(source), name),
        None => (None, key),
    }
}

/// A value a selector compares a label with: a label value's limit (63 characters), or a
/// pod name's (253) for the agent's `pod` label.
pub fn selector_value(key: &str, value: &str) -> Result<(), String> {
    let (source, name) = selector_source(key);
    let source = match source {
        None | Some(crate::labels::SOURCE_ANY) => limits::POD_LABEL_SOURCE,
        Some(source) => source,
    };
    limits::check_label("", source, name, value).map_err(|e| e.problem)
}

/// A namespace within Kubernetes' limit (63 characters).
pub fn namespace_limit(namespace: &str) -> Result<(), String> {
    limits::check_namespace("", namespace).map_err(|e| e.problem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ports() {
        assert_eq!(port(&json!(80)), Ok(80));
        assert_eq!(port(&json!("443")), Ok(443));
        assert_eq!(port(&json!("0")), Ok(0));
        assert_eq!(
            port(&json!("99999")),
            Err("\"99999\" is not a port (1-65535)".into())
        );
        assert!(port(&json!("http")).unwrap_err().contains("named ports"));
        assert!(port_rule(80, Some(70), Protocol::Tcp).is_err());
        assert_eq!(port_rule(80, Some(80), Protocol::Tcp).unwrap().end_port, 0);
        assert!(port_rule(8, None, Protocol::Icmp).is_err());
        assert!(port_rule(0, Some(5), Protocol::Tcp).is_err());
    }

    #[test]
    fn names() {
        assert!(check_name("name", "allow-web.v1").is_ok());
        assert!(check_name("name", "-x").is_err());
        assert!(check_name("name", "a/b").is_err());
        assert!(check_name("name", "").is_err());
    }
}
