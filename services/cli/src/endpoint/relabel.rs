//! `kino endpoint labels <endpoint> [--add k=v]... [--delete k]...` (Cilium's `cilium endpoint
//! labels`): shows or changes an endpoint's security labels. A change gives the endpoint the
//! identity of its new label set; the agent has written that identity's policy into the
//! datapath when the command returns.

use std::time::Duration;

use kino_api::agent::{Endpoint, UpdateEndpointLabelsRequest, UpdateEndpointLabelsResponse};
use kino_api::types::Labels;
use serde_json::json;

use super::{EndpointError, Lookup, get, json::endpoint_json};
use crate::agent::call;
use crate::labels::{label_lines, parse_label};

/// What to change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelEdit {
    /// Labels to add or change (`[source:]key=value`).
    pub add: Labels,
    /// Labels to delete (`key` or `source:key`).
    pub delete: Vec<String>,
}

impl LabelEdit {
    /// Parses the flags' values; each value may list several labels separated by commas.
    pub fn parse(add: &[String], delete: &[String]) -> Result<LabelEdit, String> {
        let mut edit = LabelEdit::default();
        for text in add
            .iter()
            .flat_map(|t| t.split(','))
            .filter(|t| !t.trim().is_empty())
        {
            let label = parse_label(text).map_err(|e| format!("--add: {e}"))?;
            edit.add
                .labels
                .retain(|l| (&l.source, &l.key) != (&label.source, &label.key));
            edit.add.labels.push(label);
        }
        for text in delete.iter().flat_map(|t| t.split(',')) {
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            if text.contains('=') {
                return Err(format!(
                    "--delete {text:?}: name the label without its value (KEY or SOURCE:KEY)"
                ));
            }
            edit.delete.push(text.to_owned());
        }
        Ok(edit)
    }

    /// Whether nothing is to change (the command then only shows the labels).
    pub fn is_empty(&self) -> bool {
        self.add.labels.is_empty() && self.delete.is_empty()
    }
}

/// Runs the command: resolves the endpoint, applies the edit (if any), and renders the
/// result as text or JSON.
pub async fn labels(
    socket: &str,
    timeout: Duration,
    lookup: &Lookup,
    edit: &LabelEdit,
    json: bool,
) -> Result<String, EndpointError> {
    let endpoint = get(socket, timeout, lookup).await?;
    if edit.is_empty() {
        return Ok(if json {
            pretty(
                &json!({ "endpoint": endpoint_json(&endpoint), "previousIdentity": endpoint.identity }),
            )
        } else {
            render(&endpoint, None)
        });
    }
    let request = UpdateEndpointLabelsRequest {
        id: endpoint.id,
        add: Some(edit.add.clone()),
        delete: edit.delete.clone(),
    };
    let response: UpdateEndpointLabelsResponse = call(
        socket,
        timeout,
        "UpdateEndpointLabels",
        |mut client| async move { client.update_endpoint_labels(request).await },
    )
    .await?;
    let updated = response.endpoint.unwrap_or(endpoint);
    Ok(if json {
        pretty(&json!({
            "endpoint": endpoint_json(&updated),
            "previousIdentity": response.previous_identity,
        }))
    } else {
        render(&updated, Some(response.previous_identity))
    })
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).expect("JSON values serialise") + "\n"
}

/// The endpoint's labels, one per line, under a line with its identity (and the change).
pub fn render(endpoint: &Endpoint, previous_identity: Option<u32>) -> String {
    let identity = |id: u32| {
        if id == 0 {
            "none".to_owned()
        } else {
            id.to_string()
        }
    };
    let mut out = match previous_identity {
        Some(previous) if previous != endpoint.identity => format!(
            "endpoint {}: identity {} -> {}\n",
            endpoint.id,
            identity(previous),
            identity(endpoint.identity)
        ),
        Some(_) => format!(
            "endpoint {}: identity {} (unchanged)\n",
            endpoint.id,
            identity(endpoint.identity)
        ),
        None => format!(
            "endpoint {}: identity {}\n",
            endpoint.id,
            identity(endpoint.identity)
        ),
    };
    out.push_str("LABELS (source:key[=value])\n");
    let lines = label_lines(endpoint.labels.as_ref());
    if lines.is_empty() {
        out.push_str("(none)\n");
    }
    for line in lines {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use kino_api::types::Label;

    use super::*;

    #[test]
    fn flags_parse_into_one_edit() {
        let edit = LabelEdit::parse(
            &["app=web,k8s:tier=front".into(), "app=api".into()],
            &["env".into(), "container:pod".into()],
        )
        .expect("parses");
        assert_eq!(
            edit.add.labels,
            vec![
                Label {
                    key: "tier".into(),
                    value: "front".into(),
                    source: "k8s".into()
                },
                Label {
                    key: "app".into(),
                    value: "api".into(),
                    source: String::new()
                },
            ]
        );
        assert_eq!(edit.delete, ["env", "container:pod"]);
        assert!(!edit.is_empty());
        assert!(LabelEdit::parse(&[], &[]).unwrap().is_empty());
    }

    #[test]
    fn bad_flags_are_named() {
        let err = LabelEdit::parse(&[], &["app=web".into()]).unwrap_err();
        assert!(err.contains("--delete \"app=web\""), "{err}");
        let err = LabelEdit::parse(&["=x".into()], &[]).unwrap_err();
        assert!(err.starts_with("--add:"), "{err}");
    }

    #[test]
    fn render_shows_the_identity_change() {
        let mut endpoint = crate::endpoint::tests::sample_endpoint();
        endpoint.identity = 51240;
        let text = render(&endpoint, Some(51234));
        assert!(
            text.starts_with(&format!(
                "endpoint {}: identity 51234 -> 51240\n",
                endpoint.id
            )),
            "{text}"
        );
        assert!(text.contains("LABELS (source:key[=value])\n"), "{text}");
        let same = render(&endpoint, Some(51240));
        assert!(same.contains("(unchanged)"), "{same}");
    }
}
