//! Reads policy documents: YAML or JSON text with one or many documents (YAML `---`
//! separators, a JSON array, or a Kubernetes `List`), each a KinoNetworkPolicy /
//! KinoClusterwideNetworkPolicy (or Cilium's CiliumNetworkPolicy spellings) or a Kubernetes
//! NetworkPolicy. Every error is collected with the path of the bad field; unknown fields
//! are errors (a typo must not silently widen a policy).

use std::collections::{BTreeMap, BTreeSet};

use kino_api::quote::{MAX_ECHO_BYTES, quote};
use serde_json::{Map, Value};

use crate::policy::bounds;
use crate::policy::model::{
    CidrRule, DefaultDeny, K8sPeer, K8sPolicy, K8sRule, KinoPolicy, KinoRule, PeerRule, Policy,
    PolicyKey, PolicyKind, PolicySpec, PortRule, Protocol, SourceFormat,
};
use crate::policy::validate::{self, scalar_text, show};
use crate::policy::{DocumentError, ParseOutcome};
use crate::selector::{Operator, Requirement, Selector, SelectorKey};

/// Namespace of namespaced documents that name none, when the request gives none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// One document cut out of the submitted text.
struct RawDocument {
    value: Value,
    source: String,
    format: SourceFormat,
    /// 1-based line of the document's first line in the submitted text.
    first_line: u32,
}

/// The caller went away: the parse stopped before the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cancelled {
    /// Documents read (parsed or validated) before it stopped.
    pub documents_done: usize,
}

/// Parses and validates every document of `text`. Documents without a namespace get
/// `default_namespace` ("" = "default").
pub fn parse_documents(text: &str, default_namespace: &str) -> ParseOutcome {
    match parse_documents_until(text, default_namespace, &mut |_| true) {
        Ok(outcome) => outcome,
        Err(_) => unreachable!("a parse that always keeps going is never cancelled"),
    }
}

/// [`parse_documents`], asking `keep_going(documents done so far)` before each step (each
/// document's parse and its validation): once it answers false the parse stops and returns
/// [`Cancelled`]. The text's size and nesting are checked first ([`bounds`]), so no
/// single step costs more than linear time in a text of at most 1 MiB.
///
/// [`bounds`]: crate::policy::bounds
pub fn parse_documents_until(
    text: &str,
    default_namespace: &str,
    keep_going: &mut dyn FnMut(usize) -> bool,
) -> Result<ParseOutcome, Cancelled> {
    let mut outcome = ParseOutcome::default();
    if let Err(error) = bounds::check(text, looks_like_json(text)) {
        outcome.errors.push(error.into_document_error());
        return Ok(outcome);
    }
    let default_namespace = if default_namespace.is_empty() {
        DEFAULT_NAMESPACE
    } else {
        default_namespace
    };
    if let Err(message) = validate::check_name("namespace", default_namespace)
        .and_then(|()| validate::namespace_limit(default_namespace))
    {
        outcome.errors.push(DocumentError {
            document: 0,
            policy: None,
            path: String::new(),
            message: format!("default namespace: {message}"),
            line: 0,
        });
        return Ok(outcome);
    }
    let documents = match split_documents(text, keep_going)? {
        Ok(documents) => documents,
        Err(error) => {
            outcome.errors.push(error);
            return Ok(outcome);
        }
    };
    if documents.is_empty() {
        outcome.errors.push(DocumentError {
            document: 0,
            policy: None,
            path: String::new(),
            message: "no policy document in the text".into(),
            line: 0,
        });
    }
    let parsed = documents.len();
    for (index, document) in documents.into_iter().enumerate() {
        if !keep_going(parsed + index) {
            return Err(Cancelled {
                documents_done: parsed + index,
            });
        }
        let mut reader = Reader {
            document: index,
            policy: None,
            errors: Vec::new(),
            first_line: document.first_line,
        };
        let policy = reader.policy(&document, default_namespace);
        if reader.errors.is_empty() {
            if let Some(policy) = policy {
                outcome.policies.push(policy);
            }
        } else {
            outcome.errors.extend(reader.errors);
        }
    }
    Ok(outcome)
}

fn looks_like_json(text: &str) -> bool {
    matches!(text.trim_start().chars().next(), Some('{') | Some('['))
}

/// Cuts the text into documents, expanding JSON arrays and Kubernetes Lists; asks
/// `keep_going` before parsing each YAML document.
fn split_documents(
    text: &str,
    keep_going: &mut dyn FnMut(usize) -> bool,
) -> Result<Result<Vec<RawDocument>, DocumentError>, Cancelled> {
    let mut out = Vec::new();
    if looks_like_json(text) {
        if !keep_going(0) {
            return Err(Cancelled { documents_done: 0 });
        }
        let value: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(e) => {
                return Ok(Err(DocumentError {
                    document: 0,
                    policy: None,
                    path: String::new(),
                    message: format!("not valid JSON: {e}"),
                    line: e.line() as u32,
                }));
            }
        };
        match value {
            Value::Array(items) => {
                for item in items {
                    push_expanded(&mut out, item, None, SourceFormat::Json, 0);
                }
            }
            value => push_expanded(&mut out, value, Some(text), SourceFormat::Json, 1),
        }
        return Ok(Ok(out));
    }
    let mut chunk = String::new();
    let mut chunk_line = 1u32;
    let mut chunks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("---") {
            chunks.push((std::mem::take(&mut chunk), chunk_line));
            chunk_line = i as u32 + 2;
            let rest = line.trim_start_matches('-').trim();
            if !rest.is_empty() && !rest.starts_with('#') {
                chunk.push_str(rest);
                chunk.push('\n');
            }
            continue;
        }
        chunk.push_str(line);
        chunk.push('\n');
    }
    chunks.push((chunk, chunk_line));
    for (chunk, first_line) in chunks {
        let blank = chunk
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "...");
        if blank {
            continue;
        }
        if !keep_going(out.len()) {
            return Err(Cancelled {
                documents_done: out.len(),
            });
        }
        let value: Value = match serde_yaml_ng::from_str(&chunk) {
            Ok(value) => value,
            Err(e) => {
                let line = e
                    .location()
                    .map(|l| l.line() as u32 + first_line - 1)
                    .unwrap_or(0);
                return Ok(Err(DocumentError {
                    document: out.len(),
                    policy: None,
                    path: String::new(),
                    message: format!("not valid YAML: {e}"),
                    line,
                }));
            }
        };
        if value.is_null() {
            continue;
        }
        push_expanded(
            &mut out,
            value,
            Some(chunk.trim_end()),
            SourceFormat::Yaml,
            first_line,
        );
    }
    Ok(Ok(out))
}

/// Adds a document, or the items of a Kubernetes List.
fn push_expanded(
    out: &mut Vec<RawDocument>,
    value: Value,
    source: Option<&str>,
    format: SourceFormat,
    first_line: u32,
) {
    if value.get("kind").and_then(Value::as_str) == Some("List")
        && let Some(Value::Array(items)) = value.get("items")
    {
        for item in items.clone() {
            push_expanded(out, item, None, format, 0);
        }
        return;
    }
    let source = match source {
        Some(s) => s.to_owned(),
        None => render(&value, format),
    };
    out.push(RawDocument {
        value,
        source,
        format,
        first_line,
    });
}

fn render(value: &Value, format: SourceFormat) -> String {
    match format {
        SourceFormat::Json => serde_json::to_string_pretty(value).unwrap_or_default(),
        SourceFormat::Yaml => serde_yaml_ng::to_string(value).unwrap_or_default(),
    }
}

/// Walks one document, collecting errors.
struct Reader {
    document: usize,
    policy: Option<PolicyKey>,
    errors: Vec<DocumentError>,
    first_line: u32,
}

/// `path.field`; a field name from the caller (an unknown key, a label key) is cut to
/// [`MAX_ECHO_BYTES`] so an error path never repeats a huge key.
fn join(path: &str, field: &str) -> String {
    let field = if field.len() > MAX_ECHO_BYTES {
        let mut end = MAX_ECHO_BYTES;
        while !field.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…({} bytes)", &field[..end], field.len())
    } else {
        field.to_owned()
    };
    if path.is_empty() {
        field
    } else {
        format!("{path}.{field}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

impl Reader {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(DocumentError {
            document: self.document,
            policy: self.policy.clone(),
            path: path.to_owned(),
            message: message.into(),
            line: 0,
        });
    }

    /// The mapping at `path`, checking that only `allowed` fields are present.
    fn mapping<'v>(
        &mut self,
        value: &'v Value,
        path: &str,
        allowed: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Value::Object(map) = value else {
            self.error(path, format!("{} is not a mapping", show(value)));
            return None;
        };
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                self.error(
                    &join(path, key),
                    format!("unknown field; expected one of {}", allowed.join(", ")),
                );
            }
        }
        Some(map)
    }

    /// The list at `map[field]` (absent or null = empty).
    fn list<'v>(&mut self, map: &'v Map<String, Value>, field: &str, path: &str) -> &'v [Value] {
        match map.get(field) {
            None | Some(Value::Null) => &[],
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.error(&join(path, field), format!("{} is not a list", show(other)));
                &[]
            }
        }
    }

    fn string(&mut self, map: &Map<String, Value>, field: &str, path: &str) -> Option<String> {
        match map.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.error(
                    &join(path, field),
                    format!("{} is not a string", show(other)),
                );
                None
            }
        }
    }

    fn policy(&mut self, document: &RawDocument, default_namespace: &str) -> Option<Policy> {
        let _ = self.first_line;
        let root = self.mapping(
            &document.value,
            "",
            &["apiVersion", "kind", "metadata", "spec", "specs", "status"],
        )?;
        let api_version = self.string(root, "apiVersion", "").unwrap_or_default();
        let kind_text = self.string(root, "kind", "").unwrap_or_default();
        let (kind, cluster_wide) = match (api_version.as_str(), kind_text.as_str()) {
            ("kino.io/v1", "KinoNetworkPolicy") | ("cilium.io/v2", "CiliumNetworkPolicy") => {
                (PolicyKind::Kino, false)
            }
            ("kino.io/v1", "KinoClusterwideNetworkPolicy")
            | ("cilium.io/v2", "CiliumClusterwideNetworkPolicy") => (PolicyKind::Kino, true),
            ("networking.k8s.io/v1", "NetworkPolicy") => (PolicyKind::K8s, false),
            (_, "") => {
                self.error(
                    "kind",
                    "kind is required: KinoNetworkPolicy, KinoClusterwideNetworkPolicy or NetworkPolicy",
                );
                return None;
            }
            _ => {
                self.error(
                    "kind",
                    format!(
                        "{api_version}/{kind_text} is not a policy kind: use kino.io/v1 KinoNetworkPolicy or KinoClusterwideNetworkPolicy (cilium.io/v2 CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy), or networking.k8s.io/v1 NetworkPolicy"
                    ),
                );
                return None;
            }
        };
        let empty = Value::Object(Map::new());
        let metadata_value = root.get("metadata").unwrap_or(&empty);
        let Value::Object(metadata) = metadata_value else {
            self.error(
                "metadata",
                format!("{} is not a mapping", show(metadata_value)),
            );
            return None;
        };
        let name = self
            .string(metadata, "name", "metadata")
            .unwrap_or_default();
        if let Err(message) = validate::check_name("name", &name) {
            self.error("metadata.name", message);
        }
        let namespace = match self.string(metadata, "namespace", "metadata") {
            Some(ns) if cluster_wide && !ns.is_empty() => {
                self.error(
                    "metadata.namespace",
                    format!("{}: a cluster-wide policy has no namespace", quote(&ns)),
                );
                String::new()
            }
            _ if cluster_wide => String::new(),
            Some(ns) if !ns.is_empty() => {
                if let Err(message) = validate::check_name("namespace", &ns)
                    .and_then(|()| validate::namespace_limit(&ns))
                {
                    self.error("metadata.namespace", message);
                }
                ns
            }
            _ => default_namespace.to_owned(),
        };
        self.policy = Some(PolicyKey {
            namespace: namespace.clone(),
            name: name.clone(),
        });
        let mut metadata_labels = BTreeMap::new();
        if let Some(labels) = metadata.get("labels").filter(|v| !v.is_null()) {
            metadata_labels = self.string_map(labels, "metadata.labels");
        }
        let spec = match kind {
            PolicyKind::Kino => PolicySpec::Kino(self.kino(root)),
            PolicyKind::K8s => {
                if root.contains_key("specs") {
                    self.error("specs", "a NetworkPolicy has one spec");
                }
                match root.get("spec") {
                    Some(spec) => PolicySpec::K8s(self.k8s(spec)),
                    None => {
                        self.error("spec", "spec is required");
                        PolicySpec::K8s(K8sPolicy::default())
                    }
                }
            }
        };
        Some(Policy {
            key: PolicyKey { namespace, name },
            kind,
            metadata_labels,
            source: document.source.clone(),
            format: document.format,
            spec,
        })
    }

    fn string_map(&mut self, value: &Value, path: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Value::Object(map) = value else {
            self.error(path, format!("{} is not a mapping", show(value)));
            return out;
        };
        for (key, value) in map {
            match value {
                Value::Null => {
                    out.insert(key.clone(), String::new());
                }
                value => match scalar_text(value) {
                    Some(text) => {
                        out.insert(key.clone(), text);
                    }
                    None => {
                        self.error(&join(path, key), format!("{} is not a string", show(value)))
                    }
                },
            }
        }
        out
    }

    // ---- Kinocilium / Cilium policies ------------------------------------------------------

    fn kino(&mut self, root: &Map<String, Value>) -> KinoPolicy {
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

    /// A `{port, endPort, protocol}` entry; `default_protocol` when none is given.
    fn port(&mut self, value: &Value, path: &str, default_protocol: Protocol) -> Option<PortRule> {
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

    fn cidr_rule(&mut self, value: &Value, path: &str, allowed: &[&str]) -> Option<CidrRule> {
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

    fn selector(&mut self, value: &Value, path: &str) -> Selector {
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

    // ---- Kubernetes NetworkPolicy ----------------------------------------------------------

    fn k8s(&mut self, value: &Value) -> K8sPolicy {
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

#[cfg(test)]
mod tests;
