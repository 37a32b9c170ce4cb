//! `kino observe`: flows from the agent's flow observer (`kino.flow.v1`, `--server` /
//! `--flows`, default 127.0.0.1:7404), Hubble's `hubble observe` for Kinocilium. Filters
//! follow Hubble's flags and semantics ([`filters`]); output is one compact line per flow
//! ([`compact`]), `-o json` (one `Flow` per line, canonical proto3 JSON) or `-o jsonpb` (one
//! `GetFlowsResponse` per line: flows and lost-event reports).

pub mod compact;
pub mod filters;

use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, ArgMatches, Args};
use kino_api::flow::flow_service_client::FlowServiceClient;
use kino_api::flow::get_flows_response::Event;
use kino_api::flow::{GetFlowsRequest, GetFlowsResponse};
use kino_service_kit::ClientTlsArgs;

use filters::{Field, Side};

/// Flows shown without `--last`, `--first`, `--all` or `--follow`.
pub const DEFAULT_LAST: u64 = 20;

/// Exit status of a failed call.
const EXIT_FAILURE: u8 = 1;
/// Exit status of a usage error (a bad filter value).
const EXIT_USAGE: u8 = 2;

/// `kino observe` flags. Filters: a flag repeated ORs its values, different flags AND;
/// `--X` (pod, namespace, label, ip, port, identity) matches either side; `--not` negates
/// the one filter flag after it.
#[derive(Args, Debug, Default, Clone)]
pub struct ObserveArgs {
    /// Keep streaming new flows until interrupted (after the --last ones).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Show the newest N flows of the ring first (default 20; 0 with --follow).
    #[arg(long, value_name = "N")]
    pub last: Option<u64>,
    /// Show the oldest N flows of the ring instead.
    #[arg(long, value_name = "N", conflicts_with_all = ["last", "follow", "all"])]
    pub first: Option<u64>,
    /// Show every flow of the ring.
    #[arg(long, conflicts_with = "last")]
    pub all: bool,
    /// Negate the filter flag that follows: `--not --namespace kube-system`.
    // One value per occurrence (a Count flag keeps only the last position).
    #[arg(long, action = ArgAction::Append, num_args = 0, default_missing_value = "true")]
    pub not: Vec<bool>,
    /// Flows from this pod: [NAMESPACE/]POD (name prefix; namespace "default" if omitted).
    #[arg(long, value_name = "[NS/]POD")]
    pub from_pod: Vec<String>,
    /// Flows to this pod.
    #[arg(long, value_name = "[NS/]POD")]
    pub to_pod: Vec<String>,
    /// Flows from or to this pod.
    #[arg(long, value_name = "[NS/]POD")]
    pub pod: Vec<String>,
    /// Flows from pods of this namespace.
    #[arg(long, value_name = "NS")]
    pub from_namespace: Vec<String>,
    /// Flows to pods of this namespace.
    #[arg(long, value_name = "NS")]
    pub to_namespace: Vec<String>,
    /// Flows from or to pods of this namespace.
    #[arg(short = 'n', long, value_name = "NS")]
    pub namespace: Vec<String>,
    /// Flows from endpoints whose labels match this selector (e.g. app=web, k8s:env in (a,b)).
    #[arg(long, value_name = "SELECTOR")]
    pub from_label: Vec<String>,
    /// Flows to endpoints whose labels match this selector.
    #[arg(long, value_name = "SELECTOR")]
    pub to_label: Vec<String>,
    /// Flows from or to endpoints whose labels match this selector.
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub label: Vec<String>,
    /// Flows from this IP or CIDR.
    #[arg(long, value_name = "IP|CIDR")]
    pub from_ip: Vec<String>,
    /// Flows to this IP or CIDR.
    #[arg(long, value_name = "IP|CIDR")]
    pub to_ip: Vec<String>,
    /// Flows from or to this IP or CIDR.
    #[arg(long, value_name = "IP|CIDR")]
    pub ip: Vec<String>,
    /// Flows from this port (TCP, UDP, SCTP).
    #[arg(long, value_name = "PORT")]
    pub from_port: Vec<String>,
    /// Flows to this port.
    #[arg(long, value_name = "PORT")]
    pub to_port: Vec<String>,
    /// Flows from or to this port.
    #[arg(long, value_name = "PORT")]
    pub port: Vec<String>,
    /// Flows from this security identity.
    #[arg(long, value_name = "ID")]
    pub from_identity: Vec<String>,
    /// Flows to this security identity.
    #[arg(long, value_name = "ID")]
    pub to_identity: Vec<String>,
    /// Flows from or to this security identity.
    #[arg(long, value_name = "ID")]
    pub identity: Vec<String>,
    /// L4 protocol: tcp, udp, icmp, icmpv6, sctp.
    #[arg(long, value_name = "PROTO")]
    pub protocol: Vec<String>,
    /// Verdict: FORWARDED, DROPPED, AUDIT, ERROR.
    #[arg(long, value_name = "VERDICT")]
    pub verdict: Vec<String>,
    /// Drop reason, e.g. POLICY_DENIED, POLICY_DENY, SPOOFED_SOURCE.
    #[arg(long, value_name = "REASON")]
    pub drop_reason: Vec<String>,
    /// Event type: drop, policy-verdict.
    #[arg(short = 't', long = "type", value_name = "TYPE")]
    pub event_type: Vec<String>,
    /// Direction seen from the local endpoint: ingress, egress.
    #[arg(long, value_name = "DIR")]
    pub traffic_direction: Vec<String>,
    /// Node name ('*' wildcard).
    #[arg(long, value_name = "NAME")]
    pub node_name: Vec<String>,
}

/// How flows are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One line per flow.
    Compact,
    /// One `Flow` JSON object per line.
    Json,
    /// One `GetFlowsResponse` JSON object per line (flows and lost events).
    Jsonpb,
}

/// Where the observer is.
#[derive(Debug, Clone, Copy)]
pub struct ObserverTarget<'a> {
    /// `host:port`, `http(s)://host:port` or `unix:/path`.
    pub address: &'a str,
    /// Client TLS.
    pub tls: &'a ClientTlsArgs,
    /// Limit on connecting (and on the whole call unless following).
    pub timeout: Duration,
}

impl ObserveArgs {
    /// Every filter flag: its clap id, side, field and values.
    fn filter_flags(&self) -> Vec<(&'static str, Side, Field, &Vec<String>)> {
        vec![
            ("from_pod", Side::From, Field::Pod, &self.from_pod),
            ("to_pod", Side::To, Field::Pod, &self.to_pod),
            ("pod", Side::Either, Field::Pod, &self.pod),
            (
                "from_namespace",
                Side::From,
                Field::Namespace,
                &self.from_namespace,
            ),
            (
                "to_namespace",
                Side::To,
                Field::Namespace,
                &self.to_namespace,
            ),
            ("namespace", Side::Either, Field::Namespace, &self.namespace),
            ("from_label", Side::From, Field::Label, &self.from_label),
            ("to_label", Side::To, Field::Label, &self.to_label),
            ("label", Side::Either, Field::Label, &self.label),
            ("from_ip", Side::From, Field::Ip, &self.from_ip),
            ("to_ip", Side::To, Field::Ip, &self.to_ip),
            ("ip", Side::Either, Field::Ip, &self.ip),
            ("from_port", Side::From, Field::Port, &self.from_port),
            ("to_port", Side::To, Field::Port, &self.to_port),
            ("port", Side::Either, Field::Port, &self.port),
            (
                "from_identity",
                Side::From,
                Field::Identity,
                &self.from_identity,
            ),
            ("to_identity", Side::To, Field::Identity, &self.to_identity),
            ("identity", Side::Either, Field::Identity, &self.identity),
            ("protocol", Side::Flow, Field::Protocol, &self.protocol),
            ("verdict", Side::Flow, Field::Verdict, &self.verdict),
            (
                "drop_reason",
                Side::Flow,
                Field::DropReason,
                &self.drop_reason,
            ),
            ("event_type", Side::Flow, Field::EventType, &self.event_type),
            (
                "traffic_direction",
                Side::Flow,
                Field::TrafficDirection,
                &self.traffic_direction,
            ),
            ("node_name", Side::Flow, Field::NodeName, &self.node_name),
        ]
    }

    /// The request these flags ask for. `matches` (the subcommand's, when parsed from a
    /// command line) gives the flags' order, which `--not` needs; without it every filter
    /// flag is taken as not negated, and `--not` is refused.
    pub fn request(&self, matches: Option<&ArgMatches>) -> Result<GetFlowsRequest, String> {
        let mut flags = Vec::new();
        for (id, side, field, values) in self.filter_flags() {
            let indices: Vec<usize> = matches
                .and_then(|m| m.indices_of(id))
                .map(Iterator::collect)
                .unwrap_or_else(|| (0..values.len()).collect());
            for (value, index) in values.iter().zip(indices) {
                flags.push((index, side, field, value.clone()));
            }
        }
        let nots: Vec<usize> = match matches.and_then(|m| m.indices_of("not")) {
            Some(indices) => indices.collect(),
            None if !self.not.is_empty() => {
                return Err("--not needs the command line's order".to_owned());
            }
            None => Vec::new(),
        };
        let occurrences = filters::order(flags, &nots)?;
        let (whitelist, blacklist) = filters::build(&occurrences).map_err(|e| e.to_string())?;
        let number = match (self.first, self.all, self.follow) {
            (Some(n), _, _) => n,
            (None, true, _) => 0,
            (None, false, true) => self.last.unwrap_or(0),
            (None, false, false) => self.last.unwrap_or(DEFAULT_LAST),
        };
        if number == 0 && !self.all && !self.follow {
            return Err(
                "--last 0 without --follow shows nothing; use --all for the whole ring".to_owned(),
            );
        }
        Ok(GetFlowsRequest {
            number,
            first: self.first.is_some(),
            follow: self.follow,
            whitelist,
            blacklist,
            since: None,
            until: None,
        })
    }
}

fn print(response: &GetFlowsResponse, format: Format) {
    match (format, &response.event) {
        (Format::Compact, Some(Event::Flow(flow))) => crate::stdout::println(&compact::line(flow)),
        (Format::Compact, Some(Event::LostEvents(lost))) => {
            eprintln!("{}", compact::lost_line(lost, response.time.as_ref()))
        }
        (Format::Json, Some(Event::Flow(flow))) => {
            crate::stdout::println(&crate::proto_json::to_value(flow).to_string())
        }
        (Format::Json, Some(Event::LostEvents(lost))) => {
            eprintln!("{}", compact::lost_line(lost, response.time.as_ref()))
        }
        (Format::Jsonpb, _) => {
            crate::stdout::println(&crate::proto_json::to_value(response).to_string())
        }
        (_, None) => {}
    }
}

/// Runs `kino observe`: prints the flows and returns the exit status.
pub async fn execute(
    args: &ObserveArgs,
    matches: Option<&ArgMatches>,
    target: ObserverTarget<'_>,
    format: Format,
) -> ExitCode {
    let request = match args.request(matches) {
        Ok(request) => request,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let fix = "start kino-agent or pass --server ADDRESS (env KINO_FLOW; default 127.0.0.1:7404)";
    let channel = match tokio::time::timeout(
        target.timeout,
        kino_service_kit::connect(target.address, target.tls),
    )
    .await
    {
        Ok(Ok(channel)) => channel,
        Ok(Err(e)) => {
            eprintln!(
                "error: cannot reach the flow observer at {}: {e}; {fix}",
                target.address
            );
            return ExitCode::from(EXIT_FAILURE);
        }
        Err(_) => {
            eprintln!(
                "error: the flow observer at {} did not answer within {:.1}s; {fix}",
                target.address,
                target.timeout.as_secs_f64()
            );
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let mut client = FlowServiceClient::new(channel);
    let follow = request.follow;
    let stream = tokio::time::timeout(target.timeout, client.get_flows(request)).await;
    let mut stream = match stream {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => {
            eprintln!(
                "error: the flow observer at {} answered GetFlows with {:?}: {}",
                target.address,
                status.code(),
                status.message()
            );
            return ExitCode::from(if status.code() == tonic::Code::InvalidArgument {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            });
        }
        Err(_) => {
            eprintln!(
                "error: the flow observer at {} did not answer GetFlows within {:.1}s",
                target.address,
                target.timeout.as_secs_f64()
            );
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    loop {
        // The ring's flows come at once; only a follow may wait long for the next one.
        let next = if follow {
            Ok(stream.message().await)
        } else {
            tokio::time::timeout(target.timeout, stream.message()).await
        };
        match next {
            Ok(Ok(Some(response))) => print(&response, format),
            Ok(Ok(None)) => return ExitCode::SUCCESS,
            Ok(Err(status)) => {
                eprintln!("error: the flow stream ended: {}", status.message());
                return ExitCode::from(EXIT_FAILURE);
            }
            Err(_) => {
                eprintln!("error: the flow stream stalled");
                return ExitCode::from(EXIT_FAILURE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches, Parser};
    use kino_api::flow as pb;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        observe: ObserveArgs,
    }

    fn request(args: &[&str]) -> Result<GetFlowsRequest, String> {
        let matches = Cli::command()
            .try_get_matches_from(std::iter::once("observe").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        let cli = Cli::from_arg_matches(&matches).map_err(|e| e.to_string())?;
        cli.observe.request(Some(&matches))
    }

    #[test]
    fn defaults_are_the_last_20() {
        let r = request(&[]).unwrap();
        assert_eq!((r.number, r.follow, r.first), (20, false, false));
        assert!(r.whitelist.is_empty() && r.blacklist.is_empty());
        let r = request(&["-f"]).unwrap();
        assert_eq!((r.number, r.follow), (0, true));
        let r = request(&["--follow", "--last", "5"]).unwrap();
        assert_eq!((r.number, r.follow), (5, true));
        let r = request(&["--first", "3"]).unwrap();
        assert_eq!((r.number, r.first), (3, true));
        let r = request(&["--all"]).unwrap();
        assert_eq!(r.number, 0);
        assert!(request(&["--first", "3", "-f"]).is_err());
        assert!(request(&["--last", "0"]).is_err());
    }

    #[test]
    fn the_brief_flags_build_hubble_filters() {
        let r = request(&[
            "--from-pod",
            "shop/client",
            "--to-pod",
            "shop/web",
            "--verdict",
            "DROPPED",
            "--drop-reason",
            "POLICY_DENIED",
            "--protocol",
            "tcp",
            "--to-port",
            "80",
        ])
        .unwrap();
        assert_eq!(r.whitelist.len(), 1);
        let f = &r.whitelist[0];
        assert_eq!(f.source_pod, ["shop/client"]);
        assert_eq!(f.destination_pod, ["shop/web"]);
        assert_eq!(f.verdict, [pb::Verdict::Dropped as i32]);
        assert_eq!(f.destination_port, [80]);
    }

    #[test]
    fn not_negates_only_the_next_flag() {
        let r = request(&[
            "--verdict",
            "DROPPED",
            "--not",
            "--namespace",
            "kube-system",
            "--to-port",
            "80",
        ])
        .unwrap();
        assert_eq!(r.whitelist.len(), 1);
        assert_eq!(r.whitelist[0].destination_port, [80]);
        assert_eq!(r.blacklist.len(), 2, "either side: two filters");
        assert_eq!(r.blacklist[0].source_pod, ["kube-system/"]);
        assert_eq!(r.blacklist[1].destination_pod, ["kube-system/"]);
        let r = request(&["--not", "--from-ip=10.0.0.0/8", "--ip", "10.1.2.3"]).unwrap();
        assert_eq!(
            r.blacklist[0].source_ip,
            ["10.0.0.0/8"],
            "--flag=value form"
        );
        assert_eq!(r.whitelist.len(), 2);
        assert!(request(&["--verdict", "DROPPED", "--not"]).is_err());
        assert!(request(&["--not", "--not", "--pod", "x"]).is_err());
    }

    #[test]
    fn bad_values_are_usage_errors() {
        let error = request(&["--verdict", "MAYBE"]).unwrap_err();
        assert!(error.contains("--verdict"), "{error}");
        assert!(request(&["--protocol", "gre"]).is_err());
        assert!(request(&["--to-port", "http"]).is_err());
    }
}
