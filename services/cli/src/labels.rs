//! Security labels on the command line, in Cilium's spelling: `source:key=value`
//! (`k8s:app=web`, `container:namespace=shop`, `reserved:host`), lists of them written
//! `k=v,k2=v2`, and how tables print them.

use kino_api::types::{Label, Labels};

/// The source a label without a `source:` prefix gets (as the compiler reads it).
pub const SOURCE_UNSPEC: &str = "unspec";

/// Parses `source:key=value`, `key=value` or `source:key` (a label without a value, like
/// `reserved:host`). A label without a prefix keeps an empty source, which the compiler reads
/// as `unspec` (selectors without a source match it).
pub fn parse_label(text: &str) -> Result<Label, String> {
    let text = text.trim();
    let (head, value) = text.split_once('=').unwrap_or((text, ""));
    let (source, key) = head.split_once(':').unwrap_or(("", head));
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(format!(
            "{text:?} is not a label: write KEY=VALUE or SOURCE:KEY=VALUE (k8s:app=web)"
        ));
    }
    Ok(Label {
        key: key.to_owned(),
        value: value.to_owned(),
        source: source.to_owned(),
    })
}

/// Parses `k=v,k2=v2` (commas or spaces between labels) into a sorted label set; a later
/// label replaces an earlier one with the same source and key.
pub fn parse_labels(text: &str) -> Result<Labels, String> {
    let mut labels: Vec<Label> = Vec::new();
    for item in text.split([',', ' ']).filter(|s| !s.is_empty()) {
        let label = parse_label(item)?;
        labels.retain(|l| (&l.source, &l.key) != (&label.source, &label.key));
        labels.push(label);
    }
    if labels.is_empty() {
        return Err("give at least one label: KEY=VALUE[,SOURCE:KEY=VALUE...]".to_owned());
    }
    labels.sort_by(|a, b| (&a.source, &a.key).cmp(&(&b.source, &b.key)));
    Ok(Labels { labels })
}

/// One label as Cilium prints it: `source:key=value`, `source:key` without a value.
pub fn label_text(label: &Label) -> String {
    let source = if label.source.is_empty() {
        SOURCE_UNSPEC
    } else {
        &label.source
    };
    if label.value.is_empty() {
        format!("{source}:{}", label.key)
    } else {
        format!("{source}:{}={}", label.key, label.value)
    }
}

/// Every label of a set, sorted, one string each.
pub fn label_lines(labels: Option<&Labels>) -> Vec<String> {
    let mut lines: Vec<String> = labels
        .into_iter()
        .flat_map(|l| l.labels.iter())
        .map(label_text)
        .collect();
    lines.sort();
    lines
}

/// A label set on one line, comma-separated; `-` when empty.
pub fn labels_inline(labels: Option<&Labels>) -> String {
    let lines = label_lines(labels);
    if lines.is_empty() {
        "-".to_owned()
    } else {
        lines.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_with_and_without_sources() {
        let labels = parse_labels("k8s:app=web, env=prod,reserved:host").expect("parses");
        let text: Vec<String> = labels.labels.iter().map(label_text).collect();
        assert_eq!(text, ["unspec:env=prod", "k8s:app=web", "reserved:host"]);
        assert_eq!(labels.labels[0].source, "", "no prefix stays unset");
        let label = parse_label("k8s:io.kubernetes.pod.namespace=shop").expect("parses");
        assert_eq!(
            (
                label.source.as_str(),
                label.key.as_str(),
                label.value.as_str()
            ),
            ("k8s", "io.kubernetes.pod.namespace", "shop")
        );
        let label = parse_label("app.kubernetes.io/name=web").expect("parses");
        assert_eq!(label.key, "app.kubernetes.io/name");
        let replaced = parse_labels("app=a,app=b").expect("parses");
        assert_eq!(replaced.labels.len(), 1);
        assert_eq!(replaced.labels[0].value, "b");
        for bad in ["", ",", "=web", "k8s:=web"] {
            assert!(parse_labels(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn labels_print_as_cilium_does() {
        let labels = parse_labels("container:pod=web,container:namespace=shop").unwrap();
        assert_eq!(
            label_lines(Some(&labels)),
            ["container:namespace=shop", "container:pod=web"]
        );
        assert_eq!(
            labels_inline(Some(&labels)),
            "container:namespace=shop,container:pod=web"
        );
        assert_eq!(labels_inline(None), "-");
    }
}
