//! How `kino service` prints services for people: `list` in `cilium service list`'s columns
//! (`ID`, `Frontend`, `Service Type`, `Backend`), one row per frontend in ID order, its
//! backends numbered on continuation lines (`1 => 10.0.1.5:8080 (active)`); `get` as a
//! detail page naming the service, its frontends and its backends with their nodes.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use kino_api::service as pb;

use crate::table;

/// `172.20.0.10:80/TCP`, `[fd00:ffff::a]:80/TCP`, `*:30080/TCP` (a NodePort: every node
/// address).
pub fn frontend_text(frontend: &pb::Frontend) -> String {
    let protocol = protocol_text(frontend.protocol());
    match frontend.address.parse::<IpAddr>() {
        Ok(address) => format!(
            "{}/{protocol}",
            SocketAddr::new(address, frontend.port as u16)
        ),
        Err(_) => format!("*:{}/{protocol}", frontend.port),
    }
}

fn protocol_text(protocol: pb::Protocol) -> &'static str {
    match protocol {
        pb::Protocol::Tcp => "TCP",
        pb::Protocol::Udp => "UDP",
        pb::Protocol::Unspecified => "ANY",
    }
}

/// `10.0.1.5:8080`, `[fd00::105]:8080`.
pub fn backend_socket(backend: &pb::Backend) -> String {
    match backend.address.parse::<IpAddr>() {
        Ok(address) => SocketAddr::new(address, backend.port as u16).to_string(),
        Err(_) => format!("{}:{}", backend.address, backend.port),
    }
}

/// The Service Type column, as Cilium names them.
pub fn frontend_type(frontend: &pb::Frontend) -> &'static str {
    match frontend.r#type() {
        pb::FrontendType::ClusterIp => "ClusterIP",
        pb::FrontendType::NodePort => "NodePort",
        pb::FrontendType::ExternalIp => "ExternalIPs",
        pb::FrontendType::Unspecified => "-",
    }
}

fn state_text(backend: &pb::Backend) -> String {
    let state = match backend.state() {
        pb::BackendState::Terminating => "terminating",
        pb::BackendState::Active | pb::BackendState::Unspecified => "active",
    };
    if backend.weight > 1 {
        format!("{state}, weight {}", backend.weight)
    } else {
        state.to_owned()
    }
}

/// The backends that serve `frontend`: the same port name, and its protocol or none.
pub fn backends_of<'a>(
    service: &'a pb::Service,
    frontend: &pb::Frontend,
) -> impl Iterator<Item = &'a pb::Backend> {
    let (port_name, protocol) = (frontend.port_name.clone(), frontend.protocol());
    service.backends.iter().filter(move |b| {
        b.port_name == port_name
            && matches!(b.protocol(), pb::Protocol::Unspecified) | (b.protocol() == protocol)
    })
}

/// `kino service list`.
pub fn render_list(services: &[pb::Service]) -> String {
    if services.is_empty() {
        return "No services. Create one with `kino service create NAME --frontend VIP:PORT/PROTO --backend IP:PORT`.\n".to_owned();
    }
    let mut rows: Vec<(u32, Vec<String>)> = Vec::new();
    for service in services {
        for frontend in &service.frontends {
            let backends: Vec<String> = backends_of(service, frontend)
                .enumerate()
                .map(|(i, b)| format!("{} => {} ({})", i + 1, backend_socket(b), state_text(b)))
                .collect();
            rows.push((
                frontend.id,
                vec![
                    frontend.id.to_string(),
                    frontend_text(frontend),
                    frontend_type(frontend).to_owned(),
                    backends.join("\n"),
                ],
            ));
        }
    }
    rows.sort_by_key(|(id, _)| *id);
    let rows: Vec<Vec<String>> = rows.into_iter().map(|(_, row)| row).collect();
    table::render(&["ID", "Frontend", "Service Type", "Backend"], &rows)
}

/// `kino service get` (and what create/update print).
pub fn render_service(service: &pb::Service) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "name:        {}/{}", service.namespace, service.name);
    let kind = match service.r#type() {
        pb::ServiceType::NodePort => "NodePort",
        _ => "ClusterIP",
    };
    let _ = writeln!(out, "type:        {kind}");
    let affinity = service.session_affinity.unwrap_or_default();
    let affinity = match affinity.r#type() {
        pb::SessionAffinityType::ClientIp => format!(
            "ClientIP (timeout {}s)",
            affinity.timeout.map_or(0, |t| t.seconds)
        ),
        _ => "None".to_owned(),
    };
    let _ = writeln!(out, "affinity:    {affinity}");
    let _ = writeln!(out, "revision:    {}", service.revision);
    if let Some(time) = &service.update_time {
        let _ = writeln!(out, "updated:     {time}");
    }
    let _ = writeln!(out, "frontends:");
    let rows: Vec<Vec<String>> = service
        .frontends
        .iter()
        .map(|f| {
            vec![
                f.id.to_string(),
                frontend_text(f),
                frontend_type(f).to_owned(),
                port_name(&f.port_name),
            ]
        })
        .collect();
    indent(
        &mut out,
        &table::render(&["ID", "FRONTEND", "TYPE", "PORT NAME"], &rows),
    );
    let _ = writeln!(out, "backends:");
    if service.backends.is_empty() {
        let _ = writeln!(
            out,
            "  (none: new connections to the frontends are dropped)"
        );
        return out;
    }
    let rows: Vec<Vec<String>> = service
        .backends
        .iter()
        .map(|b| {
            vec![
                backend_socket(b),
                protocol_text(b.protocol()).to_owned(),
                b.weight.max(1).to_string(),
                state_text(b)
                    .split(',')
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
                if b.node_name.is_empty() {
                    "-".to_owned()
                } else {
                    b.node_name.clone()
                },
                port_name(&b.port_name),
            ]
        })
        .collect();
    indent(
        &mut out,
        &table::render(
            &[
                "BACKEND",
                "PROTOCOL",
                "WEIGHT",
                "STATE",
                "NODE",
                "PORT NAME",
            ],
            &rows,
        ),
    );
    out
}

fn port_name(name: &str) -> String {
    if name.is_empty() {
        "-".to_owned()
    } else {
        name.to_owned()
    }
}

fn indent(out: &mut String, text: &str) {
    for line in text.lines() {
        let _ = writeln!(out, "  {line}");
    }
}

/// What `kino service delete` says.
pub fn render_deleted(service: &pb::Service) -> String {
    let frontends: Vec<String> = service
        .frontends
        .iter()
        .map(|f| format!("{} (ID {})", frontend_text(f), f.id))
        .collect();
    format!(
        "service {}/{} deleted: frontends {} given back\n",
        service.namespace,
        service.name,
        frontends.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frontend(kind: pb::FrontendType, address: &str, port: u32, id: u32) -> pb::Frontend {
        pb::Frontend {
            r#type: kind as i32,
            address: address.into(),
            port,
            protocol: pb::Protocol::Tcp as i32,
            id,
            ..Default::default()
        }
    }

    fn backend(address: &str, port: u32, state: pb::BackendState, weight: u32) -> pb::Backend {
        pb::Backend {
            address: address.into(),
            port,
            state: state as i32,
            weight,
            node_name: "kino-node-2".into(),
            ..Default::default()
        }
    }

    fn web() -> pb::Service {
        pb::Service {
            namespace: "default".into(),
            name: "web".into(),
            r#type: pb::ServiceType::NodePort as i32,
            frontends: vec![
                frontend(pb::FrontendType::ClusterIp, "172.20.0.10", 80, 2),
                frontend(pb::FrontendType::ClusterIp, "fd00:ffff::a", 80, 3),
                frontend(pb::FrontendType::NodePort, "", 30080, 4),
            ],
            backends: vec![
                backend("10.0.1.5", 8080, pb::BackendState::Active, 1),
                backend("10.0.2.7", 8080, pb::BackendState::Terminating, 3),
            ],
            revision: 17,
            ..Default::default()
        }
    }

    #[test]
    fn list_has_ciliums_columns_and_numbered_backends() {
        let dns = pb::Service {
            namespace: "kube-system".into(),
            name: "dns".into(),
            frontends: vec![pb::Frontend {
                protocol: pb::Protocol::Udp as i32,
                ..frontend(pb::FrontendType::ClusterIp, "172.20.0.53", 53, 1)
            }],
            ..Default::default()
        };
        let text = render_list(&[web(), dns]);
        assert_eq!(
            text,
            "ID   Frontend                Service Type   Backend\n\
             1    172.20.0.53:53/UDP      ClusterIP\n\
             2    172.20.0.10:80/TCP      ClusterIP      1 => 10.0.1.5:8080 (active)\n\
             \x20                                           2 => 10.0.2.7:8080 (terminating, weight 3)\n\
             3    [fd00:ffff::a]:80/TCP   ClusterIP      1 => 10.0.1.5:8080 (active)\n\
             \x20                                           2 => 10.0.2.7:8080 (terminating, weight 3)\n\
             4    *:30080/TCP             NodePort       1 => 10.0.1.5:8080 (active)\n\
             \x20                                           2 => 10.0.2.7:8080 (terminating, weight 3)\n"
        );
        assert!(render_list(&[]).contains("No services"));
    }

    #[test]
    fn backends_serve_frontends_of_their_port_name_and_protocol() {
        let mut service = web();
        service.frontends[0].port_name = "http".into();
        service.backends[0].port_name = "http".into();
        service.backends[1].protocol = pb::Protocol::Udp as i32;
        let of = |i: usize| {
            backends_of(&service, &service.frontends[i])
                .map(backend_socket)
                .collect::<Vec<_>>()
        };
        assert_eq!(of(0), ["10.0.1.5:8080"]);
        assert!(of(1).is_empty(), "a UDP backend serves no TCP frontend");
    }

    #[test]
    fn get_names_the_service_its_frontends_and_backends() {
        let text = render_service(&web());
        assert!(
            text.starts_with("name:        default/web\ntype:        NodePort\n"),
            "{text}"
        );
        assert!(text.contains("affinity:    None"), "{text}");
        assert!(text.contains("  4    *:30080/TCP"), "{text}");
        let row = text
            .lines()
            .find(|l| l.contains("10.0.2.7:8080"))
            .expect("the backend's row");
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            [
                "10.0.2.7:8080",
                "ANY",
                "3",
                "terminating",
                "kino-node-2",
                "-"
            ]
        );
        let deleted = render_deleted(&web());
        assert!(
            deleted
                .starts_with("service default/web deleted: frontends 172.20.0.10:80/TCP (ID 2), "),
            "{deleted}"
        );
    }
}
