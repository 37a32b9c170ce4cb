//! The services every layout of the run holds: S ClusterIP services, each with the same 10
//! backends (the backend pods of the world), on their own VIP, and the names kube-proxy
//! derives from them — `KUBE-SVC-`/`KUBE-SEP-` chains and nftables' `service-`/`endpoint-`
//! chains are hashes of the service port's name (sha256, base32, truncated), computed here
//! as pkg/proxy/iptables and pkg/proxy/nftables compute them so the tables read as
//! kube-proxy's own.

use std::net::{Ipv4Addr, SocketAddrV4};

/// One service port: `namespace/name:port_name`, its ClusterIP and port, its endpoints.
#[derive(Debug, Clone)]
pub struct ServicePort {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The service port's name.
    pub port_name: &'static str,
    /// ClusterIP.
    pub vip: Ipv4Addr,
    /// Service port.
    pub port: u16,
    /// Endpoints (pod IP:port).
    pub endpoints: Vec<SocketAddrV4>,
}

/// The namespace of every benchmark service.
pub const NAMESPACE: &str = "bench";
/// Every service's port.
pub const SERVICE_PORT: u16 = 80;
/// The backends' port (kino-rr servers listen on it).
pub const BACKEND_PORT: u16 = 8080;

impl ServicePort {
    /// kube-proxy's `ServicePortName.String()`: `ns/name:port`.
    pub fn port_name_string(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.name, self.port_name)
    }

    /// `KUBE-SVC-` + portProtoHash.
    pub fn svc_chain(&self) -> String {
        format!(
            "KUBE-SVC-{}",
            &hash_base32(&format!("{}tcp", self.port_name_string()))[..16]
        )
    }

    /// `KUBE-SEP-` + the endpoint's hash.
    pub fn sep_chain(&self, endpoint: &SocketAddrV4) -> String {
        format!(
            "KUBE-SEP-{}",
            &hash_base32(&format!("{}tcp{endpoint}", self.port_name_string()))[..16]
        )
    }

    /// nftables' `service-HASH-ns/name/tcp/port`.
    pub fn nft_service_chain(&self) -> String {
        let base = format!("{}/{}/tcp/{}", self.namespace, self.name, self.port_name);
        format!("service-{}-{base}", &hash_base32(&base)[..8])
    }

    /// nftables' `endpoint-HASH-ns/name/tcp/port__ip/port`.
    pub fn nft_endpoint_chain(&self, endpoint: &SocketAddrV4) -> String {
        let base = format!(
            "{}/{}/tcp/{}__{}/{}",
            self.namespace,
            self.name,
            self.port_name,
            endpoint.ip(),
            endpoint.port()
        );
        format!("endpoint-{}-{base}", &hash_base32(&base)[..8])
    }
}

/// `count` services `bench/svc-NNNNN` on VIPs 10.96.0.1, 10.96.0.2, … (kube-proxy's
/// default service CIDR 10.96.0.0/12), port 80, each with every one of `backends`.
pub fn services(count: usize, backends: &[Ipv4Addr]) -> Vec<ServicePort> {
    (0..count)
        .map(|i| ServicePort {
            namespace: NAMESPACE.to_owned(),
            name: format!("svc-{i:05}"),
            port_name: "http",
            vip: vip(i),
            port: SERVICE_PORT,
            endpoints: backends
                .iter()
                .map(|ip| SocketAddrV4::new(*ip, BACKEND_PORT))
                .collect(),
        })
        .collect()
}

/// The VIP of service `i` (10.96.0.0/12 holds a million).
pub fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i as u32)
}

/// base32 (RFC 4648 alphabet, as Go's `base32.StdEncoding`) of sha256(`text`).
fn hash_base32(text: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in digest.as_ref() {
        buffer = (buffer << 8) | u32::from(*byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_of_sha256_matches_go() {
        // Go: base32.StdEncoding.EncodeToString(sha256.Sum256([]byte(""))) begins so.
        assert!(hash_base32("").starts_with("4OYMIQUY7QOBJGX36TEJS35ZEQT24QPE"));
    }

    #[test]
    fn chain_names_have_kube_proxy_shapes() {
        let s = &services(2, &[Ipv4Addr::new(10, 244, 0, 10)])[1];
        assert_eq!(s.vip, Ipv4Addr::new(10, 96, 0, 2));
        assert_eq!(s.port_name_string(), "bench/svc-00001:http");
        assert_eq!(s.svc_chain().len(), "KUBE-SVC-".len() + 16);
        assert_ne!(s.svc_chain(), services(1, &[])[0].svc_chain());
        let sep = s.sep_chain(&s.endpoints[0]);
        assert!(sep.starts_with("KUBE-SEP-") && sep.len() <= 28, "{sep}");
        assert!(
            s.nft_endpoint_chain(&s.endpoints[0])
                .ends_with("-bench/svc-00001/tcp/http__10.244.0.10/8080")
        );
        assert!(s.nft_service_chain().starts_with("service-"));
    }
}
