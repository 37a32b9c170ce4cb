//! The run: sets up every world, then for each N installs it everywhere, measures every
//! setup in a rotating order, times policy changes, and prints the report. A kino failure
//! at some N stops kino only; the other setups go on.

use std::time::{Duration, Instant};

use anyhow::ensure;
use kino_integration_tests::bin_dir;
use kino_integration_tests::world::unique_prefix;

use crate::baselines::{Filter, RoutedPair};
use crate::kino::{KinoWorld, base_policy};
use crate::measure::{Setup, Test, measure};
use crate::report::{Results, fmt_ms, print_report, push};
use crate::{Args, PEERS_SPACE, tool_exists};

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let mut sizes = args.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    ensure!(!sizes.is_empty(), "--sizes is empty");
    ensure!(args.runs > 0, "--runs must be at least 1");
    let largest = *sizes.last().unwrap() as u64 + 1;
    ensure!(
        largest << (32 - args.cidr_prefix_len) <= PEERS_SPACE,
        "{largest} prefixes of /{} do not fit in 100.64.0.0/10; use a longer --cidr-prefix-len",
        args.cidr_prefix_len
    );
    let legacy = !args.no_legacy && tool_exists("iptables-legacy");
    let prefix = unique_prefix("bp");

    eprintln!("setting up: routed namespaces (no filter, iptables, nftables) …");
    let mut pairs: Vec<(Setup, RoutedPair)> = Vec::new();
    pairs.push((
        Setup::NoFilter,
        RoutedPair::new(&prefix, "n", Filter::None)?,
    ));
    if legacy {
        pairs.push((
            Setup::IptablesLegacy,
            RoutedPair::new(&prefix, "l", Filter::IptablesLegacy)?,
        ));
    }
    pairs.push((
        Setup::IptablesNft,
        RoutedPair::new(&prefix, "i", Filter::IptablesNft)?,
    ));
    pairs.push((
        Setup::NftSet,
        RoutedPair::new(&prefix, "s", Filter::NftSet)?,
    ));
    for (_, pair) in &mut pairs {
        pair.start_server(args.cpu).await?;
    }
    eprintln!("setting up: the kino suite and five pods …");
    let mut world = KinoWorld::start(args.cpu).await?;
    let revision = world.import(&base_policy()).await?;
    world
        .wait_realized(
            &["server", "client"],
            revision,
            Duration::from_millis(20),
            Duration::from_secs(60),
        )
        .await?;
    world.check_enforcement().await?;
    // Dropped (suite stopped) if it cannot reach some N, so the other setups go on being
    // measured on a quiet machine.
    let mut kino = Some(world);

    let mut setups: Vec<Setup> = vec![Setup::NoFilter, Setup::KinoNoPolicy, Setup::Kino];
    setups.extend(
        pairs
            .iter()
            .map(|(s, _)| *s)
            .filter(|s| *s != Setup::NoFilter),
    );
    setups.sort();

    let mut results = Results::default();
    for &n in &sizes {
        eprintln!("== N = {n}: installing …");
        if let Some(world) = kino.as_mut()
            && let Err(e) = install_kino(world, n, &args, &mut results).await
        {
            fail_kino(&mut kino, &mut results, n, e);
        }
        for (setup, pair) in &pairs {
            let took = pair.install(n, args.cidr_prefix_len).await?;
            if *setup != Setup::NoFilter {
                eprintln!("   {}: loaded in {took:.2} s", setup.title());
            }
            results.installs.insert((n, *setup), took);
        }

        if args.hold {
            hold(&pairs, kino.as_ref());
            std::future::pending::<()>().await;
        }
        let drops_before = match kino.as_mut() {
            Some(world) => world.measured_drops().await.ok(),
            None => None,
        };
        for run in 0..args.runs {
            // Each run starts with the next setup: no setup is always measured first (the
            // first measurement of a run came out a few percent faster, whatever it was).
            let order: Vec<Setup> = setups
                .iter()
                .cycle()
                .skip(run % setups.len().max(1))
                .take(setups.len())
                .copied()
                .collect();
            for &setup in &order {
                let kino_setup = matches!(setup, Setup::Kino | Setup::KinoNoPolicy);
                let ep = match (setup, kino.as_ref()) {
                    (Setup::Kino, Some(world)) => world.endpoints(false),
                    (Setup::KinoNoPolicy, Some(world)) => world.endpoints(true),
                    (Setup::Kino | Setup::KinoNoPolicy, None) => continue,
                    (other, _) => pairs
                        .iter()
                        .find(|(s, _)| *s == other)
                        .map(|(_, p)| p.endpoints())
                        .expect("a pair per setup"),
                };
                for test in [Test::Rr, Test::Crr] {
                    let agent_before = kino.as_ref().map_or(0.0, |w| w.agent_cpu_seconds());
                    let started = Instant::now();
                    let sample = match measure(&ep, test, args.duration, args.cpu).await {
                        Ok(sample) => sample,
                        Err(e) if kino_setup => {
                            fail_kino(&mut kino, &mut results, n, e);
                            break;
                        }
                        Err(e) => return Err(e),
                    };
                    let mut agent = String::new();
                    if let (true, Some(world)) = (kino_setup, kino.as_ref()) {
                        let share = (world.agent_cpu_seconds() - agent_before)
                            / started.elapsed().as_secs_f64();
                        results
                            .agent_cpu
                            .entry((n, setup, test))
                            .or_default()
                            .push(share);
                        agent = format!("  (kino-agent {:.0} % of a CPU)", share * 100.0);
                    }
                    let slow = if sample.slow > 0 {
                        format!(
                            "  [{} transactions over 100 ms, slowest {:.0} ms]",
                            sample.slow, sample.max_ms
                        )
                    } else {
                        String::new()
                    };
                    eprintln!(
                        "   run {}/{} {:<28} {:<4} {:>10.0}/s{agent}{slow}",
                        run + 1,
                        args.runs,
                        setup.title(),
                        test.arg(),
                        sample.rate
                    );
                    results
                        .rates
                        .entry((n, setup, test))
                        .or_default()
                        .push(sample.rate);
                    if kino_setup {
                        *results.kino_transactions.entry(n).or_default() +=
                            sample.rate * args.duration;
                    }
                    *results.slow.entry((n, setup, test)).or_default() += sample.slow;
                }
            }
        }

        if let (Some(world), Some(before)) = (kino.as_mut(), drops_before)
            && let Ok(after) = world.measured_drops().await
        {
            let dropped: Vec<String> = after
                .iter()
                .filter_map(|(k, a)| {
                    let d = a - before.get(k).copied().unwrap_or(0);
                    (d > 0).then(|| format!("{k}: {d}"))
                })
                .collect();
            eprintln!(
                "   kino datapath drops during the traffic: {}",
                if dropped.is_empty() {
                    "none".to_owned()
                } else {
                    dropped.join(", ")
                }
            );
            // The policy allows every measured connection (client → server, and nothing
            // is enforced on the free pair): any POLICY_DENIED drop is an allowed packet —
            // in practice a reply whose conntrack entry was gone — lost.
            let allowed: u64 = after
                .iter()
                .filter(|(k, _)| k.ends_with("POLICY_DENIED"))
                .map(|(k, a)| a - before.get(k).copied().unwrap_or(0))
                .sum();
            eprintln!(
                "   kino allowed replies dropped (POLICY_DENIED on allowed traffic): {allowed} of ~{:.0} connections and transactions",
                results.kino_transactions.get(&n).copied().unwrap_or(0.0)
            );
            results.allowed_drops.insert(n, allowed);
            results.drops.insert(n, dropped);
        }

        eprintln!(
            "   policy update timing ({} samples) …",
            args.update_samples
        );
        if let Some(world) = kino.as_mut()
            && let Err(e) = kino_updates(world, n, &args, &mut results).await
        {
            fail_kino(&mut kino, &mut results, n, e);
        }
        for (setup, pair) in &pairs {
            let key: (&'static str, &'static str) = match setup {
                Setup::IptablesLegacy => ("legacy add", "legacy del"),
                Setup::IptablesNft => ("iptnft add", "iptnft del"),
                Setup::NftSet => ("nft add", "nft del"),
                _ => continue,
            };
            for _ in 0..args.update_samples {
                let (add, del) = pair.update_once().await?;
                push(&mut results, n, key.0, add);
                push(&mut results, n, key.1, del);
            }
        }
    }

    print_report(&args, &sizes, &setups, &results);
    drop(kino);
    drop(pairs);
    Ok(())
}

/// Prints the client namespace and server address of every setup (for `--hold`).
fn hold(pairs: &[(Setup, RoutedPair)], kino: Option<&KinoWorld>) {
    let rr = bin_dir().join("kino-rr");
    let mut lines = Vec::new();
    for (setup, pair) in pairs {
        lines.push((setup.title(), pair.endpoints()));
    }
    if let Some(world) = kino {
        lines.push((Setup::KinoNoPolicy.title(), world.endpoints(true)));
        lines.push((Setup::Kino.title(), world.endpoints(false)));
        eprintln!(
            "kino suite: {} (logs), agent socket {}, node namespace {}",
            world.suite.dir.path().display(),
            world.suite.agent_socket().display(),
            world.suite.node_name()
        );
    }
    for (title, ep) in lines {
        eprintln!(
            "{title}: ip netns exec {} taskset -c 0 {} client --connect {} --mode crr --seconds 5",
            ep.client_netns,
            rr.display(),
            ep.server
        );
    }
    eprintln!("holding; Ctrl-C removes everything");
}

/// Brings the kino world to N entries and records the install time and the map sizes.
async fn install_kino(
    world: &mut KinoWorld,
    n: usize,
    args: &Args,
    results: &mut Results,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(args.realize_timeout);
    let took = world
        .set_size(n, args.cidrs_per_policy, args.cidr_prefix_len, timeout)
        .await?;
    results.installs.insert((n, Setup::Kino), took);
    world.check_enforcement().await?;
    let entries = world.map_entries().await?;
    eprintln!(
        "   kino: {took:.2} s from the first import to both endpoints realizing it; policy map: server {} entries, client {}",
        entries.0, entries.1
    );
    results.entries.insert(n, entries);
    Ok(())
}

/// Times policy changes at N: end to end (prober) and to the agent's realized revision.
async fn kino_updates(
    world: &mut KinoWorld,
    n: usize,
    args: &Args,
    results: &mut Results,
) -> anyhow::Result<()> {
    for _ in 0..args.update_samples {
        let (e2e, api) = world.update_probe(true).await?;
        push(results, n, "kino add e2e", e2e);
        push(results, n, "kino add api", api);
        let (e2e, api) = world.update_probe(false).await?;
        push(results, n, "kino del e2e", e2e);
        push(results, n, "kino del api", api);
    }
    for _ in 0..args.update_samples {
        let t = world.update_realized(true).await?;
        push(results, n, "kino add realized", t);
        let t = world.update_realized(false).await?;
        push(results, n, "kino del realized", t);
    }
    eprintln!(
        "   kino: import → allowed {} ms, delete → denied {} ms, import → realized {} ms",
        fmt_ms(&results.updates[&(n, "kino add e2e".to_owned())]),
        fmt_ms(&results.updates[&(n, "kino del e2e".to_owned())]),
        fmt_ms(&results.updates[&(n, "kino add realized".to_owned())]),
    );
    Ok(())
}

/// Records that kino failed at N (printing the whole error, logs included) and stops its
/// suite, so the remaining setups are measured without it.
fn fail_kino(kino: &mut Option<KinoWorld>, results: &mut Results, n: usize, e: anyhow::Error) {
    eprintln!("   kino FAILED at N = {n}: {e:#}");
    let first = e.to_string();
    let short = first.lines().next().unwrap_or_default().to_owned();
    results.kino_failure.get_or_insert((n, short));
    *kino = None;
}
