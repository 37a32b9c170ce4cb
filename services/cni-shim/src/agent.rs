//! The kino agent's local API (`kino.agent.v1` on its unix socket), as kino-cni uses it: one
//! call per invocation, bounded by the configured timeout, plus the conversions between the
//! CNI side ([`crate::spec`]) and the proto messages.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kino_api::agent::agent_service_client::AgentServiceClient;
use kino_api::agent::{
    Attachment as ProtoAttachment, CheckEndpointRequest, CheckEndpointResponse,
    CreateEndpointRequest, CreateEndpointResponse, DeleteEndpointRequest, DeleteEndpointResponse,
    GcRequest, GcResponse, StatusRequest, StatusResponse, delete_endpoint_request,
};
use kino_api::types::{Label as ProtoLabel, Labels, PodRef};
use kino_service_kit::{ClientTlsArgs, TracedChannel};

use crate::spec::args::{AddParams, Attachment};
use crate::spec::result::{CniResult, Dns, Interface, IpConfig, Route};
use crate::spec::{CniEnv, NetworkConfig};

/// Where the agent is and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// The agent's unix socket.
    pub socket: PathBuf,
    /// Bound on connecting plus the call (also sent as the gRPC deadline).
    pub timeout: Duration,
}

/// Why a call to the agent failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentFailure {
    /// No connection: nothing listens on the socket, it is missing, or access is denied.
    Unreachable {
        /// The connection error.
        detail: String,
    },
    /// No answer within the timeout.
    TimedOut {
        /// The timeout.
        after: Duration,
    },
    /// The agent answered with a gRPC error.
    Status {
        /// The status code.
        code: tonic::Code,
        /// The agent's message.
        message: String,
    },
}

/// A failed call: which RPC, on which socket, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentError {
    /// The RPC, e.g. `CreateEndpoint`.
    pub rpc: &'static str,
    /// The agent's socket.
    pub socket: PathBuf,
    /// What went wrong.
    pub failure: AgentFailure,
}

impl AgentError {
    /// The gRPC code the agent answered with, if it answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match &self.failure {
            AgentFailure::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let socket = self.socket.display();
        match &self.failure {
            AgentFailure::Unreachable { detail } => {
                write!(f, "cannot reach the kino agent at unix:{socket}: {detail}")
            }
            AgentFailure::TimedOut { after } => write!(
                f,
                "the kino agent at unix:{socket} did not answer {} within {:.1}s",
                self.rpc,
                after.as_secs_f64()
            ),
            AgentFailure::Status { code, message } => write!(
                f,
                "the kino agent at unix:{socket} answered {} with {code:?}: {message}",
                self.rpc
            ),
        }
    }
}

impl Agent {
    /// The agent named by the network configuration.
    pub fn from_config(config: &NetworkConfig) -> Agent {
        Agent {
            socket: config.agent_socket.clone(),
            timeout: config.agent_timeout,
        }
    }

    /// CNI ADD.
    pub async fn create_endpoint(
        &self,
        request: CreateEndpointRequest,
    ) -> Result<CreateEndpointResponse, AgentError> {
        self.call(
            "CreateEndpoint",
            request,
            |mut client, request| async move { client.create_endpoint(request).await },
        )
        .await
    }

    /// CNI DEL.
    pub async fn delete_endpoint(
        &self,
        request: DeleteEndpointRequest,
    ) -> Result<DeleteEndpointResponse, AgentError> {
        self.call(
            "DeleteEndpoint",
            request,
            |mut client, request| async move { client.delete_endpoint(request).await },
        )
        .await
    }

    /// CNI CHECK.
    pub async fn check_endpoint(
        &self,
        request: CheckEndpointRequest,
    ) -> Result<CheckEndpointResponse, AgentError> {
        self.call("CheckEndpoint", request, |mut client, request| async move {
            client.check_endpoint(request).await
        })
        .await
    }

    /// CNI STATUS.
    pub async fn status(&self) -> Result<StatusResponse, AgentError> {
        self.call(
            "Status",
            StatusRequest {},
            |mut client, request| async move { client.status(request).await },
        )
        .await
    }

    /// CNI GC.
    pub async fn gc(&self, request: GcRequest) -> Result<GcResponse, AgentError> {
        self.call("Gc", request, |mut client, request| async move {
            client.gc(request).await
        })
        .await
    }

    /// Connects and makes one call, all within the timeout (also sent as the gRPC deadline,
    /// so the agent can give up at the same moment).
    async fn call<Req, Resp, Fut>(
        &self,
        rpc: &'static str,
        message: Req,
        call: impl FnOnce(AgentServiceClient<TracedChannel>, tonic::Request<Req>) -> Fut,
    ) -> Result<Resp, AgentError>
    where
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let error = |failure| AgentError {
            rpc,
            socket: self.socket.clone(),
            failure,
        };
        let target = format!("unix:{}", self.socket.display());
        let started = tokio::time::Instant::now();
        let attempt = async {
            let channel = kino_service_kit::connect(&target, &ClientTlsArgs::default())
                .await
                .map_err(|e| AgentFailure::Unreachable {
                    detail: match e {
                        kino_service_kit::ServiceError::Connect { detail, .. } => detail,
                        other => other.to_string(),
                    },
                })?;
            let mut request = tonic::Request::new(message);
            request.set_timeout(self.timeout);
            call(AgentServiceClient::new(channel), request)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| {
                    // tonic enforces the deadline it sent too, answering CANCELLED itself.
                    if status.code() == tonic::Code::Cancelled && started.elapsed() >= self.timeout
                    {
                        return AgentFailure::TimedOut {
                            after: self.timeout,
                        };
                    }
                    AgentFailure::Status {
                        code: status.code(),
                        message: status.message().to_owned(),
                    }
                })
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(failure)) => Err(error(failure)),
            Err(_) => Err(error(AgentFailure::TimedOut {
                after: self.timeout,
            })),
        }
    }
}

/// The socket as the agent's `--socket` flag and `agentSocket` write it.
pub fn socket_target(socket: &Path) -> String {
    format!("unix:{}", socket.display())
}

/// CreateEndpoint for an ADD with `env`, `config` and the attachment's parameters.
pub fn create_request(
    env: &CniEnv,
    config: &NetworkConfig,
    params: &AddParams,
) -> CreateEndpointRequest {
    CreateEndpointRequest {
        container_id: env.container_id.clone().unwrap_or_default(),
        netns_path: env.netns.clone().unwrap_or_default(),
        ifname: env.ifname.clone().unwrap_or_default(),
        pod: params.pod.as_ref().map(|(namespace, name)| PodRef {
            namespace: namespace.clone(),
            name: name.clone(),
        }),
        labels: (!params.labels.is_empty()).then(|| Labels {
            labels: params
                .labels
                .iter()
                .map(|label| ProtoLabel {
                    key: label.key.clone(),
                    value: label.value.clone(),
                    source: label.source.clone(),
                })
                .collect(),
        }),
        requested_ipv4: params.ipv4.map(|ip| ip.to_string()).unwrap_or_default(),
        requested_ipv6: params.ipv6.map(|ip| ip.to_string()).unwrap_or_default(),
        requested_mac: params.mac.clone().unwrap_or_default(),
        ipam_pool: config.ipam_pool.clone().unwrap_or_default(),
        cni_network_name: config.name.clone(),
        cni_args: params.cni_args.clone().into_iter().collect(),
        mtu: config.mtu.unwrap_or(0),
    }
}

/// DeleteEndpoint for a DEL: by attachment (container id + ifname).
pub fn delete_request(env: &CniEnv) -> DeleteEndpointRequest {
    DeleteEndpointRequest {
        target: Some(delete_endpoint_request::Target::Attachment(attachment(env))),
        netns_path: env.netns.clone().unwrap_or_default(),
    }
}

/// CheckEndpoint for a CHECK: the attachment and what `prev` says its pod interface holds.
pub fn check_request(env: &CniEnv, prev: &CniResult, interface: usize) -> CheckEndpointRequest {
    CheckEndpointRequest {
        attachment: Some(attachment(env)),
        netns_path: env.netns.clone().unwrap_or_default(),
        expected_addresses: prev
            .ips
            .iter()
            .filter(|ip| ip.interface == Some(interface))
            .map(|ip| ip.address.to_string())
            .collect(),
        expected_mac: prev.interfaces[interface].mac.clone().unwrap_or_default(),
    }
}

/// Gc with the runtime's valid attachments of the network `config` names (endpoints of other
/// networks are not candidates).
pub fn gc_request(config: &NetworkConfig, valid: &[Attachment]) -> GcRequest {
    GcRequest {
        valid_attachments: valid
            .iter()
            .map(|a| ProtoAttachment {
                container_id: a.container_id.clone(),
                ifname: a.ifname.clone(),
            })
            .collect(),
        dry_run: false,
        cni_network_name: config.name.clone(),
    }
}

fn attachment(env: &CniEnv) -> ProtoAttachment {
    ProtoAttachment {
        container_id: env.container_id.clone().unwrap_or_default(),
        ifname: env.ifname.clone().unwrap_or_default(),
    }
}

/// The CNI result in CreateEndpoint's answer; an error names what the agent got wrong.
pub fn result_from_response(response: &CreateEndpointResponse) -> Result<CniResult, String> {
    let non_empty = |text: &str| (!text.is_empty()).then(|| text.to_owned());
    let optional_ip = |text: &str, what: &str| -> Result<Option<IpAddr>, String> {
        non_empty(text)
            .map(|text| {
                text.parse()
                    .map_err(|_| format!("{what} {text:?} is not an IP address"))
            })
            .transpose()
    };
    if response.interfaces.is_empty() || response.ips.is_empty() {
        return Err(format!(
            "CreateEndpoint returned {} interfaces and {} addresses; a pod needs its interface and an address",
            response.interfaces.len(),
            response.ips.len()
        ));
    }
    let interfaces = response
        .interfaces
        .iter()
        .map(|i| Interface {
            name: i.name.clone(),
            mac: non_empty(&i.mac),
            mtu: (i.mtu != 0).then_some(i.mtu),
            sandbox: non_empty(&i.sandbox),
            socket_path: None,
            pci_id: None,
        })
        .collect();
    let ips = response
        .ips
        .iter()
        .map(|ip| {
            Ok(IpConfig {
                address: ip.address.parse()?,
                gateway: optional_ip(&ip.gateway, "gateway")?,
                interface: Some(ip.interface as usize),
            })
        })
        .collect::<Result<_, String>>()?;
    let routes = response
        .routes
        .iter()
        .map(|r| {
            Ok(Route {
                dst: r.destination.parse()?,
                gw: optional_ip(&r.gateway, "route gateway")?,
                mtu: None,
                advmss: None,
                priority: None,
                table: None,
                scope: None,
            })
        })
        .collect::<Result<_, String>>()?;
    let dns = response
        .dns
        .as_ref()
        .map(|dns| Dns {
            nameservers: dns.nameservers.clone(),
            domain: non_empty(&dns.domain),
            search: dns.search.clone(),
            options: dns.options.clone(),
        })
        .unwrap_or_default();
    let result = CniResult {
        interfaces,
        ips,
        routes,
        dns,
    };
    result.validate()?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use kino_api::agent::{CniDns, CniInterface, CniIpConfig, CniRoute};

    use super::*;
    use crate::spec::Command;
    use crate::spec::args::{CniArgs, Label};

    fn env(command: Command) -> CniEnv {
        CniEnv {
            command,
            container_id: Some("c0ffee".into()),
            netns: Some("/run/netns/pod1".into()),
            ifname: Some("eth0".into()),
            args: None,
            path: Some("/opt/cni/bin".into()),
        }
    }

    fn config() -> NetworkConfig {
        NetworkConfig::parse(
            br#"{"cniVersion":"1.1.0","name":"kino","type":"kino-cni","mtu":1400,"ipamPool":"blue"}"#,
        )
        .expect("valid")
    }

    fn response() -> CreateEndpointResponse {
        CreateEndpointResponse {
            endpoint: None,
            interfaces: vec![
                CniInterface {
                    name: "lxc0a1b2c3d4e5f".into(),
                    mac: "5e:00:00:00:00:01".into(),
                    sandbox: String::new(),
                    mtu: 1400,
                },
                CniInterface {
                    name: "eth0".into(),
                    mac: "0a:58:0a:00:01:17".into(),
                    sandbox: "/run/netns/pod1".into(),
                    mtu: 1400,
                },
            ],
            ips: vec![CniIpConfig {
                address: "10.0.1.23/32".into(),
                gateway: "10.0.1.1".into(),
                interface: 1,
            }],
            routes: vec![CniRoute {
                destination: "0.0.0.0/0".into(),
                gateway: "10.0.1.1".into(),
            }],
            dns: Some(CniDns::default()),
        }
    }

    #[test]
    fn create_request_carries_everything_the_runtime_gave() {
        let args = CniArgs::parse(Some("IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.0.1.9;FOO=bar"))
            .expect("args");
        let mut params = AddParams::new(&args, &serde_json::Map::new()).expect("params");
        params.labels = vec![Label {
            source: "container".into(),
            key: "app".into(),
            value: "web".into(),
        }];
        let request = create_request(&env(Command::Add), &config(), &params);
        assert_eq!(request.container_id, "c0ffee");
        assert_eq!(request.netns_path, "/run/netns/pod1");
        assert_eq!(request.ifname, "eth0");
        assert_eq!(
            request.pod,
            Some(PodRef {
                namespace: "default".into(),
                name: "web".into()
            })
        );
        let labels = request.labels.expect("labels").labels;
        assert_eq!(
            (
                labels[0].source.as_str(),
                labels[0].key.as_str(),
                labels[0].value.as_str()
            ),
            ("container", "app", "web")
        );
        assert_eq!(request.requested_ipv4, "10.0.1.9");
        assert_eq!(request.requested_ipv6, "");
        assert_eq!(request.requested_mac, "");
        assert_eq!(request.ipam_pool, "blue");
        assert_eq!(request.cni_network_name, "kino");
        assert_eq!(request.mtu, 1400);
        assert_eq!(request.cni_args.get("FOO").map(String::as_str), Some("bar"));

        let bare = create_request(&env(Command::Add), &config(), &AddParams::default());
        assert_eq!((bare.pod, bare.labels), (None, None));
    }

    #[test]
    fn delete_check_and_gc_requests_name_the_attachment() {
        let delete = delete_request(&env(Command::Del));
        assert_eq!(delete.netns_path, "/run/netns/pod1");
        match delete.target {
            Some(delete_endpoint_request::Target::Attachment(a)) => {
                assert_eq!(
                    (a.container_id.as_str(), a.ifname.as_str()),
                    ("c0ffee", "eth0")
                );
            }
            other => panic!("by attachment, got {other:?}"),
        }
        let mut prev = result_from_response(&response()).expect("valid");
        prev.ips.push(IpConfig {
            address: "192.168.0.2/24".parse().unwrap(),
            gateway: None,
            interface: Some(0),
        });
        let check = check_request(&env(Command::Check), &prev, 1);
        assert_eq!(check.expected_addresses, ["10.0.1.23/32"], "only eth0's");
        assert_eq!(check.expected_mac, "0a:58:0a:00:01:17");
        assert_eq!(check.attachment.expect("attachment").container_id, "c0ffee");
        let gc = gc_request(
            &config(),
            &[Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into(),
            }],
        );
        assert_eq!(gc.valid_attachments.len(), 1);
        assert_eq!(gc.cni_network_name, "kino");
        assert!(!gc.dry_run);
    }

    #[test]
    fn response_becomes_the_cni_result() {
        let result = result_from_response(&response()).expect("valid");
        assert_eq!(result.interfaces.len(), 2);
        assert_eq!(result.interfaces[0].sandbox, None, "host side");
        assert_eq!(result.interfaces[1].mtu, Some(1400));
        assert_eq!(result.ips[0].interface, Some(1));
        assert_eq!(result.ips[0].address.to_string(), "10.0.1.23/32");
        assert_eq!(result.routes[0].gw, Some("10.0.1.1".parse().unwrap()));
        assert!(result.dns.is_empty());
    }

    #[test]
    fn add_prints_exactly_this_in_1_1_0_and_0_4_0() {
        use crate::spec::CniVersion;
        let result = result_from_response(&response()).expect("valid");
        assert_eq!(
            result.to_json(CniVersion::V1_1_0),
            r#"{"cniVersion":"1.1.0","interfaces":[{"name":"lxc0a1b2c3d4e5f","mac":"5e:00:00:00:00:01","mtu":1400},{"name":"eth0","mac":"0a:58:0a:00:01:17","mtu":1400,"sandbox":"/run/netns/pod1"}],"ips":[{"address":"10.0.1.23/32","gateway":"10.0.1.1","interface":1}],"routes":[{"dst":"0.0.0.0/0","gw":"10.0.1.1"}]}"#
        );
        assert_eq!(
            result.to_json(CniVersion::V0_4_0),
            r#"{"cniVersion":"0.4.0","interfaces":[{"name":"lxc0a1b2c3d4e5f","mac":"5e:00:00:00:00:01"},{"name":"eth0","mac":"0a:58:0a:00:01:17","sandbox":"/run/netns/pod1"}],"ips":[{"version":"4","address":"10.0.1.23/32","gateway":"10.0.1.1","interface":1}],"routes":[{"dst":"0.0.0.0/0","gw":"10.0.1.1"}]}"#
        );
    }

    #[test]
    fn malformed_responses_are_named() {
        for (change, needle) in [
            (
                Box::new(|r: &mut CreateEndpointResponse| r.ips.clear()) as Box<dyn Fn(&mut _)>,
                "0 addresses",
            ),
            (
                Box::new(|r: &mut CreateEndpointResponse| r.ips[0].address = "10.0.1.23".into()),
                "ADDRESS/PREFIX",
            ),
            (
                Box::new(|r: &mut CreateEndpointResponse| r.ips[0].interface = 5),
                "only 2 interfaces",
            ),
            (
                Box::new(|r: &mut CreateEndpointResponse| r.routes[0].gateway = "gw".into()),
                "route gateway",
            ),
        ] {
            let mut response = response();
            change(&mut response);
            let error = result_from_response(&response).expect_err(needle);
            assert!(error.contains(needle), "{needle}: {error}");
        }
    }

    #[test]
    fn errors_name_the_socket_and_rpc() {
        let error = AgentError {
            rpc: "CreateEndpoint",
            socket: "/run/kino/agent.sock".into(),
            failure: AgentFailure::TimedOut {
                after: Duration::from_secs(30),
            },
        };
        assert_eq!(
            error.to_string(),
            "the kino agent at unix:/run/kino/agent.sock did not answer CreateEndpoint within 30.0s"
        );
        assert_eq!(error.code(), None);
        let error = AgentError {
            failure: AgentFailure::Status {
                code: tonic::Code::NotFound,
                message: "no endpoint".into(),
            },
            ..error
        };
        assert_eq!(error.code(), Some(tonic::Code::NotFound));
        assert!(
            error.to_string().contains("NotFound: no endpoint"),
            "{error}"
        );
        assert_eq!(socket_target(Path::new("/x.sock")), "unix:/x.sock");
    }

    #[tokio::test]
    async fn a_missing_socket_is_unreachable_and_a_silent_one_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = Agent {
            socket: dir.path().join("absent.sock"),
            timeout: Duration::from_secs(5),
        };
        let error = agent.status().await.expect_err("nothing there");
        assert!(
            matches!(&error.failure, AgentFailure::Unreachable { detail } if detail.contains("No such file")),
            "{error:?}"
        );
        // Accepts connections but never speaks HTTP/2.
        let path = dir.path().join("silent.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let _held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let agent = Agent {
            socket: path,
            timeout: Duration::from_millis(300),
        };
        let error = agent.status().await.expect_err("silent");
        assert_eq!(
            error.failure,
            AgentFailure::TimedOut {
                after: Duration::from_millis(300)
            }
        );
    }
}
