//! kino: the operator's command-line tool. Reads flags/env and runs one command.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use kino_cli::compiler::CompilerTarget;
use kino_cli::duration::parse_duration;
use kino_cli::ipam::{IpamArgs, IpamCommand};
use kino_cli::status::{Targets, components, probe_all};
use kino_cli::stdout;
use kino_service_kit::ClientTlsArgs;
use kino_service_kit::pki::DEFAULT_PKI_DIR;
use kino_service_kit::principal::Role;
use kino_telemetry::{LogArgs, LogFormat};

/// Exit status when a component is not SERVING (or a command failed).
const EXIT_FAILURE: u8 = 1;
/// Exit status of usage errors.
const EXIT_USAGE: u8 = 2;

/// Operate a Kinocilium suite: status, endpoints, policies, identities, IPAM, nodes, services,
/// BPF maps, flows.
#[derive(Parser, Debug)]
#[command(name = "kino", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    global: GlobalArgs,
}

/// Flags every command shares.
#[derive(Args, Debug)]
struct GlobalArgs {
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// The datastore-gateway: host:port, http(s)://host:port or unix:/path.
    #[arg(
        long,
        global = true,
        env = "KINO_DATASTORE",
        default_value = "127.0.0.1:7401"
    )]
    datastore: String,
    /// The IPAM service.
    #[arg(
        long,
        global = true,
        env = "KINO_IPAM",
        default_value = "127.0.0.1:7402"
    )]
    ipam: String,
    /// The policy-compiler.
    #[arg(
        long,
        global = true,
        env = "KINO_POLICY",
        default_value = "127.0.0.1:7403"
    )]
    policy: String,
    /// The agent's local API socket: /path or unix:/path.
    #[arg(
        long,
        visible_alias = "agent-socket",
        global = true,
        env = "KINO_AGENT_SOCKET",
        default_value = "/run/kino/agent.sock"
    )]
    agent: String,
    /// A node of a cluster (`cluster.sh`): its agent's socket /run/kino/<NAME>/agent.sock
    /// unless --agent-socket is given; `kino observe` then shows only that node's flows and
    /// `kino ipam pools|allocations` only its addresses.
    #[arg(long, global = true, env = "KINO_NODE", value_name = "NAME")]
    node: Option<String>,
    /// The agent's flow observer (`kino observe --server`).
    #[arg(
        long,
        visible_alias = "server",
        global = true,
        env = "KINO_FLOW",
        default_value = "127.0.0.1:7404"
    )]
    flows: String,
    /// How long each component may take to answer, e.g. 2s or 500ms.
    #[arg(long, global = true, env = "KINO_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    timeout: Duration,
    /// The PKI directory `kino pki init` fills (up.sh: /var/lib/kino/pki). Without
    /// --upstream-tls-* flags, kino dials TCP services with its ca.crt and the admin
    /// certificate admin.crt/admin.key (root's: run kino as root).
    #[arg(long, global = true, env = "KINO_PKI_DIR", default_value = DEFAULT_PKI_DIR)]
    pki_dir: std::path::PathBuf,
    #[command(flatten)]
    upstream_tls: ClientTlsArgs,
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// A table for people.
    Table,
    /// JSON for scripts.
    Json,
    /// YAML: the policy documents as imported (`kino policy get|list` only).
    Yaml,
    /// One line per flow (`kino observe`; what `table` means there).
    Compact,
    /// One GetFlowsResponse JSON object per line, lost events included (`kino observe`).
    Jsonpb,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Health of every component (exit status 1 unless all are SERVING).
    Status,
    /// Endpoints of this node: list, get (from the agent).
    Endpoint(kino_cli::endpoint::EndpointArgs),
    /// Network policies: import, validate, get, list, delete, trace (kino-policy-compiler).
    Policy(kino_cli::policy::PolicyArgs),
    /// Security identities: list, get (kino-policy-compiler).
    Identity(kino_cli::identity::IdentityArgs),
    /// IP pools with their utilisation, and allocated addresses.
    Ipam(IpamArgs),
    /// The cluster's nodes: list, get, delete (kino-ipam).
    Node(kino_cli::node::NodeArgs),
    /// Load-balanced services: create, update, delete, list, get (kino-ipam).
    Service(kino_cli::service::ServiceArgs),
    /// The agent's BPF maps: endpoints, ipcache, policy, conntrack.
    Bpf(kino_cli::bpf::BpfArgs),
    /// Flows seen by the agent's flow observer, filtered (Hubble's `hubble observe`).
    Observe(Box<kino_cli::observe::ObserveArgs>),
    /// Certificates of the suite: a CA and one per service, agent and admin (--pki-dir).
    Pki(kino_cli::pki::PkiArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    // The matches are kept: `kino observe --not` needs the order of the flags.
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // The admin's credentials where `kino pki init` (up.sh) put them, unless flags say else.
    cli.global.upstream_tls = cli.global.upstream_tls.clone().with_pki_defaults(
        &kino_service_kit::PkiArgs::at(&cli.global.pki_dir),
        Role::Admin.as_str(),
    );
    // --node names the agent's socket in the cluster layout, unless the socket is given.
    if let Some(node) = &cli.global.node {
        let explicit = matches!(
            matches.value_source("agent"),
            Some(clap::parser::ValueSource::CommandLine)
        );
        if !explicit {
            cli.global.agent = node_agent_socket(node);
        }
    }
    // Quiet by default: the output is the table; KINO_LOG=debug shows the RPCs.
    let log = LogArgs {
        log_format: LogFormat::Pretty,
        log_level: std::env::var("KINO_LOG").unwrap_or_else(|_| "warn".to_owned()),
    };
    let _telemetry = match kino_telemetry::init("kino", &log) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let observe = matches!(cli.command, Command::Observe(_));
    if matches!(cli.global.output, Output::Compact | Output::Jsonpb) && !observe {
        eprintln!(
            "error: -o compact and -o jsonpb are for `kino observe`; use -o table or -o json"
        );
        return ExitCode::from(EXIT_USAGE);
    }
    if cli.global.output == Output::Yaml && !matches!(cli.command, Command::Policy(_)) {
        eprintln!(
            "error: -o yaml is for `kino policy get|list` (the policy documents); use -o json"
        );
        return ExitCode::from(EXIT_USAGE);
    }
    match cli.command {
        Command::Pki(args) => kino_cli::pki::execute(&args, &cli.global.pki_dir),
        Command::Status => return status(&cli.global).await,
        Command::Endpoint(args) => {
            let json = cli.global.output == Output::Json;
            let (agent, timeout) = (&cli.global.agent, cli.global.timeout);
            return kino_cli::endpoint::execute(&args, agent, timeout, json).await;
        }
        Command::Policy(args) => {
            let context = kino_cli::policy::PolicyContext {
                compiler: compiler_target(&cli.global),
                agent_socket: &cli.global.agent,
                datastore: &cli.global.datastore,
            };
            return kino_cli::policy::execute(&args, context, output_format(&cli.global)).await;
        }
        Command::Identity(args) => {
            let target = compiler_target(&cli.global);
            return kino_cli::identity::execute(&args, target, output_format(&cli.global)).await;
        }
        Command::Ipam(args) => return ipam(&cli.global, &args).await,
        Command::Node(args) => return node(&cli.global, &args).await,
        Command::Service(args) => return service(&cli.global, &args).await,
        Command::Bpf(args) => {
            let json = cli.global.output == Output::Json;
            let (agent, timeout) = (&cli.global.agent, cli.global.timeout);
            return kino_cli::bpf::execute(&args, agent, timeout, json).await;
        }
        Command::Observe(mut args) => {
            args.node_name.extend(cli.global.node.clone());
            let format = match cli.global.output {
                Output::Json => kino_cli::observe::Format::Json,
                Output::Jsonpb => kino_cli::observe::Format::Jsonpb,
                _ => kino_cli::observe::Format::Compact,
            };
            let target = kino_cli::observe::ObserverTarget {
                address: &cli.global.flows,
                tls: &cli.global.upstream_tls,
                timeout: cli.global.timeout,
            };
            kino_cli::observe::execute(&args, matches.subcommand_matches("observe"), target, format)
                .await
        }
    }
}

fn compiler_target(global: &GlobalArgs) -> CompilerTarget<'_> {
    CompilerTarget {
        address: &global.policy,
        tls: &global.upstream_tls,
        timeout: global.timeout,
    }
}

fn output_format(global: &GlobalArgs) -> kino_cli::policy::OutputFormat {
    match global.output {
        Output::Table | Output::Compact | Output::Jsonpb => kino_cli::policy::OutputFormat::Table,
        Output::Json => kino_cli::policy::OutputFormat::Json,
        Output::Yaml => kino_cli::policy::OutputFormat::Yaml,
    }
}

/// The agent socket of `node` in the cluster layout (`cluster.sh`).
fn node_agent_socket(node: &str) -> String {
    format!("/run/kino/{node}/agent.sock")
}

async fn ipam(global: &GlobalArgs, args: &IpamArgs) -> ExitCode {
    let json = global.output == Output::Json;
    let (target, tls, timeout) = (&global.ipam, &global.upstream_tls, global.timeout);
    let mut command = args.command.clone();
    let (IpamCommand::Pools { node, .. } | IpamCommand::Allocations { node, .. }) = &mut command;
    node.clone_from(&global.node);
    let result = kino_cli::ipam::run(&command, target, tls, timeout, json).await;
    // The ipam tables end with a newline; its JSON does not.
    print_ipam(result.map(|text| if json { text + "\n" } else { text }))
}

async fn node(global: &GlobalArgs, args: &kino_cli::node::NodeArgs) -> ExitCode {
    let json = global.output == Output::Json;
    let (target, tls, timeout) = (&global.ipam, &global.upstream_tls, global.timeout);
    print_ipam(kino_cli::node::run(&args.command, target, tls, timeout, json).await)
}

async fn service(global: &GlobalArgs, args: &kino_cli::service::ServiceArgs) -> ExitCode {
    let json = global.output == Output::Json;
    let (target, tls, timeout) = (&global.ipam, &global.upstream_tls, global.timeout);
    print_ipam(kino_cli::service::run(&args.command, target, tls, timeout, json).await)
}

/// Prints what a kino-ipam command returned, or its error.
fn print_ipam(result: Result<String, kino_cli::ipam::IpamCliError>) -> ExitCode {
    match result {
        Ok(text) => {
            stdout::print(&text);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn status(global: &GlobalArgs) -> ExitCode {
    let targets = Targets {
        datastore: global.datastore.clone(),
        ipam: global.ipam.clone(),
        policy: global.policy.clone(),
        agent: global.agent.clone(),
        flows: global.flows.clone(),
    };
    let report = probe_all(&components(&targets), &global.upstream_tls, global.timeout).await;
    match global.output {
        Output::Table | Output::Yaml | Output::Compact | Output::Jsonpb => {
            stdout::print(&report.render_table())
        }
        Output::Json => stdout::println(&report.to_json()),
    }
    if report.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        for bad in ["", "fast", "0s", "-1s", "2h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn node_names_its_agent_socket_in_the_cluster_layout() {
        assert_eq!(
            node_agent_socket("kino-node-2"),
            "/run/kino/kino-node-2/agent.sock"
        );
        let cli = Cli::try_parse_from(["kino", "endpoint", "list", "--node", "kino-node-2"])
            .expect("parses");
        assert_eq!(cli.global.node.as_deref(), Some("kino-node-2"));
        let cli = Cli::try_parse_from(["kino", "ipam", "allocations", "--node", "n1"])
            .expect("the global --node also follows ipam's subcommands");
        assert_eq!(cli.global.node.as_deref(), Some("n1"));
    }

    #[test]
    fn endpoint_commands_parse_with_the_agent_socket_flag() {
        let cli = Cli::try_parse_from([
            "kino",
            "endpoint",
            "get",
            "10.0.1.5",
            "-o",
            "json",
            "--agent-socket",
            "/tmp/a.sock",
        ])
        .expect("parses");
        assert!(matches!(cli.command, Command::Endpoint(_)));
        assert_eq!(cli.global.agent, "/tmp/a.sock");
        assert!(Cli::try_parse_from(["kino", "endpoint", "list", "-n", "shop"]).is_ok());
        assert!(Cli::try_parse_from(["kino", "endpoint", "get"]).is_err());
    }

    #[test]
    fn policy_and_identity_commands_parse() {
        let cli = Cli::try_parse_from([
            "kino",
            "policy",
            "trace",
            "--src",
            "k8s:app=lb,env=prod",
            "--dst",
            "shop/web",
            "--dport",
            "80/tcp",
            "--direction",
            "ingress",
            "--policy",
            "unix:/tmp/p.sock",
        ])
        .expect("parses");
        assert!(matches!(cli.command, Command::Policy(_)));
        assert_eq!(cli.global.policy, "unix:/tmp/p.sock");
        for args in [
            &["kino", "policy", "import", "-"][..],
            &["kino", "policy", "import", "web.yaml", "-n", "shop"],
            &["kino", "policy", "validate", "web.yaml"],
            &["kino", "policy", "get", "shop/web", "-o", "yaml"],
            &["kino", "policy", "get", "web", "-n", "shop"],
            &["kino", "policy", "list", "-n", "shop", "-o", "json"],
            &["kino", "policy", "delete", "/allow-dns"],
            &["kino", "policy", "trace", "-s", "256", "-d", "10.0.0.7"],
            &["kino", "identity", "list", "-o", "json"],
            &["kino", "identity", "get", "256"],
        ] {
            assert!(Cli::try_parse_from(args).is_ok(), "{args:?}");
        }
        for args in [
            &["kino", "policy", "import"][..],
            &["kino", "policy", "get", "a/b/c"],
            &[
                "kino", "policy", "trace", "--src", "web", "--dst", "shop/db",
            ],
            &[
                "kino", "policy", "trace", "-s", "a=b", "-d", "c=d", "--dport", "80/gre",
            ],
            &[
                "kino",
                "policy",
                "trace",
                "-s",
                "a=b",
                "-d",
                "c=d",
                "--direction",
                "up",
            ],
            &["kino", "identity", "get", "zero"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
        let cli = Cli::try_parse_from(["kino", "-o", "yaml", "policy", "list"]).expect("parses");
        assert_eq!(cli.global.output, Output::Yaml);
    }

    #[test]
    fn service_commands_parse() {
        for args in [
            &[
                "kino",
                "service",
                "create",
                "web",
                "--frontend",
                "172.20.0.10:80/tcp",
                "--frontend",
                "[fd00:ffff::a]:80/tcp",
                "--backend",
                "10.0.1.5:8080",
                "--backend",
                "10.0.2.7:8080,weight=2",
                "--type",
                "NodePort",
                "--node-port",
                "30080",
                "--affinity",
                "ClientIP",
                "--affinity-timeout",
                "1h",
                "-n",
                "shop",
            ][..],
            &[
                "kino",
                "service",
                "update",
                "web",
                "--add-backend",
                "10.0.1.6:8080",
            ],
            &[
                "kino",
                "service",
                "update",
                "web",
                "--terminate-backend",
                "10.0.1.5:8080",
            ],
            &[
                "kino",
                "service",
                "update",
                "web",
                "--remove-backend",
                "[fd00::5]:80",
            ],
            &["kino", "service", "delete", "web", "-n", "shop"],
            &["kino", "service", "list", "-o", "json"],
            &["kino", "service", "get", "web"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert!(matches!(cli.command, Command::Service(_)));
        }
        for args in [
            &[
                "kino",
                "service",
                "create",
                "web",
                "--frontend",
                "172.20.0.10",
            ][..],
            &[
                "kino",
                "service",
                "create",
                "web",
                "--backend",
                "10.0.1.5:8080,heavy",
            ],
            &["kino", "service", "create", "web", "--type", "LoadBalancer"],
            &[
                "kino",
                "service",
                "create",
                "web",
                "--affinity-timeout",
                "2d",
            ],
            &[
                "kino",
                "service",
                "update",
                "web",
                "--remove-backend",
                "10.0.1.5",
            ],
            &["kino", "service", "get"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn bpf_commands_parse() {
        for args in [
            &["kino", "bpf", "endpoint", "list"][..],
            &["kino", "bpf", "ipcache", "list", "-o", "json"],
            &["kino", "bpf", "policy", "list", "12"],
            &["kino", "bpf", "policy", "list", "default/web"],
            &[
                "kino", "bpf", "ct", "list", "--family", "ipv4", "--max", "10",
            ],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert!(matches!(cli.command, Command::Bpf(_)));
        }
        assert!(Cli::try_parse_from(["kino", "bpf", "policy", "list"]).is_err());
    }

    #[test]
    fn observe_parses_with_its_server_and_formats() {
        let cli = Cli::try_parse_from(["kino", "observe", "--all", "-o", "json"]).expect("parses");
        assert!(matches!(cli.command, Command::Observe(_)));
        let cli = Cli::try_parse_from([
            "kino",
            "observe",
            "--verdict",
            "DROPPED",
            "-f",
            "--server",
            "unix:/tmp/flows.sock",
            "-o",
            "jsonpb",
        ])
        .expect("parses");
        assert_eq!(cli.global.flows, "unix:/tmp/flows.sock");
        assert_eq!(cli.global.output, Output::Jsonpb);
        let matches = Cli::command()
            .try_get_matches_from([
                "kino",
                "observe",
                "--not",
                "--namespace",
                "kube-system",
                "-o",
                "compact",
            ])
            .expect("parses");
        let cli = Cli::from_arg_matches(&matches).expect("parses");
        let Command::Observe(args) = cli.command else {
            panic!("observe");
        };
        let request = args
            .request(matches.subcommand_matches("observe"))
            .expect("a request");
        assert_eq!(request.blacklist.len(), 2);
        let cli = Cli::try_parse_from(["kino", "-o", "json", "status"]).expect("parses");
        assert_eq!(cli.global.output, Output::Json);
    }
}
