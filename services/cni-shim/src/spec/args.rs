//! Per-attachment parameters: `CNI_ARGS` (`KEY=VALUE;…`), labels from the configuration's
//! `args` / `runtimeConfig`, requested addresses and MAC, and GC's valid attachments.
//!
//! Where the same thing can come from several places, the precedence is fixed and documented:
//! - addresses: `runtimeConfig.ips` (the `ips` capability), else `args.cni.ips`, else
//!   `IP=` in `CNI_ARGS` (the first place that names any address wins entirely);
//! - MAC: `runtimeConfig.mac` (the `mac` capability), else `args.cni.mac`, else `MAC=`;
//! - labels: `args.labels`, then `args.cni.labels`, then `runtimeConfig.labels`, merged; a
//!   later place overrides an earlier one for the same source and key.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use kino_api::limits;
use kino_api::quote::quote;
use serde_json::{Map, Value};

use crate::errors::{CniError, ErrorCode};

/// `CNI_ARGS` keys kino-cni understands; any other key needs `IgnoreUnknown=1`.
pub const KNOWN_ARGS: [&str; 7] = [
    "IgnoreUnknown",
    "K8S_POD_NAME",
    "K8S_POD_NAMESPACE",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
    "IP",
    "MAC",
];

/// The pod namespace used when the runtime names a pod but no namespace (podman does).
pub const DEFAULT_POD_NAMESPACE: &str = "default";

/// `CNI_ARGS`, parsed and checked (code 4 on any problem, naming `CNI_ARGS`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// Every pair as given, for the agent's record (later duplicates win).
    pub pairs: BTreeMap<String, String>,
    /// `K8S_POD_NAME`.
    pub pod_name: Option<String>,
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: Option<String>,
    /// `IP=`: requested addresses (comma-separated, prefix lengths ignored).
    pub ips: Vec<IpAddr>,
    /// `MAC=`: requested MAC of the pod-side interface, lower-case.
    pub mac: Option<String>,
}

impl CniArgs {
    /// Parses `CNI_ARGS` as libcni writes it: `KEY=VALUE` pairs separated by `;`. Unknown
    /// keys are an error unless `IgnoreUnknown` is `1`/`true`.
    pub fn parse(text: Option<&str>) -> Result<CniArgs, CniError> {
        let mut args = CniArgs::default();
        let Some(text) = text else {
            return Ok(args);
        };
        let mut problems = Vec::new();
        for pair in text.split(';').filter(|pair| !pair.is_empty()) {
            match pair.split_once('=') {
                Some((key, value)) if !key.is_empty() && !value.contains('=') => {
                    args.pairs.insert(key.to_owned(), value.to_owned());
                }
                _ => problems.push(format!("{} is not KEY=VALUE", quote(pair))),
            }
        }
        let ignore_unknown = match args.pairs.get("IgnoreUnknown").map(String::as_str) {
            None => false,
            Some(value) => match value.to_ascii_lowercase().as_str() {
                "1" | "true" => true,
                "0" | "false" => false,
                _ => {
                    problems.push(format!(
                        "IgnoreUnknown={} must be 1, 0, true or false",
                        quote(value)
                    ));
                    false
                }
            },
        };
        if !ignore_unknown {
            let unknown: Vec<&str> = args
                .pairs
                .keys()
                .map(String::as_str)
                .filter(|key| !KNOWN_ARGS.contains(key))
                .collect();
            if !unknown.is_empty() {
                problems.push(format!(
                    "unknown keys {} (add IgnoreUnknown=1 to pass keys kino-cni does not use)",
                    quote(&unknown.join(", "))
                ));
            }
        }
        let non_empty = |key: &str| args.pairs.get(key).filter(|v| !v.is_empty()).cloned();
        args.pod_name = non_empty("K8S_POD_NAME");
        args.pod_namespace = non_empty("K8S_POD_NAMESPACE");
        if let Some(name) = &args.pod_name
            && let Err(e) = limits::check_pod_name("K8S_POD_NAME", name)
        {
            problems.push(e.to_string());
        }
        if let Some(namespace) = &args.pod_namespace
            && let Err(e) = limits::check_namespace("K8S_POD_NAMESPACE", namespace)
        {
            problems.push(e.to_string());
        }
        if let Some(ips) = non_empty("IP") {
            match parse_ip_list(ips.split(',')) {
                Ok(list) => args.ips = list,
                Err(reason) => problems.push(format!("IP={}: {reason}", quote(&ips))),
            }
        }
        if let Some(mac) = non_empty("MAC") {
            match normalize_mac(&mac) {
                Ok(mac) => args.mac = Some(mac),
                Err(reason) => problems.push(format!("MAC={}: {reason}", quote(&mac))),
            }
        }
        if problems.is_empty() {
            return Ok(args);
        }
        Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("invalid CNI_ARGS: {}", problems.join("; ")),
            format!(
                "CNI_ARGS={}; kino-cni reads {} from it",
                quote(text),
                KNOWN_ARGS.join(", ")
            ),
        ))
    }
}

/// Addresses, each `ADDR` or `ADDR/PREFIX` (the prefix is dropped: the pod gets a /32 or /128).
fn parse_ip_list<'a>(items: impl Iterator<Item = &'a str>) -> Result<Vec<IpAddr>, String> {
    let mut ips = Vec::new();
    for item in items.map(str::trim).filter(|item| !item.is_empty()) {
        let address = item.split_once('/').map_or(item, |(address, _)| address);
        let ip: IpAddr = address
            .parse()
            .map_err(|_| format!("{item:?} is not an IP address"))?;
        ips.push(ip);
    }
    Ok(ips)
}

/// `aa:bb:cc:dd:ee:ff` (any case) as lower case; anything else is an error.
pub fn normalize_mac(text: &str) -> Result<String, String> {
    let octets: Vec<&str> = text.split(':').collect();
    let valid = octets.len() == 6
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()));
    if !valid {
        return Err("not a MAC address (write six hex octets, e.g. 0a:58:0a:00:01:17)".into());
    }
    let first = u8::from_str_radix(octets[0], 16).map_err(|e| e.to_string())?;
    if first & 1 == 1 {
        return Err("is a multicast MAC address; an interface needs a unicast one".into());
    }
    Ok(text.to_ascii_lowercase())
}

/// One security label as given by the runtime or the configuration.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Label {
    /// Where it comes from (`container` unless the key says `k8s:` or `unspec:`).
    pub source: String,
    /// The key.
    pub key: String,
    /// The value (may be empty).
    pub value: String,
}

/// Label sources a configuration may name in a key prefix (`k8s:app`). `reserved` and
/// `cidr` are refused: those identities belong to the agent, not to a pod.
const CONFIGURABLE_SOURCES: [&str; 3] = ["container", "k8s", "unspec"];
const AGENT_ONLY_SOURCES: [&str; 2] = ["reserved", "cidr"];

/// The requested attachment, from `CNI_ARGS` and the configuration (ADD).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddParams {
    /// Pod namespace and name; `None` when the runtime gave no pod name.
    pub pod: Option<(String, String)>,
    /// Labels, sorted by source then key.
    pub labels: Vec<Label>,
    /// Requested IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// Requested IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// Requested MAC of the pod-side interface.
    pub mac: Option<String>,
    /// `CNI_ARGS` pairs, for the record.
    pub cni_args: BTreeMap<String, String>,
}

impl AddParams {
    /// Combines `CNI_ARGS` with the configuration `config` (code 7 naming the key when the
    /// configuration's part is malformed).
    pub fn new(args: &CniArgs, config: &Map<String, Value>) -> Result<AddParams, CniError> {
        let runtime_config = object_at(config, &["runtimeConfig"])?;
        let args_cni = object_at(config, &["args", "cni"])?;

        let pod = args.pod_name.clone().map(|name| {
            let namespace = args
                .pod_namespace
                .clone()
                .unwrap_or_else(|| DEFAULT_POD_NAMESPACE.to_owned());
            (namespace, name)
        });

        let mut labels: BTreeMap<(String, String), String> = BTreeMap::new();
        for path in [
            &["args", "labels"][..],
            &["args", "cni", "labels"],
            &["runtimeConfig", "labels"],
        ] {
            if let Some(value) = value_at(config, path) {
                for label in parse_labels(value, &path.join("."))? {
                    labels.insert((label.source, label.key), label.value);
                }
            }
        }
        limits::check_label_count("labels", labels.len())
            .map_err(|e| invalid(format!("the configuration's labels: {e}")))?;
        let labels = labels
            .into_iter()
            .map(|((source, key), value)| Label { source, key, value })
            .collect();

        let ips = match (
            runtime_config.and_then(|c| c.get("ips")),
            args_cni.and_then(|c| c.get("ips")),
        ) {
            (Some(ips), _) => config_ips(ips, "runtimeConfig.ips")?,
            (None, Some(ips)) => config_ips(ips, "args.cni.ips")?,
            (None, None) => args.ips.clone(),
        };
        let (ipv4, ipv6) = one_per_family(&ips)?;

        let mac = match (
            runtime_config.and_then(|c| c.get("mac")),
            args_cni.and_then(|c| c.get("mac")),
        ) {
            (Some(mac), _) => Some(config_mac(mac, "runtimeConfig.mac")?),
            (None, Some(mac)) => Some(config_mac(mac, "args.cni.mac")?),
            (None, None) => args.mac.clone(),
        };

        Ok(AddParams {
            pod,
            labels,
            ipv4,
            ipv6,
            mac,
            cni_args: args.pairs.clone(),
        })
    }
}

fn invalid(details: String) -> CniError {
    CniError::new(
        ErrorCode::InvalidNetworkConfig,
        "invalid network configuration",
        details,
    )
}

fn value_at<'a>(config: &'a Map<String, Value>, path: &[&str]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter().try_fold(config.get(*first)?, |value, key| {
        value.as_object()?.get(*key)
    })
}

/// The object at `path`, `None` when absent, code 7 when something else is there.
fn object_at<'a>(
    config: &'a Map<String, Value>,
    path: &[&str],
) -> Result<Option<&'a Map<String, Value>>, CniError> {
    match value_at(config, path) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(invalid(format!(
            "\"{}\" must be an object, got {other}",
            path.join(".")
        ))),
    }
}

/// Labels as `{"key": "value"}` or `[{"key": "k", "value": "v"}]` (the CNI conventions'
/// `args.cni.labels` form). A key may carry its source: `k8s:app`.
fn parse_labels(value: &Value, place: &str) -> Result<Vec<Label>, CniError> {
    let text = |value: &Value, what: &str| -> Result<String, CniError> {
        match value {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => Err(invalid(format!(
                "\"{place}\": {what} must be a string, got {}",
                quote(&other.to_string())
            ))),
        }
    };
    let pairs: Vec<(String, String)> = match value {
        Value::Null => Vec::new(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| Ok((k.clone(), text(v, &format!("the value of {}", quote(k)))?)))
            .collect::<Result<_, CniError>>()?,
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let key = item.get("key").ok_or_else(|| {
                    invalid(format!(
                        "\"{place}\": every entry needs \"key\" and \"value\", got {}",
                        quote(&item.to_string())
                    ))
                })?;
                let value = item.get("value").unwrap_or(&Value::Null);
                let value = if value.is_null() {
                    String::new()
                } else {
                    text(value, "\"value\"")?
                };
                Ok((text(key, "\"key\"")?, value))
            })
            .collect::<Result<_, CniError>>()?,
        other => {
            return Err(invalid(format!(
                "\"{place}\" must be an object of key/value strings or a list of {{\"key\", \"value\"}}, got {}",
                quote(&other.to_string())
            )));
        }
    };
    pairs
        .into_iter()
        .map(|(key, value)| {
            let label = split_source(&key);
            if label.key.is_empty() || label.key.contains('=') {
                return Err(invalid(format!(
                    "\"{place}\": label key {} must be non-empty and contain no '='",
                    quote(&key)
                )));
            }
            limits::check_label(place, &label.source, &label.key, &value)
                .map_err(|e| invalid(format!("\"{place}\": {}", e.problem)))?;
            if AGENT_ONLY_SOURCES.contains(&label.source.as_str()) {
                return Err(invalid(format!(
                    "\"{place}\": label {key:?} uses source {:?}, which only the agent assigns; use {}",
                    label.source,
                    CONFIGURABLE_SOURCES.join(", ")
                )));
            }
            Ok(Label { value, ..label })
        })
        .collect()
}

/// `k8s:app` → source `k8s`, key `app`; a key without a known source prefix is `container`.
fn split_source(key: &str) -> Label {
    if let Some((source, rest)) = key.split_once(':')
        && (CONFIGURABLE_SOURCES.contains(&source) || AGENT_ONLY_SOURCES.contains(&source))
    {
        return Label {
            source: source.to_owned(),
            key: rest.to_owned(),
            value: String::new(),
        };
    }
    Label {
        source: "container".to_owned(),
        key: key.to_owned(),
        value: String::new(),
    }
}

fn config_ips(value: &Value, place: &str) -> Result<Vec<IpAddr>, CniError> {
    let items = value.as_array().ok_or_else(|| {
        invalid(format!(
            "\"{place}\" must be a list of addresses, got {value}"
        ))
    })?;
    let texts = items
        .iter()
        .map(|item| {
            item.as_str()
                .ok_or_else(|| invalid(format!("\"{place}\": {item} is not an address string")))
        })
        .collect::<Result<Vec<&str>, CniError>>()?;
    parse_ip_list(texts.into_iter()).map_err(|reason| invalid(format!("\"{place}\": {reason}")))
}

fn config_mac(value: &Value, place: &str) -> Result<String, CniError> {
    let text = value
        .as_str()
        .ok_or_else(|| invalid(format!("\"{place}\" must be a string, got {value}")))?;
    normalize_mac(text).map_err(|reason| invalid(format!("\"{place}\" {text:?}: {reason}")))
}

/// At most one address per family: the pod gets one IPv4 and/or one IPv6 address.
fn one_per_family(ips: &[IpAddr]) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), CniError> {
    let v4: Vec<Ipv4Addr> = ips
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
        .collect();
    let v6: Vec<Ipv6Addr> = ips
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        })
        .collect();
    if v4.len() > 1 || v6.len() > 1 {
        return Err(invalid(format!(
            "requested addresses {ips:?}: a pod gets at most one IPv4 and one IPv6 address"
        )));
    }
    Ok((v4.first().copied(), v6.first().copied()))
}

/// One attachment the runtime still uses (GC).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attachment {
    /// `containerID`.
    pub container_id: String,
    /// `ifname`.
    pub ifname: String,
}

/// GC's `cni.dev/valid-attachments` (libcni also writes the same list as
/// `cni.dev/attachments`, the name an earlier draft of the spec used; either is read). Missing
/// is code 7: treating it as empty would delete every endpoint.
pub fn valid_attachments(config: &Map<String, Value>) -> Result<Vec<Attachment>, CniError> {
    let (key, value) = ["cni.dev/valid-attachments", "cni.dev/attachments"]
        .into_iter()
        .find_map(|key| config.get(key).map(|value| (key, value)))
        .ok_or_else(|| {
            invalid(
                "GC needs \"cni.dev/valid-attachments\" (the attachments still in use); without it every endpoint would look stale, so nothing was collected".into(),
            )
        })?;
    let items = value
        .as_array()
        .ok_or_else(|| invalid(format!("\"{key}\" must be a list, got {value}")))?;
    items
        .iter()
        .map(|item| {
            let field = |name: &str| {
                item.get(name)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        invalid(format!(
                            "\"{key}\": every entry needs string \"containerID\" and \"ifname\", got {item}"
                        ))
                    })
            };
            Ok(Attachment {
                container_id: field("containerID")?,
                ifname: field("ifname")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn podman_cni_args_parse() {
        let args = CniArgs::parse(Some(
            "IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.0.1.9;MAC=0A:58:0A:00:01:09",
        ))
        .expect("podman's CNI_ARGS");
        assert_eq!(args.pod_name.as_deref(), Some("web"));
        assert_eq!(args.pod_namespace, None);
        assert_eq!(args.ips, vec!["10.0.1.9".parse::<IpAddr>().unwrap()]);
        assert_eq!(args.mac.as_deref(), Some("0a:58:0a:00:01:09"));
        assert_eq!(args.pairs.len(), 4);
        assert_eq!(CniArgs::parse(None).expect("none"), CniArgs::default());
        assert_eq!(CniArgs::parse(Some("")).expect("empty"), CniArgs::default());
    }

    #[test]
    fn kubernetes_cni_args_parse() {
        let args = CniArgs::parse(Some(
            "IgnoreUnknown=true;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1;",
        ))
        .expect("kubelet's CNI_ARGS");
        assert_eq!(args.pod_name.as_deref(), Some("cart-0"));
        assert_eq!(args.pod_namespace.as_deref(), Some("shop"));
        let args = CniArgs::parse(Some("IP=10.0.1.9/24,fd00::9/64")).expect("two families");
        assert_eq!(args.ips.len(), 2);
    }

    #[test]
    fn unknown_keys_need_ignore_unknown() {
        let error = CniArgs::parse(Some("K8S_POD_NAME=a;FOO=bar")).expect_err("FOO unknown");
        assert_eq!(error.code, ErrorCode::InvalidEnvironment);
        assert!(error.msg.contains("CNI_ARGS"), "{error}");
        assert!(error.msg.contains("FOO"), "{error}");
        assert!(error.msg.contains("IgnoreUnknown=1"), "{error}");
        let args = CniArgs::parse(Some("IgnoreUnknown=1;FOO=bar")).expect("ignored");
        assert_eq!(args.pairs.get("FOO").map(String::as_str), Some("bar"));
        let error = CniArgs::parse(Some("IgnoreUnknown=0;FOO=bar")).expect_err("not ignored");
        assert!(error.msg.contains("FOO"), "{error}");
    }

    #[test]
    fn malformed_cni_args_are_code_4_naming_each_problem() {
        let error = CniArgs::parse(Some("IgnoreUnknown=maybe;NOEQUALS;IP=10.0.0.300;MAC=zz"))
            .expect_err("bad");
        assert_eq!(error.code, ErrorCode::InvalidEnvironment);
        for needle in ["IgnoreUnknown=\"maybe\"", "\"NOEQUALS\"", "IP=", "MAC="] {
            assert!(error.msg.contains(needle), "{needle}: {error}");
        }
        let error = CniArgs::parse(Some("A=b=c")).expect_err("two =");
        assert!(error.msg.contains("KEY=VALUE"), "{error}");
        let error = CniArgs::parse(Some("MAC=01:00:5e:00:00:01")).expect_err("multicast");
        assert!(error.msg.contains("multicast"), "{error}");
    }

    #[test]
    fn pod_defaults_to_the_default_namespace() {
        let args = CniArgs::parse(Some("K8S_POD_NAME=web")).expect("ok");
        let params = AddParams::new(&args, &Map::new()).expect("ok");
        assert_eq!(params.pod, Some(("default".into(), "web".into())));
        let params = AddParams::new(&CniArgs::default(), &Map::new()).expect("ok");
        assert_eq!(params.pod, None);
    }

    #[test]
    fn labels_merge_from_every_place_sorted() {
        let config = config(json!({
            "args": {
                "labels": {"app": "web", "tier": 1, "k8s:team": "a"},
                "cni": {"labels": [{"key": "app", "value": "shop"}, {"key": "canary"}]}
            },
            "runtimeConfig": {"labels": {"unspec:env": "prod"}}
        }));
        let params = AddParams::new(&CniArgs::default(), &config).expect("labels");
        let labels: Vec<String> = params
            .labels
            .iter()
            .map(|l| format!("{}:{}={}", l.source, l.key, l.value))
            .collect();
        assert_eq!(
            labels,
            [
                "container:app=shop",
                "container:canary=",
                "container:tier=1",
                "k8s:team=a",
                "unspec:env=prod"
            ]
        );
    }

    #[test]
    fn bad_labels_are_code_7_naming_the_place() {
        for (value, needle) in [
            (json!({"args": {"labels": "app=web"}}), "args.labels"),
            (
                json!({"args": {"labels": {"app": {"x": 1}}}}),
                "args.labels",
            ),
            (
                json!({"args": {"cni": {"labels": [{"value": "v"}]}}}),
                "args.cni.labels",
            ),
            (
                json!({"runtimeConfig": {"labels": {"reserved:host": ""}}}),
                "only the agent",
            ),
            (json!({"args": {"labels": {"": "v"}}}), "non-empty"),
            (
                json!({"runtimeConfig": []}),
                "\"runtimeConfig\" must be an object",
            ),
        ] {
            let error = AddParams::new(&CniArgs::default(), &config(value)).expect_err(needle);
            assert_eq!(error.code, ErrorCode::InvalidNetworkConfig, "{error}");
            assert!(error.details.contains(needle), "{needle}: {error}");
        }
    }

    #[test]
    fn requested_addresses_follow_the_precedence() {
        let args = CniArgs::parse(Some("IP=10.0.1.9;MAC=0a:00:00:00:00:09")).expect("ok");
        let params = AddParams::new(&args, &Map::new()).expect("CNI_ARGS");
        assert_eq!(params.ipv4, Some(Ipv4Addr::new(10, 0, 1, 9)));
        assert_eq!(params.mac.as_deref(), Some("0a:00:00:00:00:09"));

        let with_config = config(json!({
            "args": {"cni": {"ips": ["10.0.1.7/24"], "mac": "0a:00:00:00:00:07"}}
        }));
        let params = AddParams::new(&args, &with_config).expect("args.cni");
        assert_eq!(params.ipv4, Some(Ipv4Addr::new(10, 0, 1, 7)));
        assert_eq!(params.mac.as_deref(), Some("0a:00:00:00:00:07"));

        let with_runtime = config(json!({
            "args": {"cni": {"ips": ["10.0.1.7"]}},
            "runtimeConfig": {"ips": ["fd00::5/64"], "mac": "0A:00:00:00:00:05"}
        }));
        let params = AddParams::new(&args, &with_runtime).expect("runtimeConfig");
        assert_eq!(params.ipv4, None, "runtimeConfig.ips wins entirely");
        assert_eq!(params.ipv6, Some("fd00::5".parse().unwrap()));
        assert_eq!(params.mac.as_deref(), Some("0a:00:00:00:00:05"));
    }

    #[test]
    fn two_addresses_of_one_family_are_refused() {
        let args = CniArgs::parse(Some("IP=10.0.1.9,10.0.1.10")).expect("parses");
        let error = AddParams::new(&args, &Map::new()).expect_err("two IPv4");
        assert_eq!(error.code, ErrorCode::InvalidNetworkConfig);
        assert!(error.details.contains("at most one IPv4"), "{error}");
        let bad = config(json!({"runtimeConfig": {"ips": "10.0.0.1"}}));
        let error = AddParams::new(&CniArgs::default(), &bad).expect_err("not a list");
        assert!(error.details.contains("runtimeConfig.ips"), "{error}");
        let bad = config(json!({"runtimeConfig": {"mac": "nope"}}));
        let error = AddParams::new(&CniArgs::default(), &bad).expect_err("bad mac");
        assert!(error.details.contains("runtimeConfig.mac"), "{error}");
    }

    #[test]
    fn gc_attachments_are_read_from_either_key() {
        let list = json!([{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c2", "ifname": "net1"}]);
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let attachments = valid_attachments(&config(json!({ key: list.clone() }))).expect(key);
            assert_eq!(attachments.len(), 2);
            assert_eq!(attachments[1].container_id, "c2");
            assert_eq!(attachments[1].ifname, "net1");
        }
        assert!(
            valid_attachments(&config(json!({"cni.dev/valid-attachments": []})))
                .expect("empty is valid")
                .is_empty()
        );
        let error = valid_attachments(&Map::new()).expect_err("missing");
        assert_eq!(error.code, ErrorCode::InvalidNetworkConfig);
        assert!(error.details.contains("nothing was collected"), "{error}");
        let error = valid_attachments(&config(
            json!({"cni.dev/valid-attachments": [{"containerID": "c"}]}),
        ))
        .expect_err("no ifname");
        assert!(error.details.contains("ifname"), "{error}");
    }
}

#[cfg(test)]
mod limit_tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn oversized_pod_names_and_namespaces_are_code_4_naming_the_argument() {
        let long_name = format!("K8S_POD_NAME={}", "p".repeat(300));
        let long_namespace = format!("K8S_POD_NAME=web;K8S_POD_NAMESPACE={}", "n".repeat(64));
        for (args, expected) in [
            (long_name.as_str(), "K8S_POD_NAME: pod name"),
            (long_namespace.as_str(), "K8S_POD_NAMESPACE: namespace"),
        ] {
            let error = CniArgs::parse(Some(args)).expect_err(expected);
            assert_eq!(error.code, ErrorCode::InvalidEnvironment);
            assert!(error.msg.contains(expected), "{}", error.msg);
            assert!(error.msg.contains("at most"), "{}", error.msg);
        }
        let fine = format!("K8S_POD_NAME={}", "p".repeat(253));
        assert!(CniArgs::parse(Some(&fine)).is_ok());
    }

    #[test]
    fn oversized_labels_are_code_7_and_messages_stay_short() {
        let huge_key = "k".repeat(100_000);
        let config = json!({"args": {"labels": {huge_key.clone(): "v"}}});
        let error = AddParams::new(&CniArgs::default(), config.as_object().unwrap())
            .expect_err("a 100 KB key");
        assert_eq!(error.code, ErrorCode::InvalidNetworkConfig);
        assert!(error.details.contains("at most 63"), "{}", error.details);
        assert!(error.details.len() < 400, "{} bytes", error.details.len());
        let many: serde_json::Map<String, Value> =
            (0..20_000).map(|i| (format!("k{i}"), json!("v"))).collect();
        let config = json!({"args": {"labels": many}});
        let error = AddParams::new(&CniArgs::default(), config.as_object().unwrap())
            .expect_err("20 000 labels");
        assert!(error.details.contains("at most 256"), "{}", error.details);
        // A huge CNI_ARGS is not repeated whole in the error.
        let args = format!("FOO={}", "x".repeat(1 << 20));
        let error = CniArgs::parse(Some(&args)).expect_err("unknown key");
        assert!(
            error.msg.len() + error.details.len() < 1024,
            "{} bytes",
            error.msg.len() + error.details.len()
        );
    }
}
