//! Which nodes a `GetFlows` request asks: a node whose flows no filter can let through is
//! not asked at all, so `--node-name n1` (`FlowFilter.node_name`) reads one node, not all.
//!
//! A node is asked when the whitelist is empty or some whitelist filter has no node names
//! or a node-name pattern matching it, and no blacklist filter consisting of node names
//! alone matches it (such a filter drops every flow of the node). The nodes apply the
//! filters again themselves, so this only narrows, it never decides what a flow is.

use kino_api::flow::{FlowFilter, GetFlowsRequest};

/// Whether `pattern` (`*` matches any run of characters, the rest literally) matches `name`,
/// as the agent's observer matches `FlowFilter.node_name`.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    // Greedy matching with backtracking to the last star: linear in practice.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((star_p, star_n)) = star {
            p = star_p + 1;
            n = star_n + 1;
            star = Some((star_p, star_n + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

fn names_match(filter: &FlowFilter, node: &str) -> bool {
    filter.node_name.iter().any(|p| name_matches(p, node))
}

/// Whether a filter says nothing but node names.
fn only_node_names(filter: &FlowFilter) -> bool {
    !filter.node_name.is_empty()
        && *filter
            == FlowFilter {
                node_name: filter.node_name.clone(),
                ..FlowFilter::default()
            }
}

/// Whether `request` can get any flow of node `node`.
pub fn asks(request: &GetFlowsRequest, node: &str) -> bool {
    let whitelisted = request.whitelist.is_empty()
        || request
            .whitelist
            .iter()
            .any(|f| f.node_name.is_empty() || names_match(f, node));
    let blacklisted = request
        .blacklist
        .iter()
        .any(|f| only_node_names(f) && names_match(f, node));
    whitelisted && !blacklisted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_the_observer_does() {
        for (pattern, name, expected) in [
            ("n1", "n1", true),
            ("n1", "n10", false),
            ("n*", "n10", true),
            ("*", "", true),
            ("", "", true),
            ("", "n", false),
            ("kino-node-*", "kino-node-2", true),
            ("*-2", "kino-node-2", true),
            ("*-2", "kino-node-21", false),
            ("k*n*2", "kino-node-2", true),
            ("a*a", "a", false),
            ("*a*a", "aa", true),
            ("ab*b", "ab", false),
        ] {
            assert_eq!(
                name_matches(pattern, name),
                expected,
                "{pattern:?} {name:?}"
            );
        }
    }

    fn names(names: &[&str]) -> FlowFilter {
        FlowFilter {
            node_name: names.iter().map(|n| n.to_string()).collect(),
            ..FlowFilter::default()
        }
    }

    #[test]
    fn the_node_filter_narrows_the_nodes_asked() {
        let all = GetFlowsRequest::default();
        assert!(asks(&all, "n1"));
        let one = GetFlowsRequest {
            whitelist: vec![names(&["n1"])],
            ..Default::default()
        };
        assert!(asks(&one, "n1") && !asks(&one, "n2"));
        // A second whitelist filter without node names lets every node through.
        let or_any = GetFlowsRequest {
            whitelist: vec![
                names(&["n1"]),
                FlowFilter {
                    verdict: vec![2],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert!(asks(&or_any, "n2"));
        let not_n2 = GetFlowsRequest {
            blacklist: vec![names(&["n2"])],
            ..Default::default()
        };
        assert!(asks(&not_n2, "n1") && !asks(&not_n2, "n2"));
        // A blacklist filter that also names a verdict drops only some of n2's flows.
        let not_n2_drops = GetFlowsRequest {
            blacklist: vec![FlowFilter {
                verdict: vec![2],
                ..names(&["n2"])
            }],
            ..Default::default()
        };
        assert!(asks(&not_n2_drops, "n2"));
    }
}
