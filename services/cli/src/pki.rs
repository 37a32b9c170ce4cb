//! `kino pki init|issue`: the suite's certificates, made locally (no service is called).
//!
//! `init` is what `up.sh` runs: a CA (kept if there is one) and a certificate per service,
//! for this node's agent and for the admin (the CLI), in `--pki-dir` (default
//! `/var/lib/kino/pki`, mode 0700, keys 0600). Run again, it keeps what is valid and
//! reissues what is missing or expires within 30 days, so running services pick up renewed
//! files without a restart. `issue` makes one more certificate: another node's agent, the
//! operator, a second admin.

use std::path::Path;
use std::process::ExitCode;

use kino_service_kit::pki::{Issue, Outcome, Pki, Subject, local_suite};
use kino_service_kit::principal::Role;

/// `kino pki …`.
#[derive(Debug, clap::Args)]
pub struct PkiArgs {
    #[command(subcommand)]
    command: PkiCommand,
}

#[derive(Debug, clap::Subcommand)]
enum PkiCommand {
    /// A CA and the local suite's certificates: datastore-gateway, ipam, policy-compiler,
    /// flow-relay, this node's agent and admin. Keeps valid ones; safe to run again.
    Init {
        /// The agent's node name [default: this machine's hostname, lowercased].
        #[arg(long)]
        node: Option<String>,
        /// More names or addresses the services are dialled by (repeat, or comma-separate),
        /// besides localhost, 127.0.0.1 and ::1.
        #[arg(long = "san", value_delimiter = ',')]
        sans: Vec<String>,
    },
    /// One certificate signed by the CA in --pki-dir, replacing any under the same file name.
    Issue {
        /// Its role (Subject O): agent, ipam, policy-compiler, datastore-gateway, operator,
        /// flow-relay, admin.
        role: Role,
        /// For an agent: its node (CN kino-agent:<node>).
        #[arg(long, required_if_eq("role", "agent"))]
        node: Option<String>,
        /// Its name (Subject CN) [default: the role; kino-agent:<node> for an agent].
        #[arg(long)]
        name: Option<String>,
        /// File name without extension [default: the role].
        #[arg(long)]
        out: Option<String>,
        /// Names or addresses it serves on, besides localhost, 127.0.0.1 and ::1.
        #[arg(long = "san", value_delimiter = ',')]
        sans: Vec<String>,
    },
}

/// Runs a `kino pki` command on the PKI directory `dir`; prints what it wrote.
pub fn execute(args: &PkiArgs, dir: &Path) -> ExitCode {
    // Keys must never be readable by anyone but their owner, whatever the caller's umask.
    kino_service_kit::make_new_files_private();
    match run(&args.command, dir) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: &PkiCommand, dir: &Path) -> Result<String, String> {
    let mut report = String::new();
    match command {
        PkiCommand::Init { node, sans } => {
            let node = match node {
                Some(node) => node.clone(),
                None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map_err(|e| format!("cannot read the hostname for --node: {e}; pass --node"))?
                    .trim()
                    .to_ascii_lowercase(),
            };
            let (pki, created) = Pki::open_or_create(dir).map_err(|e| e.to_string())?;
            report.push_str(&format!(
                "{} {}\n",
                if created { "created " } else { "kept    " },
                pki.ca_path().display()
            ));
            for issue in local_suite(&node, sans) {
                let outcome = pki.ensure(&issue).map_err(|e| e.to_string())?;
                report.push_str(&line(&outcome, &issue));
            }
        }
        PkiCommand::Issue {
            role,
            node,
            name,
            out,
            sans,
        } => {
            let mut subject = match (role, node) {
                (Role::Agent, Some(node)) => Subject::agent(node),
                (Role::Agent, None) => return Err("an agent certificate needs --node".into()),
                (role, _) => Subject::role(*role),
            };
            if let Some(name) = name {
                subject.name = name.clone();
            }
            let mut issue = Issue::local(subject, sans);
            if let Some(out) = out {
                issue = issue.with_stem(out.clone());
            }
            let pki = Pki::open(dir).map_err(|e| {
                format!(
                    "{e} (create the CA first with `kino pki init --pki-dir {}`)",
                    dir.display()
                )
            })?;
            let path = pki.issue(&issue).map_err(|e| e.to_string())?;
            report.push_str(&line(&Outcome::Issued(path), &issue));
        }
    }
    Ok(report)
}

fn line(outcome: &Outcome, issue: &Issue) -> String {
    let (verb, path) = match outcome {
        Outcome::Issued(path) => ("issued  ", path),
        Outcome::Kept(path) => ("kept    ", path),
    };
    format!(
        "{verb} {}  (CN={}, O={})\n",
        path.display(),
        issue.subject.name,
        issue.subject.role
    )
}
