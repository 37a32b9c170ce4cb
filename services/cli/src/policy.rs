//! `kino policy import|validate|get|list|delete|trace`: network policies in
//! kino-policy-compiler (`kino.policy.v1`). Tables and summaries for people, `-o json`
//! shaped like the API's responses, `-o yaml` (get, list) the documents as imported.

mod render;
mod size;
mod trace;
mod wait;

use std::io::Read as _;
use std::process::ExitCode;

use futures::StreamExt as _;
use kino_api::policy as pb;
use kino_service_kit::TracedChannel;
use pb::policy_service_client::PolicyServiceClient;

pub use render::{
    ListedPolicy, error_text, kind_text, policies_yaml, policy_yaml, render_import, render_list,
    render_policy, render_validation, selector_text, selects_text,
};
pub use trace::{PeerArg, PortArg, ResolvedPeer, TraceDirection, pod_peer};
pub use wait::{WaitError, endpoint_text, is_realized};

use crate::compiler::{CompilerCallError, CompilerTarget, call, connect};
use crate::duration::parse_duration;
use crate::proto_json;

/// How a command prints its result (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Tables and summaries for people.
    Table,
    /// The API's response as proto3 JSON, for scripts.
    Json,
    /// The policy documents as imported (`kino policy get` and `list` only).
    Yaml,
}

/// `kino policy …`.
#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Debug, clap::Subcommand)]
enum PolicyCommand {
    /// Store the policies of a YAML or JSON file (one or many documents; `-` reads stdin).
    /// All or nothing: an invalid document stores nothing and every error is printed with
    /// its field path.
    Import {
        /// The file, or `-` for standard input.
        file: String,
        /// Namespace of documents without metadata.namespace (default: `default`).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Check policy documents without storing anything; exit status 1 if any is invalid.
    Validate {
        /// The file, or `-` for standard input.
        file: String,
        /// Namespace of documents without metadata.namespace (default: `default`).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
    },
    /// One policy: a summary of its rules (`-o yaml`: the document as imported).
    Get {
        /// NAMESPACE/NAME, NAME (in --namespace, else `default`) or /NAME (cluster-wide).
        #[arg(value_name = "POLICY", value_parser = PolicyName::parse)]
        name: PolicyName,
        /// Namespace of a NAME given without one.
        #[arg(long, short = 'n')]
        namespace: Option<String>,
    },
    /// Stored policies: NAMESPACE NAME KIND SELECTS REVISION.
    List {
        /// Only this namespace.
        #[arg(long, short = 'n')]
        namespace: Option<String>,
    },
    /// Delete one policy.
    Delete {
        /// NAMESPACE/NAME, NAME (in --namespace, else `default`) or /NAME (cluster-wide).
        #[arg(value_name = "POLICY", value_parser = PolicyName::parse)]
        name: PolicyName,
        /// Namespace of a NAME given without one.
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// The verdict for a flow and the rules that produce it (as `cilium policy trace`).
    Trace {
        /// The source: labels (app=lb,k8s:env=prod), NAMESPACE/POD (the agent's endpoint,
        /// else the labels container:namespace=NS,container:pod=POD), an identity or an IP.
        #[arg(long, short = 's', value_name = "PEER", value_parser = PeerArg::parse)]
        src: PeerArg,
        /// The destination, given like --src.
        #[arg(long, short = 'd', value_name = "PEER", value_parser = PeerArg::parse)]
        dst: PeerArg,
        /// Destination port and protocol: 80/tcp, 53/udp, 80 (TCP), icmp. Without it only
        /// rules without ports match (an L3 question).
        #[arg(long, value_name = "PORT/PROTO", value_parser = PortArg::parse)]
        dport: Option<PortArg>,
        /// Which policy decides: both (egress at the source, then ingress at the
        /// destination), ingress or egress.
        #[arg(long, value_enum, default_value_t = TraceDirection::Both)]
        direction: TraceDirection,
    },
}

/// `--wait` and `--wait-timeout` of `import` and `delete`.
#[derive(Debug, Clone, clap::Args)]
pub struct WaitArgs {
    /// Return only once every endpoint the policies select (for delete: selected before
    /// it) enforces the change, as the agents report it; exit status 1 after
    /// --wait-timeout, naming the endpoints that did not catch up.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, e.g. 30s or 500ms (as `kubectl wait --timeout`).
    #[arg(long, default_value = "30s", value_parser = parse_duration, requires = "wait")]
    wait_timeout: std::time::Duration,
}

/// A policy named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyName {
    /// Some("") for a cluster-wide policy (`/NAME`); None when only NAME was given.
    pub namespace: Option<String>,
    /// The name.
    pub name: String,
}

impl PolicyName {
    /// Parses `NAMESPACE/NAME`, `/NAME` or `NAME`.
    pub fn parse(text: &str) -> Result<PolicyName, String> {
        let text = text.trim();
        let (namespace, name) = match text.split_once('/') {
            Some((namespace, name)) => (Some(namespace.to_owned()), name),
            None => (None, text),
        };
        if name.is_empty() || name.contains('/') {
            return Err(format!(
                "{text:?} is not a policy: write NAMESPACE/NAME, NAME or /NAME (cluster-wide)"
            ));
        }
        Ok(PolicyName {
            namespace,
            name: name.to_owned(),
        })
    }

    /// The policy, with `--namespace` (else `default`) for a bare NAME.
    pub fn to_ref(&self, namespace: Option<&str>) -> pb::PolicyRef {
        pb::PolicyRef {
            namespace: self
                .namespace
                .as_deref()
                .or(namespace)
                .unwrap_or("default")
                .to_owned(),
            name: self.name.clone(),
        }
    }
}

/// What `kino policy` needs besides its arguments.
#[derive(Debug, Clone, Copy)]
pub struct PolicyContext<'a> {
    /// kino-policy-compiler.
    pub compiler: CompilerTarget<'a>,
    /// The agent's socket (`kino policy trace` resolves pods through it).
    pub agent_socket: &'a str,
    /// The datastore-gateway (`kino policy import` asks it for its record size limit when a
    /// document is past the default).
    pub datastore: &'a str,
}

/// Why a `kino policy` command failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyCliError {
    /// The compiler could not be reached or refused the call.
    #[error(transparent)]
    Compiler(#[from] CompilerCallError),
    /// The input file could not be read.
    #[error("cannot read {file}: {detail}")]
    Read {
        /// The file (`-` for standard input).
        file: String,
        /// Why.
        detail: String,
    },
    /// The documents are invalid: nothing was stored.
    #[error("kino-policy-compiler at {target} rejected {file}: {}", indent_lines(.message))]
    Rejected {
        /// The compiler's address.
        target: String,
        /// The file.
        file: String,
        /// The compiler's message: every error with its path.
        message: String,
    },
    /// No such policy.
    #[error("{message}{hint}")]
    NotFound {
        /// The compiler's message.
        message: String,
        /// Where a policy of that name does exist.
        hint: String,
    },
    /// The file is too big to import; nothing was sent.
    #[error(transparent)]
    TooLarge(#[from] size::TooLarge),
    /// `--wait` did not see the change enforced.
    #[error(transparent)]
    Wait(#[from] WaitError),
    /// This output format does not apply to the command.
    #[error(
        "-o yaml prints policy documents: use it with `kino policy get` or `kino policy list`; -o json prints any command's API response"
    )]
    YamlUnsupported,
}

/// Every line after the first indented by two spaces (multi-line compiler messages).
fn indent_lines(message: &str) -> String {
    message.lines().collect::<Vec<_>>().join("\n  ")
}

/// What a command prints, and whether it succeeded.
#[derive(Debug, Default)]
pub struct Printed {
    /// Standard output.
    pub stdout: String,
    /// Standard error (notes beside JSON).
    pub stderr: String,
    /// Exit status 0?
    pub success: bool,
}

impl Printed {
    fn ok(stdout: String) -> Printed {
        Printed {
            stdout,
            stderr: String::new(),
            success: true,
        }
    }
}

/// Runs `kino policy …`; prints the result or the error. Exit status 1 on failure (and
/// on invalid documents).
pub async fn execute(
    args: &PolicyArgs,
    context: PolicyContext<'_>,
    format: OutputFormat,
) -> ExitCode {
    match run(&args.command, context, format).await {
        Ok(printed) => {
            crate::stdout::print(&printed.stdout);
            eprint!("{}", printed.stderr);
            if printed.success {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            match error {
                PolicyCliError::YamlUnsupported => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// Adds the outcome of a wait to what is printed: the line after the table (beside JSON:
/// on standard error, so the JSON stays the API's response).
fn note_waited(
    printed: &mut Printed,
    format: OutputFormat,
    outcome: Result<(pb::GetPolicyRealizationResponse, std::time::Duration), WaitError>,
) -> Result<(), PolicyCliError> {
    match outcome {
        Ok((response, waited)) => {
            let line = wait::realized_text(&response, waited);
            match format {
                OutputFormat::Json => printed.stderr.push_str(&line),
                _ => printed.stdout.push_str(&line),
            }
            Ok(())
        }
        Err(error) => {
            // What was stored is still shown: the change is made, only not yet enforced.
            print!("{}", printed.stdout);
            Err(error.into())
        }
    }
}

fn read_documents(file: &str) -> Result<String, PolicyCliError> {
    let read_error = |e: std::io::Error| PolicyCliError::Read {
        file: file.to_owned(),
        detail: e.to_string(),
    };
    if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(read_error)?;
        Ok(text)
    } else {
        std::fs::read_to_string(file).map_err(read_error)
    }
}

fn shown_file(file: &str) -> &str {
    if file == "-" { "standard input" } else { file }
}

async fn run(
    command: &PolicyCommand,
    context: PolicyContext<'_>,
    format: OutputFormat,
) -> Result<Printed, PolicyCliError> {
    let yaml_ok = matches!(
        command,
        PolicyCommand::Get { .. } | PolicyCommand::List { .. }
    );
    if format == OutputFormat::Yaml && !yaml_ok {
        return Err(PolicyCliError::YamlUnsupported);
    }
    let target = context.compiler;
    match command {
        PolicyCommand::Import {
            file,
            namespace,
            wait,
        } => {
            let documents = read_documents(file)?;
            size::check(&documents, shown_file(file), context.datastore, target.tls).await?;
            let client = connect(target, "ImportPolicies").await?;
            let request = pb::ImportPoliciesRequest {
                documents,
                default_namespace: namespace.clone().unwrap_or_default(),
            };
            let response = call(target, &client, "ImportPolicies", |mut c| async move {
                c.import_policies(request).await
            })
            .await
            .map_err(|error| match error.code() {
                Some(tonic::Code::InvalidArgument) => PolicyCliError::Rejected {
                    target: error.target.clone(),
                    file: shown_file(file).to_owned(),
                    message: error.message().unwrap_or_default().to_owned(),
                },
                _ => error.into(),
            })?;
            let mut printed = Printed::ok(match format {
                OutputFormat::Json => proto_json::to_string(&response),
                _ => render_import(&response),
            });
            if wait.wait && !response.policies.is_empty() {
                let request = pb::GetPolicyRealizationRequest {
                    policies: response
                        .policies
                        .iter()
                        .filter_map(|p| p.policy.clone())
                        .collect(),
                    identities: Vec::new(),
                    revision: response.revision,
                };
                let done = wait::wait_realized(target, &client, request, wait.wait_timeout);
                note_waited(&mut printed, format, done.await)?;
            }
            Ok(printed)
        }
        PolicyCommand::Validate { file, namespace } => {
            let documents = read_documents(file)?;
            size::check(&documents, shown_file(file), context.datastore, target.tls).await?;
            let client = connect(target, "ValidatePolicies").await?;
            let request = pb::ValidatePoliciesRequest {
                documents,
                default_namespace: namespace.clone().unwrap_or_default(),
            };
            let response = call(target, &client, "ValidatePolicies", |mut c| async move {
                c.validate_policies(request).await
            })
            .await?;
            Ok(Printed {
                success: response.errors.is_empty(),
                stdout: match format {
                    OutputFormat::Json => proto_json::to_string(&response),
                    _ => render_validation(shown_file(file), &response),
                },
                stderr: String::new(),
            })
        }
        PolicyCommand::Get { name, namespace } => {
            let policy_ref = name.to_ref(namespace.as_deref());
            let client = connect(target, "GetPolicy").await?;
            let request = pb::GetPolicyRequest {
                policy: Some(policy_ref.clone()),
            };
            let response = call(target, &client, "GetPolicy", |mut c| async move {
                c.get_policy(request).await
            })
            .await;
            let response = not_found_with_hint(target, &client, name, response).await?;
            let stored = response.policy.clone().unwrap_or_default();
            Ok(Printed::ok(match format {
                OutputFormat::Json => proto_json::to_string(&response),
                OutputFormat::Yaml => policy_yaml(&stored),
                OutputFormat::Table => render_policy(&stored, response.revision),
            }))
        }
        PolicyCommand::List { namespace } => {
            let client = connect(target, "ListPolicies").await?;
            let response = list_all(target, &client, namespace.as_deref().unwrap_or("")).await?;
            match format {
                OutputFormat::Json => Ok(Printed::ok(proto_json::to_string(&response))),
                OutputFormat::Yaml => {
                    let listed: Vec<ListedPolicy> = response
                        .policies
                        .into_iter()
                        .map(|policy| ListedPolicy {
                            policy,
                            revision: None,
                        })
                        .collect();
                    Ok(Printed::ok(policies_yaml(&listed)))
                }
                OutputFormat::Table => {
                    let listed = with_revisions(target, &client, response.policies).await;
                    Ok(Printed::ok(render_list(&listed)))
                }
            }
        }
        PolicyCommand::Delete {
            name,
            namespace,
            wait,
        } => {
            let policy_ref = name.to_ref(namespace.as_deref());
            let client = connect(target, "DeletePolicy").await?;
            // The endpoints it selects, asked before it is gone: those are the ones to
            // wait for.
            let selected = if wait.wait {
                let asked = pb::GetPolicyRealizationRequest {
                    policies: vec![policy_ref.clone()],
                    ..Default::default()
                };
                let before = call(
                    target,
                    &client,
                    "GetPolicyRealization",
                    |mut c| async move { c.get_policy_realization(asked).await },
                )
                .await?;
                let mut identities: Vec<u32> =
                    before.endpoints.iter().map(|e| e.identity).collect();
                identities.sort_unstable();
                identities.dedup();
                Some(identities)
            } else {
                None
            };
            let request = pb::DeletePolicyRequest {
                policy: Some(policy_ref.clone()),
            };
            let response = call(target, &client, "DeletePolicy", |mut c| async move {
                c.delete_policy(request).await
            })
            .await;
            let response = not_found_with_hint(target, &client, name, response).await?;
            let mut printed = Printed::ok(match format {
                OutputFormat::Json => proto_json::to_string(&response),
                _ => render::render_delete(
                    &response.policy.clone().unwrap_or_default(),
                    &render::ref_text(&policy_ref.namespace, &policy_ref.name),
                    response.revision,
                ),
            });
            if let Some(identities) = selected {
                // The deleted policy selects nothing any more; naming it keeps the request
                // from meaning "every endpoint" when it selected none.
                let request = pb::GetPolicyRealizationRequest {
                    policies: vec![policy_ref.clone()],
                    identities,
                    revision: response.revision,
                };
                let done = wait::wait_realized(target, &client, request, wait.wait_timeout);
                note_waited(&mut printed, format, done.await)?;
            }
            Ok(printed)
        }
        PolicyCommand::Trace {
            src,
            dst,
            dport,
            direction,
        } => {
            let timeout = target.timeout;
            let (src, dst) = futures::join!(
                trace::resolve(src, context.agent_socket, timeout),
                trace::resolve(dst, context.agent_socket, timeout)
            );
            let client = connect(target, "TracePolicy").await?;
            let request = trace::request(&src, &dst, *dport);
            let response = call(target, &client, "TracePolicy", |mut c| async move {
                c.trace_policy(request).await
            })
            .await?;
            Ok(match format {
                OutputFormat::Json => Printed {
                    stdout: proto_json::to_string(&response),
                    stderr: [&src.note, &dst.note]
                        .into_iter()
                        .flatten()
                        .map(|note| format!("note: {note}\n"))
                        .collect(),
                    success: true,
                },
                _ => Printed::ok(trace::render(&response, &src, &dst, *dport, *direction)),
            })
        }
    }
}

/// Every page of ListPolicies as one response.
async fn list_all(
    target: CompilerTarget<'_>,
    client: &PolicyServiceClient<TracedChannel>,
    namespace: &str,
) -> Result<pb::ListPoliciesResponse, CompilerCallError> {
    let mut all = pb::ListPoliciesResponse::default();
    loop {
        let request = pb::ListPoliciesRequest {
            namespace: namespace.to_owned(),
            kind: pb::PolicyKind::Unspecified as i32,
            page_size: 5000,
            page_token: all.next_page_token.clone(),
        };
        let page = call(target, client, "ListPolicies", |mut c| async move {
            c.list_policies(request).await
        })
        .await?;
        all.policies.extend(page.policies);
        all.revision = page.revision;
        all.next_page_token = page.next_page_token;
        if all.next_page_token.is_empty() {
            return Ok(all);
        }
    }
}

/// Each policy with its own revision (GetPolicy, a few at a time); `-` for one deleted
/// meanwhile or that the compiler could not give.
async fn with_revisions(
    target: CompilerTarget<'_>,
    client: &PolicyServiceClient<TracedChannel>,
    policies: Vec<pb::Policy>,
) -> Vec<ListedPolicy> {
    futures::stream::iter(policies)
        .map(|policy| async move {
            let request = pb::GetPolicyRequest {
                policy: Some(pb::PolicyRef {
                    namespace: policy.namespace.clone(),
                    name: policy.name.clone(),
                }),
            };
            let revision = call(target, client, "GetPolicy", |mut c| async move {
                c.get_policy(request).await
            })
            .await
            .ok()
            .map(|r| r.revision);
            ListedPolicy { policy, revision }
        })
        .buffered(16)
        .collect()
        .await
}

/// A NOT_FOUND answer, with the namespaces where a policy of that name does exist.
async fn not_found_with_hint<T>(
    target: CompilerTarget<'_>,
    client: &PolicyServiceClient<TracedChannel>,
    policy: &PolicyName,
    result: Result<T, CompilerCallError>,
) -> Result<T, PolicyCliError> {
    let error = match result {
        Err(error) if error.code() == Some(tonic::Code::NotFound) => error,
        other => return other.map_err(PolicyCliError::from),
    };
    let others: Vec<String> = list_all(target, client, "")
        .await
        .map(|all| {
            all.policies
                .iter()
                .filter(|p| p.name == policy.name)
                .map(|p| render::ref_text(&p.namespace, &p.name))
                .collect()
        })
        .unwrap_or_default();
    let hint = if others.is_empty() {
        "; `kino policy list` shows the stored policies".to_owned()
    } else {
        format!(
            "; policies named {:?}: {} (give NAMESPACE/NAME, /NAME for cluster-wide)",
            policy.name,
            others.join(", ")
        )
    };
    Err(PolicyCliError::NotFound {
        message: error.message().unwrap_or_default().to_owned(),
        hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_parse_with_or_without_namespace() {
        let named = PolicyName::parse("shop/web").unwrap();
        assert_eq!(named.to_ref(Some("other")).namespace, "shop");
        let bare = PolicyName::parse("web").unwrap();
        assert_eq!(bare.to_ref(None).namespace, "default");
        assert_eq!(bare.to_ref(Some("shop")).namespace, "shop");
        let cluster = PolicyName::parse("/allow-dns").unwrap();
        assert_eq!(cluster.to_ref(Some("shop")).namespace, "");
        assert_eq!(cluster.to_ref(None).name, "allow-dns");
        for bad in ["", "shop/", "a/b/c"] {
            assert!(PolicyName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rejected_documents_list_every_error_indented() {
        let error = PolicyCliError::Rejected {
            target: "127.0.0.1:7403".into(),
            file: "web.yaml".into(),
            message: "2 error(s) in the policy documents; nothing was stored:\ndocument 0, spec: a\ndocument 1, spec.x: b".into(),
        };
        assert_eq!(
            error.to_string(),
            "kino-policy-compiler at 127.0.0.1:7403 rejected web.yaml: 2 error(s) in the policy documents; nothing was stored:\n  document 0, spec: a\n  document 1, spec.x: b"
        );
    }

    #[tokio::test]
    async fn yaml_is_refused_where_it_means_nothing() {
        let tls = kino_service_kit::ClientTlsArgs::default();
        let context = PolicyContext {
            compiler: CompilerTarget {
                address: "unix:/nonexistent/kino-policy.sock",
                tls: &tls,
                timeout: std::time::Duration::from_secs(1),
            },
            agent_socket: "/nonexistent/agent.sock",
            datastore: "unix:/nonexistent/kino-ds.sock",
        };
        let command = PolicyCommand::Delete {
            name: PolicyName::parse("shop/web").unwrap(),
            namespace: None,
            wait: WaitArgs {
                wait: false,
                wait_timeout: std::time::Duration::from_secs(30),
            },
        };
        let error = run(&command, context, OutputFormat::Yaml)
            .await
            .expect_err("yaml");
        assert!(matches!(error, PolicyCliError::YamlUnsupported), "{error}");
        let error = run(&command, context, OutputFormat::Table)
            .await
            .expect_err("nothing listens");
        assert!(
            error.to_string().contains(
                "cannot reach kino-policy-compiler at unix:/nonexistent/kino-policy.sock"
            ),
            "{error}"
        );
    }
}
