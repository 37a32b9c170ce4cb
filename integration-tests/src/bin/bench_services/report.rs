//! The run's results and the markdown tables printed at its end: traffic as ratios to the
//! limit measured in the same run, control-plane times as medians with their range, the
//! machine's load at the start and the end, and why IPVS has no row of numbers.

use std::time::Duration;

use crate::reference::Layout;
use crate::{Args, ms};

/// TCP_RR and TCP_CRR of one cell: medians and (min, max).
#[derive(Debug, Clone, Copy)]
pub struct Traffic {
    pub rr: f64,
    pub crr: f64,
    pub rr_range: (f64, f64),
    pub crr_range: (f64, f64),
}

/// Control-plane samples of one setup at one S.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// Full syncs (kube-proxy only).
    pub full: Option<Vec<Duration>>,
    /// One service added.
    pub add: Vec<Duration>,
    /// One service deleted.
    pub delete: Vec<Duration>,
    /// What was stopped at the time limit (the samples before it are kept).
    pub gave_up: Option<String>,
}

/// kino at one S.
pub struct KinoRow {
    pub services: usize,
    /// VIP traffic.
    pub traffic: Traffic,
    /// CreateService / DeleteService → frontend present / absent on every node.
    pub realized: Change,
    /// CreateService / DeleteService → kino-ipam's answer.
    pub api: Change,
}

/// Everything measured.
pub struct Report {
    pub limit: Option<Traffic>,
    pub limit_again: Option<Traffic>,
    /// Per layout and S: traffic (none when the table could not be loaded in time), changes.
    pub references: Vec<(Layout, usize, Option<Traffic>, Change)>,
    pub kino_limit: Option<Traffic>,
    pub kino: Vec<KinoRow>,
    load_start: String,
    ipvs: String,
    nodes: usize,
}

impl Report {
    /// An empty report; notes the load and IPVS's state now.
    pub fn new(args: &Args) -> Report {
        Report {
            limit: None,
            limit_again: None,
            references: Vec::new(),
            kino_limit: None,
            kino: Vec::new(),
            load_start: load(),
            ipvs: ipvs_state(),
            nodes: args.nodes,
        }
    }

    /// Prints the tables.
    pub fn print(&self, args: &Args) {
        let command: Vec<String> = std::env::args().collect();
        println!(
            "\nbench-services: `{}`; {} run(s) of {} s per cell (medians, min–max), {} change(s) per S; load average {} at the start, {} at the end\n",
            command.join(" "),
            args.runs,
            args.duration,
            args.changes,
            self.load_start,
            load()
        );
        println!(
            "Targets: kino TCP_CRR via VIP ≥ 0.95 × straight to the backend at every S; one service change realized on every node < 10 ms at S = 10 000.\n"
        );
        self.print_traffic();
        println!();
        self.print_changes();
    }

    fn print_traffic(&self) {
        let base = self.limit.or(self.kino_limit);
        println!("| setup | S | TCP_RR /s | ×limit | TCP_CRR /s | ×limit |");
        println!("|---|---|---|---|---|---|");
        let row = |name: &str, s: &str, t: &Traffic, base: Option<Traffic>| {
            let ratio =
                |v: f64, b: Option<f64>| b.map_or("–".to_owned(), |b| format!("{:.2}", v / b));
            println!(
                "| {name} | {s} | {} ({}–{}) | {} | {} ({}–{}) | {} |",
                human(t.rr),
                human(t.rr_range.0),
                human(t.rr_range.1),
                ratio(t.rr, base.map(|b| b.rr)),
                human(t.crr),
                human(t.crr_range.0),
                human(t.crr_range.1),
                ratio(t.crr, base.map(|b| b.crr)),
            );
        };
        if let Some(limit) = &self.limit {
            row(
                "straight to a backend (the limit, bridge node)",
                "–",
                limit,
                base,
            );
        }
        for (layout, s, traffic, change) in &self.references {
            let name = match layout {
                Layout::Nftables => format!("{} via VIP", layout.label()),
                _ => format!("{} via VIP (the last in KUBE-SERVICES)", layout.label()),
            };
            match traffic {
                Some(traffic) => row(&name, &s.to_string(), traffic, base),
                None => println!(
                    "| {name} | {s} | not measured: {} | – | – | – |",
                    change.gave_up.as_deref().unwrap_or("no table")
                ),
            }
        }
        println!("| IPVS | – | {} | – | – | – |", self.ipvs);
        if let Some(kino_limit) = &self.kino_limit {
            row(
                "kino: straight to a backend (kino's limit)",
                "–",
                kino_limit,
                base,
            );
        }
        for k in &self.kino {
            row("kino via VIP", &k.services.to_string(), &k.traffic, base);
            if let Some(kl) = &self.kino_limit {
                println!(
                    "| ↳ kino via VIP ÷ kino straight | {} | | {:.2} | | {:.2} |",
                    k.services,
                    k.traffic.rr / kl.rr,
                    k.traffic.crr / kl.crr
                );
            }
        }
        if let Some(again) = &self.limit_again {
            row(
                "straight to a backend, again (drift check)",
                "–",
                again,
                base,
            );
        }
    }

    fn print_changes(&self) {
        println!("| setup | S | full sync, ms | add one service, ms | delete one service, ms |");
        println!("|---|---|---|---|---|");
        for (layout, s, _, change) in &self.references {
            let label = match &change.gave_up {
                Some(why) => format!("{} (stopped: {why})", layout.label()),
                None => layout.label().to_owned(),
            };
            println!(
                "| {label} | {s} | {} | {} | {} |",
                change.full.as_deref().map_or("–".to_owned(), spread),
                spread(&change.add),
                spread(&change.delete),
            );
        }
        for k in &self.kino {
            println!(
                "| kino: request → frontend in every node's agent | {} | – | {} | {} |",
                k.services,
                spread(&k.realized.add),
                spread(&k.realized.delete)
            );
            println!(
                "| kino: request → kino-ipam's answer | {} | – | {} | {} |",
                k.services,
                spread(&k.api.add),
                spread(&k.api.delete)
            );
        }
        println!(
            "\nFull sync: the whole table through the tool (`iptables-restore --noflush --counters`, `nft -f`), as kube-proxy writes it at every sync before 1.27 and hourly since. \
             One service, iptables: kube-proxy's partial restore (≥ 1.27): KUBE-SERVICES rewritten whole (S + 1 rules) plus that service's KUBE-SVC/KUBE-SEP chains (created, or flushed and deleted). \
             One service, nftables: one `nft -f` transaction with its `service-ips` element and its 11 chains. \
             Times are wall time of the tool, process start included. \
             kino: CreateService / DeleteService on kino-ipam (median (min–max) ms) until the frontend is present / absent in the load balancer of every node's agent ({} node(s)).",
            self.nodes
        );
    }
}

/// `median (min–max)` in ms.
fn spread(samples: &[Duration]) -> String {
    if samples.is_empty() {
        return "–".to_owned();
    }
    let values: Vec<f64> = samples.iter().map(|d| ms(*d)).collect();
    let lo = values.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = values.iter().cloned().fold(0.0, f64::max);
    format!(
        "{} ({}–{})",
        short(kino_integration_tests::stats::median(&values)),
        short(lo),
        short(hi)
    )
}

fn short(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms:.1}")
    }
}

fn human(value: f64) -> String {
    if value >= 10_000.0 {
        format!("{:.1}k", value / 1000.0)
    } else {
        format!("{value:.0}")
    }
}

/// The 1/5/15-minute load averages.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Why there is no IPVS row of numbers (or that there could be).
fn ipvs_state() -> String {
    if std::path::Path::new("/proc/net/ip_vs").exists() {
        return "available on this kernel but not measured by this benchmark".to_owned();
    }
    let config = std::process::Command::new("sh")
        .args([
            "-c",
            "zcat /proc/config.gz 2>/dev/null | grep -E '^(# )?CONFIG_IP_VS[ =]'",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let modules = std::path::Path::new("/lib/modules").exists();
    let reason = if config.contains("is not set") {
        format!("kernel built without it (`{config}`)")
    } else if config.is_empty() {
        "no /proc/net/ip_vs and no kernel config to say why".to_owned()
    } else {
        format!("`{config}` but no /proc/net/ip_vs")
    };
    format!(
        "not available on this kernel: {reason}; no /proc/net/ip_vs{}",
        if modules {
            ""
        } else {
            ", no /lib/modules to load it from"
        }
    )
}
