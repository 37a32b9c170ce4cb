//! The report: results gathered over the run (rates, update and install times, drops, map
//! sizes) and the Markdown tables printed at the end (ratios to "no filter", absolute
//! rates, the agent's CPU, policy change and install times).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kino_integration_tests::stats::median;

use crate::Args;
use crate::measure::{Setup, Test};

#[derive(Default)]
pub(crate) struct Results {
    /// Transactions over 100 ms (lost packets), summed over runs.
    pub(crate) slow: BTreeMap<(usize, Setup, Test), u64>,
    /// The N at which kino failed (its suite stopped then), and why.
    pub(crate) kino_failure: Option<(usize, String)>,
    /// kino-agent's CPU time over a kino measurement ÷ its wall time, per run.
    pub(crate) agent_cpu: BTreeMap<(usize, Setup, Test), Vec<f64>>,
    /// Rates per (N, setup, test), one per run.
    pub(crate) rates: BTreeMap<(usize, Setup, Test), Vec<f64>>,
    /// Seconds per (N, what), one per sample.
    pub(crate) updates: BTreeMap<(usize, String), Vec<f64>>,
    /// Seconds to install N, per (N, setup).
    pub(crate) installs: BTreeMap<(usize, Setup), f64>,
    /// Datapath drops of the measured kino pods during the traffic, per N.
    pub(crate) drops: BTreeMap<usize, Vec<String>>,
    /// Allowed packets the kino datapath dropped as POLICY_DENIED during the traffic, per N
    /// (every measured connection is allowed, so each is an allowed reply lost).
    pub(crate) allowed_drops: BTreeMap<usize, u64>,
    /// Connections and transactions measured on the kino pods, per N (rate × duration).
    pub(crate) kino_transactions: BTreeMap<usize, f64>,
    /// Policy-map entries (server ingress map, client egress map) per N.
    pub(crate) entries: BTreeMap<usize, (usize, usize)>,
}

pub(crate) fn push(results: &mut Results, n: usize, what: &str, value: f64) {
    results
        .updates
        .entry((n, what.to_owned()))
        .or_default()
        .push(value);
}

fn fmt_rate(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.2}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

pub(crate) fn fmt_ms(values: &[f64]) -> String {
    if values.is_empty() {
        return "–".to_owned();
    }
    let (lo, hi) = min_max(values);
    format!(
        "{:.1} ({:.1}–{:.1})",
        median(values) * 1000.0,
        lo * 1000.0,
        hi * 1000.0
    )
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        })
}

pub(crate) fn print_report(args: &Args, sizes: &[usize], setups: &[Setup], r: &Results) {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    println!(
        "Command: `{command}` — {} run(s) of {} s per point, client and server pinned to CPU {}; cells: median ratio to \"no filter\" of the same N (min–max over runs).",
        args.runs, args.duration, args.cpu
    );
    if let Some((n, why)) = &r.kino_failure {
        println!();
        println!(
            "**kino failed at N = {n}; its suite was stopped and its cells are empty from there:** {why}"
        );
    }
    for test in [Test::Rr, Test::Crr] {
        println!();
        println!("{}", test.title());
        println!();
        let mut header = String::from("| N |");
        let mut rule = String::from("|---|");
        for s in setups {
            if *s == Setup::NoFilter {
                header.push_str(" no filter (/s) |");
            } else {
                let _ = write!(header, " {} |", s.title());
            }
            rule.push_str("---|");
        }
        println!("{header}");
        println!("{rule}");
        for &n in sizes {
            let base = r
                .rates
                .get(&(n, Setup::NoFilter, test))
                .map(|v| median(v))
                .unwrap_or(f64::NAN);
            let mut line = format!("| {n} |");
            for s in setups {
                let Some(v) = r.rates.get(&(n, *s, test)) else {
                    line.push_str(" – |");
                    continue;
                };
                let (lo, hi) = min_max(v);
                if *s == Setup::NoFilter {
                    let _ = write!(
                        line,
                        " {} ({}–{}) |",
                        fmt_rate(median(v)),
                        fmt_rate(lo),
                        fmt_rate(hi)
                    );
                } else {
                    let _ = write!(
                        line,
                        " {:.3} ({:.3}–{:.3}) |",
                        median(v) / base,
                        lo / base,
                        hi / base
                    );
                }
            }
            println!("{line}");
        }
        if sizes.len() > 1 {
            let first = median(&r.rates[&(sizes[0], Setup::NoFilter, test)]);
            let last = median(&r.rates[&(*sizes.last().unwrap(), Setup::NoFilter, test)]);
            println!();
            println!(
                "Drift check: no filter at the end / at the start of the run = {:.2}",
                last / first
            );
        }
    }

    println!();
    println!("Absolute medians (/s), TCP_RR · TCP_CRR:");
    println!();
    let mut header = String::from("| N |");
    let mut rule = String::from("|---|");
    for s in setups {
        let _ = write!(header, " {} |", s.title());
        rule.push_str("---|");
    }
    println!("{header}");
    println!("{rule}");
    for &n in sizes {
        let mut line = format!("| {n} |");
        for s in setups {
            let cell = |t: Test| {
                r.rates
                    .get(&(n, *s, t))
                    .map(|v| fmt_rate(median(v)))
                    .unwrap_or_else(|| "–".into())
            };
            let _ = write!(line, " {} · {} |", cell(Test::Rr), cell(Test::Crr));
        }
        println!("{line}");
    }

    if !r.agent_cpu.is_empty() {
        println!();
        println!("kino-agent CPU during the kino measurements (% of one CPU, median):");
        println!();
        println!(
            "| N | no policy, TCP_RR | no policy, TCP_CRR | N entries, TCP_RR | N entries, TCP_CRR |"
        );
        println!("|---|---|---|---|---|");
        for &n in sizes {
            let cell = |s: Setup, t: Test| {
                r.agent_cpu
                    .get(&(n, s, t))
                    .map(|v| format!("{:.0}", median(v) * 100.0))
                    .unwrap_or_else(|| "–".into())
            };
            println!(
                "| {n} | {} | {} | {} | {} |",
                cell(Setup::KinoNoPolicy, Test::Rr),
                cell(Setup::KinoNoPolicy, Test::Crr),
                cell(Setup::Kino, Test::Rr),
                cell(Setup::Kino, Test::Crr)
            );
        }
    }
    let slow: Vec<String> = r
        .slow
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|((n, s, t), count)| {
            format!(
                "{} {} at N = {n}: {count}",
                s.title(),
                t.arg().to_uppercase()
            )
        })
        .collect();
    if !slow.is_empty() {
        println!();
        println!(
            "Transactions over 100 ms (a lost packet retransmitted): {}",
            slow.join("; ")
        );
    }
    if !r.allowed_drops.is_empty() {
        let per_n: Vec<String> = r
            .allowed_drops
            .iter()
            .map(|(n, d)| {
                format!(
                    "N = {n}: {d} of ~{:.0}",
                    r.kino_transactions.get(n).copied().unwrap_or(0.0)
                )
            })
            .collect();
        println!();
        println!(
            "kino allowed replies dropped (POLICY_DENIED during allowed traffic; must be 0): {}",
            per_n.join("; ")
        );
    }
    let drops: Vec<String> = r
        .drops
        .iter()
        .filter(|(_, d)| !d.is_empty())
        .map(|(n, d)| format!("N = {n}: {}", d.join(", ")))
        .collect();
    if !drops.is_empty() {
        println!();
        println!(
            "kino datapath drops during the traffic: {}",
            drops.join("; ")
        );
    }

    println!();
    println!(
        "Policy change with N in place, ms, median (min–max) of {} samples:",
        args.update_samples
    );
    println!();
    let has = |what: &str| r.updates.keys().any(|(_, w)| *w == what);
    let mut header = String::from(
        "| N | kino map entries (server in / client out) | kino Import → connect allowed | kino Delete → connect denied | kino Import → agent realized | kino Delete → agent realized | kino API call itself (Import / Delete) |",
    );
    let mut rule = String::from("|---|---|---|---|---|---|---|");
    let others = [
        ("legacy", "iptables-legacy -A / -D"),
        ("iptnft", "iptables-nft -A / -D"),
        ("nft", "nft add / delete element"),
    ];
    for (key, title) in others {
        if has(&format!("{key} add")) {
            let _ = write!(header, " {title} |");
            rule.push_str("---|");
        }
    }
    println!("{header}");
    println!("{rule}");
    for &n in sizes {
        let get = |what: &str| {
            r.updates
                .get(&(n, what.to_owned()))
                .map(|v| fmt_ms(v))
                .unwrap_or_else(|| "–".into())
        };
        let entries = r
            .entries
            .get(&n)
            .map_or_else(|| "–".to_owned(), |(s, c)| format!("{s} / {c}"));
        let mut line = format!(
            "| {n} | {entries} | {} | {} | {} | {} | {} / {} |",
            get("kino add e2e"),
            get("kino del e2e"),
            get("kino add realized"),
            get("kino del realized"),
            get("kino add api"),
            get("kino del api"),
        );
        for (key, _) in others {
            if has(&format!("{key} add")) {
                let _ = write!(
                    line,
                    " {} / {} |",
                    get(&format!("{key} add")),
                    get(&format!("{key} del"))
                );
            }
        }
        println!("{line}");
    }

    println!();
    println!(
        "Installing N (seconds; kino: first ImportPolicies → both endpoints realize the last revision; the others: one restore/load):"
    );
    println!();
    let loaders: Vec<Setup> = setups
        .iter()
        .copied()
        .filter(|s| !matches!(s, Setup::NoFilter | Setup::KinoNoPolicy))
        .collect();
    let mut header = String::from("| N |");
    let mut rule = String::from("|---|");
    for s in &loaders {
        let _ = write!(header, " {} |", s.title());
        rule.push_str("---|");
    }
    println!("{header}");
    println!("{rule}");
    for &n in sizes {
        let mut line = format!("| {n} |");
        for s in &loaders {
            match r.installs.get(&(n, *s)) {
                Some(t) => {
                    let _ = write!(line, " {t:.2} |");
                }
                None => line.push_str(" – |"),
            }
        }
        println!("{line}");
    }
}
