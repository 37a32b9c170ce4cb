//! Start-up settings of the agent that need checking: the node name and the API socket path.

use std::path::{Path, PathBuf};

/// Where the kernel reports this UTS namespace's hostname.
const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";

/// Longest node name (a DNS subdomain, as Kubernetes node names are).
const MAX_NODE_NAME: usize = 253;
/// Longest label of a node name.
const MAX_LABEL: usize = 63;

/// A start-up setting of the agent is unusable.
#[derive(Debug, thiserror::Error)]
pub enum NodeConfigError {
    /// The node name is not a lowercase DNS subdomain.
    #[error(
        "node name {name:?} is invalid: {reason}; a node name is a lowercase DNS subdomain (labels of a-z, 0-9 and '-' separated by '.', at most 253 characters), set it with --node-name or KINO_NODE_NAME"
    )]
    InvalidNodeName {
        /// The name given (or derived from the hostname).
        name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The hostname could not be read to default the node name.
    #[error(
        "cannot read the hostname from {HOSTNAME_FILE} to use as the node name: {source}; set --node-name or KINO_NODE_NAME"
    )]
    Hostname {
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The agent socket is not an absolute unix socket path.
    #[error(
        "agent socket {input:?} is invalid: {reason}; give an absolute path such as /run/kino/agent.sock (or unix:/run/kino/agent.sock)"
    )]
    InvalidSocket {
        /// The text given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The node name to use: `explicit` if given, else this machine's hostname (lowercased).
pub fn resolve_node_name(explicit: Option<&str>) -> Result<String, NodeConfigError> {
    let name = match explicit {
        Some(name) => name.to_owned(),
        None => std::fs::read_to_string(HOSTNAME_FILE)
            .map_err(|source| NodeConfigError::Hostname { source })?
            .trim()
            .to_ascii_lowercase(),
    };
    validate_node_name(&name)?;
    Ok(name)
}

/// Checks that `name` is a lowercase DNS subdomain (RFC 1123), like a Kubernetes node name.
pub fn validate_node_name(name: &str) -> Result<(), NodeConfigError> {
    let invalid = |reason: String| NodeConfigError::InvalidNodeName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty".to_owned()));
    }
    if name.len() > MAX_NODE_NAME {
        return Err(invalid(format!(
            "it has {} characters, more than {MAX_NODE_NAME}",
            name.len()
        )));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(invalid(
                "it has an empty label (\"..\" or a leading or trailing '.')".to_owned(),
            ));
        }
        if label.len() > MAX_LABEL {
            return Err(invalid(format!(
                "label {label:?} has more than {MAX_LABEL} characters"
            )));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(invalid(format!("it contains {c:?}")));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid(format!("label {label:?} starts or ends with '-'")));
        }
    }
    Ok(())
}

/// Parses the agent socket setting: `/path` or `unix:/path` (the local API is unix-only).
pub fn parse_socket_path(input: &str) -> Result<PathBuf, NodeConfigError> {
    let invalid = |reason| NodeConfigError::InvalidSocket {
        input: input.to_owned(),
        reason,
    };
    let text = input.trim();
    let path = match text.strip_prefix("unix:") {
        Some(rest) => rest.strip_prefix("//").unwrap_or(rest),
        None if text.contains("://") || !text.starts_with('/') && text.contains(':') => {
            return Err(invalid(
                "the agent's local API is served on a unix socket only, not TCP",
            ));
        }
        None => text,
    };
    if path.is_empty() {
        return Err(invalid("the path is empty"));
    }
    if !Path::new(path).is_absolute() {
        return Err(invalid("the path is relative"));
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_subdomains() {
        for name in ["node-1", "kind-worker2", "n1.example.com", "a", "0abc"] {
            validate_node_name(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn rejects_bad_node_names_saying_why() {
        for (name, why) in [
            ("", "empty"),
            ("Node1", "'N'"),
            ("node_1", "'_'"),
            ("-node", "starts or ends"),
            ("node.", "empty label"),
            ("a..b", "empty label"),
        ] {
            let message = validate_node_name(name).expect_err(name).to_string();
            assert!(message.contains(why), "{name}: {message}");
            assert!(message.contains("--node-name"), "{message}");
        }
        let long = "a".repeat(254);
        assert!(validate_node_name(&long).is_err());
        let long_label = "a".repeat(64);
        assert!(validate_node_name(&long_label).is_err());
    }

    #[test]
    fn defaults_the_node_name_to_the_hostname() {
        let hostname = std::fs::read_to_string(HOSTNAME_FILE).expect("hostname readable");
        match resolve_node_name(None) {
            Ok(name) => assert_eq!(name, hostname.trim().to_ascii_lowercase()),
            // A hostname that is no DNS name (e.g. with '_') must say how to fix it.
            Err(e) => assert!(e.to_string().contains("--node-name"), "{e}"),
        }
        assert_eq!(resolve_node_name(Some("n2")).expect("valid"), "n2");
        assert!(resolve_node_name(Some("N 2")).is_err());
    }

    #[test]
    fn parses_socket_paths() {
        for (input, path) in [
            ("/run/kino/agent.sock", "/run/kino/agent.sock"),
            ("unix:/run/kino/agent.sock", "/run/kino/agent.sock"),
            ("unix:///tmp/a.sock", "/tmp/a.sock"),
        ] {
            assert_eq!(parse_socket_path(input).expect(input), PathBuf::from(path));
        }
        for (input, why) in [
            ("127.0.0.1:7404", "unix socket only"),
            ("http://x:1", "unix socket only"),
            ("unix:", "empty"),
            ("agent.sock", "relative"),
            ("unix:agent.sock", "relative"),
        ] {
            let message = parse_socket_path(input).expect_err(input).to_string();
            assert!(message.contains(why), "{input}: {message}");
        }
    }
}
