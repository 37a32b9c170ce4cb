//! The `kino endpoint list` table, laid out like `cilium endpoint list`: a two-line header,
//! one row per endpoint, its labels one per line.

use kino_api::agent::Endpoint;

use super::state_word;

/// The header, one cell per column, each cell one or two lines.
const HEADER: [&[&str]; 8] = [
    &["ENDPOINT"],
    &["POLICY (ingress)", "ENFORCEMENT"],
    &["POLICY (egress)", "ENFORCEMENT"],
    &["IDENTITY"],
    &["LABELS (source:key[=value])"],
    &["IPv6"],
    &["IPv4"],
    &["STATUS"],
];

/// Space between columns.
const GAP: &str = "   ";

/// "Enabled" / "Disabled" as Cilium writes policy enforcement; "-" when the agent gave none.
fn enforcement(endpoint: &Endpoint, ingress: bool) -> String {
    match endpoint
        .policy
        .as_ref()
        .and_then(|p| p.enforcement.as_ref())
    {
        None => "-".to_owned(),
        Some(e) if (if ingress { e.ingress } else { e.egress }) => "Enabled".to_owned(),
        Some(_) => "Disabled".to_owned(),
    }
}

/// Labels as `source:key=value` (`source:key` when the value is empty), sorted.
pub fn label_lines(endpoint: &Endpoint) -> Vec<String> {
    let mut lines: Vec<String> = endpoint
        .labels
        .iter()
        .flat_map(|labels| labels.labels.iter())
        .map(|label| {
            let source = if label.source.is_empty() {
                "unspec"
            } else {
                label.source.as_str()
            };
            if label.value.is_empty() {
                format!("{source}:{}", label.key)
            } else {
                format!("{source}:{}={}", label.key, label.value)
            }
        })
        .collect();
    lines.sort();
    lines
}

fn row(endpoint: &Endpoint) -> Vec<Vec<String>> {
    let addressing = endpoint
        .networking
        .as_ref()
        .and_then(|n| n.addressing.as_ref());
    let address = |v6: bool| {
        addressing
            .map(|a| if v6 { a.ipv6.clone() } else { a.ipv4.clone() })
            .unwrap_or_default()
    };
    let labels = label_lines(endpoint);
    vec![
        vec![endpoint.id.to_string()],
        vec![enforcement(endpoint, true)],
        vec![enforcement(endpoint, false)],
        vec![if endpoint.identity == 0 {
            "-".to_owned()
        } else {
            endpoint.identity.to_string()
        }],
        if labels.is_empty() {
            vec!["-".to_owned()]
        } else {
            labels
        },
        vec![address(true)],
        vec![address(false)],
        vec![state_word(endpoint.state()).to_owned()],
    ]
}

/// The table for `endpoints` (already sorted by id); a single line when there are none.
pub fn render_list(endpoints: &[Endpoint]) -> String {
    if endpoints.is_empty() {
        return "No endpoints on this node.\n".to_owned();
    }
    let header: Vec<Vec<String>> = HEADER
        .iter()
        .map(|cell| cell.iter().map(|line| (*line).to_owned()).collect())
        .collect();
    let rows: Vec<Vec<Vec<String>>> = std::iter::once(header)
        .chain(endpoints.iter().map(row))
        .collect();
    let widths: Vec<usize> = (0..HEADER.len())
        .map(|column| {
            rows.iter()
                .flat_map(|row| row[column].iter())
                .map(|line| line.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &rows {
        let height = row.iter().map(Vec::len).max().unwrap_or(1);
        for line in 0..height {
            let mut text = String::new();
            for (column, cell) in row.iter().enumerate() {
                let value = cell.get(line).map_or("", String::as_str);
                if column > 0 {
                    text.push_str(GAP);
                }
                text.push_str(&format!("{value:<width$}", width = widths[column]));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use kino_api::agent::EndpointState;

    use super::*;
    use crate::endpoint::tests::sample_endpoint;

    #[test]
    fn table_has_cilium_columns_and_multi_line_labels() {
        let mut waiting = sample_endpoint();
        waiting.id = 7;
        waiting.identity = 0;
        waiting.state = EndpointState::WaitingForIdentity as i32;
        waiting.labels = None;
        waiting.policy = None;
        waiting.networking.as_mut().unwrap().addressing = Some(Default::default());
        waiting
            .networking
            .as_mut()
            .unwrap()
            .addressing
            .as_mut()
            .unwrap()
            .ipv6 = "fd00::7".into();
        let table = render_list(&[waiting, sample_endpoint()]);
        let expected = "\
ENDPOINT   POLICY (ingress)   POLICY (egress)   IDENTITY   LABELS (source:key[=value])               IPv6      IPv4        STATUS
           ENFORCEMENT        ENFORCEMENT
7          -                  -                 -          -                                         fd00::7               waiting-for-identity
1234       Enabled            Disabled          4321       container:app=web                                   10.0.1.23   ready
                                                           k8s:io.kubernetes.pod.namespace=default
";
        assert_eq!(table, expected, "\n{table}");
    }

    #[test]
    fn labels_without_value_or_source_read_like_cilium() {
        let mut endpoint = sample_endpoint();
        let labels = endpoint.labels.as_mut().unwrap();
        labels.labels[0].value.clear();
        labels.labels[1].source.clear();
        assert_eq!(
            label_lines(&endpoint),
            [
                "container:app",
                "unspec:io.kubernetes.pod.namespace=default"
            ]
        );
    }

    #[test]
    fn no_endpoints_says_so() {
        assert_eq!(render_list(&[]), "No endpoints on this node.\n");
    }
}
