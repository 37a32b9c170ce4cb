//! `kino identity list|get`: security identities (label set → number) as kino-policy-compiler
//! knows them, reserved ones (1 host, 2 world, … 6 remote-node) included, laid out like
//! `cilium identity list`: ID, then the labels one per line.

use std::fmt::Write as _;
use std::process::ExitCode;

use kino_api::policy as pb;

use crate::compiler::{CompilerCallError, CompilerTarget, call, connect};
use crate::labels::{label_lines, parse_labels};
use crate::policy::OutputFormat;
use crate::{proto_json, table};

/// `kino identity …`.
#[derive(Debug, clap::Args)]
pub struct IdentityArgs {
    #[command(subcommand)]
    command: IdentityCommand,
}

#[derive(Debug, clap::Subcommand)]
enum IdentityCommand {
    /// Every identity: ID and LABELS (reserved ones first).
    List,
    /// One identity, by number or by its exact labels (k8s:app=web,k8s:io.kubernetes…).
    Get {
        /// The numeric identity, or its label set.
        #[arg(value_parser = IdentityLookup::parse)]
        identity: IdentityLookup,
    },
}

/// How `kino identity get` names an identity.
#[derive(Debug, Clone, PartialEq)]
pub enum IdentityLookup {
    /// By number.
    Id(u32),
    /// By its exact label set.
    Labels(kino_api::types::Labels),
}

impl IdentityLookup {
    /// `256`, or a label list `source:key=value,…`.
    pub fn parse(text: &str) -> Result<IdentityLookup, String> {
        let text = text.trim();
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return match text.parse::<u32>() {
                Ok(id) if id > 0 => Ok(IdentityLookup::Id(id)),
                _ => Err(format!("{text:?} is not an identity (1 and up)")),
            };
        }
        if text.contains('=') || text.contains(':') {
            return parse_labels(text).map(IdentityLookup::Labels);
        }
        Err(format!(
            "{text:?} is not an identity: give its number (`kino identity list` shows them) or its labels (k8s:app=web,…)"
        ))
    }

    fn to_proto(&self) -> pb::get_identity_request::Lookup {
        match self {
            IdentityLookup::Id(id) => pb::get_identity_request::Lookup::Id(*id),
            IdentityLookup::Labels(labels) => {
                pb::get_identity_request::Lookup::Labels(labels.clone())
            }
        }
    }
}

/// Why `kino identity …` failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityCliError {
    /// The compiler failed.
    #[error(transparent)]
    Compiler(#[from] CompilerCallError),
    /// No such identity.
    #[error("{0}; `kino identity list` shows the identities")]
    NotFound(String),
    /// `-o yaml` was asked for.
    #[error(
        "-o yaml prints policy documents (`kino policy get`); identities print as a table or -o json"
    )]
    YamlUnsupported,
}

/// Runs `kino identity …`; prints the result or the error. Exit status 1 on failure.
pub async fn execute(
    args: &IdentityArgs,
    target: CompilerTarget<'_>,
    format: OutputFormat,
) -> ExitCode {
    match run(&args.command, target, format).await {
        Ok(text) => {
            crate::stdout::print(&text);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    command: &IdentityCommand,
    target: CompilerTarget<'_>,
    format: OutputFormat,
) -> Result<String, IdentityCliError> {
    if format == OutputFormat::Yaml {
        return Err(IdentityCliError::YamlUnsupported);
    }
    let json = format == OutputFormat::Json;
    match command {
        IdentityCommand::List => {
            let client = connect(target, "ListIdentities").await?;
            let mut all = pb::ListIdentitiesResponse::default();
            loop {
                let request = pb::ListIdentitiesRequest {
                    selector: None,
                    page_size: 5000,
                    page_token: all.next_page_token.clone(),
                };
                let page = call(target, &client, "ListIdentities", |mut c| async move {
                    c.list_identities(request).await
                })
                .await?;
                all.identities.extend(page.identities);
                all.next_page_token = page.next_page_token;
                if all.next_page_token.is_empty() {
                    break;
                }
            }
            Ok(if json {
                proto_json::to_string(&all)
            } else {
                render_list(&all.identities)
            })
        }
        IdentityCommand::Get { identity } => {
            let client = connect(target, "GetIdentity").await?;
            let request = pb::GetIdentityRequest {
                lookup: Some(identity.to_proto()),
            };
            let response = call(target, &client, "GetIdentity", |mut c| async move {
                c.get_identity(request).await
            })
            .await
            .map_err(|error| match error.code() {
                Some(tonic::Code::NotFound) => {
                    IdentityCliError::NotFound(error.message().unwrap_or_default().to_owned())
                }
                _ => error.into(),
            })?;
            Ok(if json {
                proto_json::to_string(&response)
            } else {
                render_detail(&response.identity.unwrap_or_default())
            })
        }
    }
}

/// The `kino identity list` table: ID, LABELS one per line.
pub fn render_list(identities: &[pb::Identity]) -> String {
    let rows: Vec<Vec<String>> = identities
        .iter()
        .map(|identity| {
            let labels = label_lines(identity.labels.as_ref());
            vec![
                identity.id.to_string(),
                if labels.is_empty() {
                    "-".to_owned()
                } else {
                    labels.join("\n")
                },
            ]
        })
        .collect();
    table::render(&["ID", "LABELS"], &rows)
}

/// The `kino identity get` summary.
pub fn render_detail(identity: &pb::Identity) -> String {
    let time = |t: Option<&prost_types::Timestamp>| {
        t.map(|t| crate::endpoint::timestamp_rfc3339(t.seconds, t.nanos))
    };
    let mut out = String::new();
    let _ = writeln!(out, "ID:           {}", identity.id);
    let labels = label_lines(identity.labels.as_ref());
    match labels.split_first() {
        None => out.push_str("Labels:       -\n"),
        Some((first, rest)) => {
            let _ = writeln!(out, "Labels:       {first}");
            for label in rest {
                let _ = writeln!(out, "              {label}");
            }
        }
    }
    let _ = writeln!(
        out,
        "Reserved:     {}",
        if identity.reserved { "yes" } else { "no" }
    );
    if !identity.reserved {
        let _ = writeln!(
            out,
            "Created:      {}",
            time(identity.create_time.as_ref()).unwrap_or_else(|| "-".to_owned())
        );
        let _ = writeln!(
            out,
            "Unused since: {}",
            time(identity.unused_since.as_ref()).map_or_else(
                || "- (in use)".to_owned(),
                |t| format!("{t} (deleted after the grace period unless an endpoint uses it)")
            )
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::parse_labels;

    fn identity(id: u32, labels: &str, reserved: bool) -> pb::Identity {
        pb::Identity {
            id,
            labels: Some(parse_labels(labels).unwrap()),
            reserved,
            create_time: (!reserved).then_some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            unused_since: None,
        }
    }

    #[test]
    fn list_shows_reserved_identities_and_labels_one_per_line() {
        let text = render_list(&[
            identity(1, "reserved:host", true),
            identity(2, "reserved:world", true),
            identity(6, "reserved:remote-node", true),
            identity(256, "container:namespace=shop,container:app=web", false),
        ]);
        assert_eq!(
            text,
            "ID    LABELS\n\
             1     reserved:host\n\
             2     reserved:world\n\
             6     reserved:remote-node\n\
             256   container:app=web\n\
             \x20     container:namespace=shop\n"
        );
    }

    #[test]
    fn detail_shows_labels_and_lifetime() {
        let text = render_detail(&identity(256, "k8s:app=web,k8s:env=prod", false));
        assert!(text.contains("ID:           256\n"), "{text}");
        assert!(
            text.contains("Labels:       k8s:app=web\n              k8s:env=prod\n"),
            "{text}"
        );
        assert!(
            text.contains("Created:      2023-11-14T22:13:20Z"),
            "{text}"
        );
        assert!(text.contains("Unused since: - (in use)"), "{text}");
        let text = render_detail(&identity(1, "reserved:host", true));
        assert!(text.contains("Reserved:     yes"), "{text}");
        assert!(!text.contains("Created"), "{text}");
    }

    #[test]
    fn lookups_are_numbers_or_labels() {
        assert_eq!(IdentityLookup::parse("256"), Ok(IdentityLookup::Id(256)));
        assert!(matches!(
            IdentityLookup::parse("k8s:app=web"),
            Ok(IdentityLookup::Labels(_))
        ));
        for bad in ["", "0", "web", "99999999999"] {
            assert!(IdentityLookup::parse(bad).is_err(), "{bad:?}");
        }
    }
}
