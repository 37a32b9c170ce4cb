//! The command-line spellings of `kino service`: frontends `VIP:PORT[/PROTO][,name=PORT]`
//! (`172.20.0.10:80/tcp`, `[fd00:ffff::a]:53/udp`), backends
//! `IP:PORT[/PROTO][,weight=N][,terminating][,name=PORT]`, backend references `IP:PORT`
//! and affinity timeouts (`3h`, `30m`, `10800s`, `10800`). Each is a clap value parser, so
//! a typo is a usage error naming the flag before anything is sent.

use std::net::SocketAddr;
use std::time::Duration;

use kino_api::service as pb;

/// A frontend as given: socket, protocol, port name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendArg {
    /// The VIP (or external IP) and port.
    pub socket: SocketAddr,
    /// Its protocol.
    pub protocol: pb::Protocol,
    /// The service port it serves ("" when not named).
    pub port_name: String,
}

/// A backend as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendArg {
    /// Address and port.
    pub socket: SocketAddr,
    /// Its protocol, when given.
    pub protocol: pb::Protocol,
    /// Weight (1 unless given).
    pub weight: u32,
    /// Takes no new connections.
    pub terminating: bool,
    /// The service port it serves.
    pub port_name: String,
}

impl BackendArg {
    /// As the API carries it.
    pub fn to_proto(&self) -> pb::Backend {
        pb::Backend {
            address: self.socket.ip().to_string(),
            port: u32::from(self.socket.port()),
            protocol: self.protocol as i32,
            port_name: self.port_name.clone(),
            weight: self.weight,
            state: if self.terminating {
                pb::BackendState::Terminating
            } else {
                pb::BackendState::Active
            } as i32,
            node_name: String::new(),
        }
    }
}

/// `ADDR:PORT[/PROTO]` → socket and protocol (UNSPECIFIED when not given).
fn socket_and_protocol(text: &str) -> Result<(SocketAddr, pb::Protocol), String> {
    let (socket, protocol) = match text.rsplit_once('/') {
        Some((socket, protocol)) => (socket, protocol_of(protocol)?),
        None => (text, pb::Protocol::Unspecified),
    };
    let socket = socket_of(socket)?;
    Ok((socket, protocol))
}

/// `IP:PORT` or `[IPv6]:PORT`, port 1..65535.
pub fn socket_of(text: &str) -> Result<SocketAddr, String> {
    let socket: SocketAddr = text.parse().map_err(|_| {
        format!("{text:?} is not IP:PORT (write 172.20.0.10:80, or [fd00:ffff::a]:80 for IPv6)")
    })?;
    if socket.port() == 0 {
        return Err(format!("{text:?}: the port must be 1..65535"));
    }
    Ok(socket)
}

fn protocol_of(text: &str) -> Result<pb::Protocol, String> {
    match text.to_ascii_lowercase().as_str() {
        "tcp" => Ok(pb::Protocol::Tcp),
        "udp" => Ok(pb::Protocol::Udp),
        _ => Err(format!("{text:?} is not a protocol: tcp or udp")),
    }
}

/// `key=value` options (a bare `key` has the value "").
type Options<'a> = Vec<(&'a str, &'a str)>;

/// The `,key=value` options after the first part; each must be one of `known`.
fn options<'a>(text: &'a str, known: &[&str]) -> Result<(&'a str, Options<'a>), String> {
    let mut parts = text.split(',');
    let first = parts.next().unwrap_or_default();
    let mut options = Vec::new();
    for part in parts {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        if !known.contains(&key) {
            return Err(format!(
                "unknown option {part:?} in {text:?}; options: {}",
                known.join(", ")
            ));
        }
        options.push((key, value));
    }
    Ok((first, options))
}

/// `VIP:PORT[/PROTO][,name=PORT_NAME]`; TCP unless a protocol is given.
pub fn parse_frontend(text: &str) -> Result<FrontendArg, String> {
    let (first, options) = options(text, &["name"])?;
    let (socket, protocol) = socket_and_protocol(first)?;
    let protocol = match protocol {
        pb::Protocol::Unspecified => pb::Protocol::Tcp,
        given => given,
    };
    let port_name = options
        .iter()
        .find(|(k, _)| *k == "name")
        .map(|(_, v)| v.to_string())
        .unwrap_or_default();
    Ok(FrontendArg {
        socket,
        protocol,
        port_name,
    })
}

/// `IP:PORT[/PROTO][,weight=N][,terminating][,active][,name=PORT_NAME]`.
pub fn parse_backend(text: &str) -> Result<BackendArg, String> {
    let (first, options) = options(text, &["weight", "terminating", "active", "name"])?;
    let (socket, protocol) = socket_and_protocol(first)?;
    let mut backend = BackendArg {
        socket,
        protocol,
        weight: 1,
        terminating: false,
        port_name: String::new(),
    };
    for (key, value) in options {
        match key {
            "weight" => {
                backend.weight = value
                    .parse()
                    .ok()
                    .filter(|w| (1..=65535).contains(w))
                    .ok_or_else(|| format!("weight={value:?} in {text:?}: give 1..65535"))?;
            }
            "terminating" => backend.terminating = true,
            "active" => backend.terminating = false,
            _ => backend.port_name = value.to_owned(),
        }
    }
    Ok(backend)
}

/// A NodePort, 1..65535 (the server checks its range).
pub fn parse_node_port(text: &str) -> Result<u16, String> {
    text.parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{text:?} is not a port (1..65535)"))
}

/// `3h`, `30m`, `10800s` or `10800`: whole seconds, 1 s to a day.
pub fn parse_affinity_timeout(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a timeout: write e.g. 3h, 30m or 10800s (1s to 24h)");
    let (number, scale) = match text.char_indices().last() {
        Some((i, 'h')) => (&text[..i], 3600),
        Some((i, 'm')) => (&text[..i], 60),
        Some((i, 's')) => (&text[..i], 1),
        _ => (text, 1),
    };
    let seconds: u64 = number.parse().map_err(|_| bad())?;
    let seconds = seconds.checked_mul(scale).ok_or_else(bad)?;
    if !(1..=86400).contains(&seconds) {
        return Err(bad());
    }
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontends_of_both_families_with_a_port_name() {
        let f = parse_frontend("172.20.0.10:80/tcp").unwrap();
        assert_eq!(f.socket.to_string(), "172.20.0.10:80");
        assert_eq!(f.protocol, pb::Protocol::Tcp);
        let f = parse_frontend("[fd00:ffff::a]:53/UDP,name=dns").unwrap();
        assert_eq!(f.socket.ip().to_string(), "fd00:ffff::a");
        assert_eq!(
            (f.protocol, f.port_name.as_str()),
            (pb::Protocol::Udp, "dns")
        );
        assert_eq!(
            parse_frontend("172.20.0.10:80").unwrap().protocol,
            pb::Protocol::Tcp,
            "TCP by default"
        );
        for bad in [
            "172.20.0.10",
            "172.20.0.10:80/sctp",
            "fd00::a:80",
            "172.20.0.10:0",
            "172.20.0.10:80,weight=2",
            "web:80",
        ] {
            assert!(parse_frontend(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backends_with_weight_state_and_port_name() {
        let b = parse_backend("10.0.1.5:8080").unwrap();
        assert_eq!(
            (b.weight, b.terminating, b.protocol),
            (1, false, pb::Protocol::Unspecified)
        );
        let b = parse_backend("[fd00::105]:8080/tcp,weight=3,terminating,name=http").unwrap();
        assert_eq!(b.socket.to_string(), "[fd00::105]:8080");
        assert_eq!((b.weight, b.terminating), (3, true));
        let proto = b.to_proto();
        assert_eq!(proto.state(), pb::BackendState::Terminating);
        assert_eq!(proto.port_name, "http");
        assert_eq!(proto.protocol(), pb::Protocol::Tcp);
        for bad in [
            "10.0.1.5:8080,weight=0",
            "10.0.1.5:8080,weight=70000",
            "10.0.1.5:8080,heavy",
            "10.0.1.5",
        ] {
            let error = parse_backend(bad).unwrap_err();
            assert!(error.contains(bad), "{bad}: {error}");
        }
    }

    #[test]
    fn timeouts_and_node_ports() {
        assert_eq!(parse_affinity_timeout("3h"), Ok(Duration::from_secs(10800)));
        assert_eq!(parse_affinity_timeout("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(
            parse_affinity_timeout("10800s"),
            Ok(Duration::from_secs(10800))
        );
        assert_eq!(parse_affinity_timeout("60"), Ok(Duration::from_secs(60)));
        for bad in ["0s", "25h", "1.5h", "", "forever"] {
            assert!(parse_affinity_timeout(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_node_port("30080"), Ok(30080));
        assert!(parse_node_port("0").is_err());
        assert!(parse_node_port("70000").is_err());
    }
}
