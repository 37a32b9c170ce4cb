//! The kino agent's local API (`kino.agent.v1` on its unix socket), as kino-cni uses it: one
//! call per invocation, bounded by the configured timeout, plus the conversions between the
//! CNI side ([`crate::spec`]) and the proto messages, and from the agent's failures to CNI
//! errors ([`crate::errors`]):
//!
//! | agent outcome | ADD | DEL | CHECK | GC | STATUS |
//! |---|---|---|---|---|---|
//! | not reachable (no socket, refused), no answer in time | 11 | 11 | 11 | 11 | 50 |
//! | `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `ABORTED`, `RESOURCE_EXHAUSTED`, `CANCELLED` | 11 | 11 | 11 | 11 | 50 |
//! | `INVALID_ARGUMENT`, `OUT_OF_RANGE`, `ALREADY_EXISTS` | 7 | 7 | 7 | 7 | 50 |
//! | `NOT_FOUND` | 7 | success | 100 | 999 | 50 |
//! | `FAILED_PRECONDITION` | 999 | 999 | 100 | 999 | 50 |
//! | anything else (`INTERNAL`, `UNIMPLEMENTED`, `UNKNOWN`, …) | 999 | 999 | 999 | 999 | 50 |
//!
//! Why: 11 ("try again later") is for conditions that clear up by themselves: the agent not
//! running yet, restarting, busy, a compare-and-swap race, or an exhausted pool (it clears as
//! pods are deleted; runtimes retry ADD anyway). DEL answers 11 rather than success when the
//! agent cannot be asked, because the endpoint (lxc, address, map entries) may still exist and
//! the runtime forgets the attachment after a successful DEL; an answered `NOT_FOUND` means
//! nothing is left, so DEL succeeds. STATUS has its own codes (50, or 51 when the agent reports
//! its datapath failing), whatever the cause. 100 is kino-cni's "the attachment is not as
//! `prevResult` says" for CHECK; 999 is libcni's "internal error".

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

use crate::errors::{CniError, ErrorCode};
use crate::spec::args::{AddParams, Attachment};
use crate::spec::result::{CniResult, Dns, Interface, IpConfig, Route};
use crate::spec::{CniEnv, Command, NetworkConfig};

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

impl AgentError {
    /// The CNI self for this failed call made for `command` (see the module's table).
    /// DEL's `NOT_FOUND` is not an self: callers treat it as success before calling this.
    pub fn to_cni_error(&self, command: Command) -> CniError {
        use tonic::Code;
        let socket = socket_target(&self.socket);
        let transient = match &self.failure {
            AgentFailure::Unreachable { .. } | AgentFailure::TimedOut { .. } => true,
            AgentFailure::Status { code, .. } => matches!(
                code,
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::ResourceExhausted
                    | Code::Cancelled
            ),
        };
        let verb = match command {
            Command::Add => "attach the container",
            Command::Del => "detach the container",
            Command::Check => "check the attachment",
            Command::Gc => "garbage-collect stale endpoints",
            Command::Status => "serve ADD requests",
            Command::Version => "report versions",
        };
        if command == Command::Status {
            let details = match self.failure {
                AgentFailure::Status { .. } => self.to_string(),
                _ => format!("{self}; {}", start_agent_hint(&socket)),
            };
            return CniError::new(
                ErrorCode::PluginNotAvailable,
                format!("kino-cni cannot {verb}: the kino agent is not available"),
                details,
            );
        }
        if let AgentFailure::Unreachable { .. } = self.failure {
            let then = if command == Command::Del {
                "; DEL is retried because the endpoint may still exist (its lxc, address and BPF map entries are only removed by the agent)"
            } else {
                ""
            };
            return CniError::new(
                ErrorCode::TryAgainLater,
                format!("kino-cni cannot {verb}: the kino agent is not running at {socket}"),
                format!("{self}; {}{then}", start_agent_hint(&socket)),
            );
        }
        let code = if transient {
            ErrorCode::TryAgainLater
        } else {
            match (command, self.code()) {
                (_, Some(Code::InvalidArgument | Code::OutOfRange | Code::AlreadyExists)) => {
                    ErrorCode::InvalidNetworkConfig
                }
                (Command::Add, Some(Code::NotFound)) => ErrorCode::InvalidNetworkConfig,
                (Command::Check, Some(Code::NotFound | Code::FailedPrecondition)) => {
                    ErrorCode::AttachmentMismatch
                }
                _ => ErrorCode::Internal,
            }
        };
        let msg = match code {
            ErrorCode::TryAgainLater => format!("kino-cni cannot {verb} now; try again later"),
            ErrorCode::InvalidNetworkConfig => {
                format!("the kino agent refused to {verb}: invalid request")
            }
            ErrorCode::AttachmentMismatch if self.code() == Some(Code::NotFound) => {
                "the attachment does not exist on the kino agent".to_owned()
            }
            ErrorCode::AttachmentMismatch => "the attachment is not as it was created".to_owned(),
            _ => format!("the kino agent failed to {verb}"),
        };
        CniError::new(code, msg, self.to_string())
    }
}

/// How to start the agent, or point kino-cni at it; part of every "cannot reach" error.
pub fn start_agent_hint(socket: &str) -> String {
    format!(
        "start kino-agent on this node (`kino-agent --socket {path}`; `kino status --agent-socket {path}` shows whether it is up), or set \"agentSocket\" in the network configuration to the socket it listens on",
        path = socket.strip_prefix("unix:").unwrap_or(socket)
    )
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
mod tests;
