//! `kino bpf lb list`: the agent's load-balancer maps as `cilium bpf lb list` shows them —
//! one row per backend of each frontend, `BACKEND ADDRESS (REVNAT_ID) (SLOT)`, the frontend
//! named on its first row. A backend without a slot (terminating) shows slot 0.

use kino_api::agent::{BpfLbFrontend, ListBpfLoadBalancerResponse};
use kino_api::service::BackendState;
use kino_api::types::Protocol;

use crate::table::render as table;

/// `ip:port`, IPv6 in brackets.
fn address(ip: &str, port: u32) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

fn protocol(frontend: &BpfLbFrontend) -> &'static str {
    match Protocol::try_from(frontend.protocol) {
        Ok(Protocol::Udp) => "UDP",
        Ok(Protocol::Tcp) => "TCP",
        _ => "?",
    }
}

/// The table of `kino bpf lb list`.
pub fn render(listing: &ListBpfLoadBalancerResponse) -> String {
    if listing.entries.is_empty() {
        return "No services in the load balancer's maps.\n".to_owned();
    }
    let mut rows = Vec::new();
    for frontend in &listing.entries {
        let proto = protocol(frontend);
        let service = format!(
            "{}/{proto}",
            address(&frontend.frontend_address, frontend.frontend_port)
        );
        if frontend.backends.is_empty() {
            rows.push(vec![
                service,
                format!("(none) ({}) (0)", frontend.frontend_id),
            ]);
            continue;
        }
        for (i, backend) in frontend.backends.iter().enumerate() {
            let mut text = format!(
                "{}/{proto} ({}) ({})",
                address(&backend.address, backend.port),
                frontend.frontend_id,
                backend.slot
            );
            if backend.state == BackendState::Terminating as i32 {
                text.push_str(" [terminating]");
            } else if backend.weight > 1 {
                text.push_str(&format!(" [weight {}]", backend.weight));
            }
            let first = if i == 0 {
                service.clone()
            } else {
                String::new()
            };
            rows.push(vec![first, text]);
        }
    }
    table(
        &["SERVICE ADDRESS", "BACKEND ADDRESS (REVNAT_ID) (SLOT)"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kino_api::agent::BpfLbBackend;

    #[test]
    fn one_row_per_backend_the_frontend_on_the_first() {
        let listing = ListBpfLoadBalancerResponse {
            entries: vec![BpfLbFrontend {
                frontend_id: 3,
                frontend_address: "fd00:ffff::10".into(),
                frontend_port: 80,
                protocol: Protocol::Tcp as i32,
                backends: vec![
                    BpfLbBackend {
                        backend_id: 1,
                        address: "fd00::5".into(),
                        port: 8080,
                        slot: 1,
                        weight: 2,
                        state: BackendState::Active as i32,
                    },
                    BpfLbBackend {
                        backend_id: 2,
                        address: "fd00::7".into(),
                        port: 8080,
                        slot: 0,
                        weight: 0,
                        state: BackendState::Terminating as i32,
                    },
                ],
            }],
        };
        let text = render(&listing);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("SERVICE ADDRESS"), "{text}");
        assert!(
            lines[1].starts_with("[fd00:ffff::10]:80/TCP")
                && lines[1].ends_with("[fd00::5]:8080/TCP (3) (1) [weight 2]"),
            "{text}"
        );
        assert!(
            lines[2]
                .trim_start()
                .starts_with("[fd00::7]:8080/TCP (3) (0) [terminating]"),
            "{text}"
        );
        assert_eq!(
            render(&ListBpfLoadBalancerResponse::default()),
            "No services in the load balancer's maps.\n"
        );
    }
}
