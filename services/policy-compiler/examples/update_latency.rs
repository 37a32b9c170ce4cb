//! In-process measurement of what one policy change costs the compiler with N CIDR entries
//! already compiled for the endpoints (the compiler's share of bench-policy's
//! "Import → enforced", without the datastore, the network or the kernel).
//!
//! The state is bench-policy's: pods `client`, `server`, `prober` on one node; `bench-base`
//! (client → server); N /32 CIDRs allowed into the server (`fromCIDR`) and out of the client
//! (`toCIDR`) in documents of 5 000 (`bench-cidrs-K`). Timed: the view applying the upsert
//! (then the delete) of `bench-probe` (server ingress from the prober) — recompilation,
//! ipcache and history — plus the node's policy stream computing its messages (the delta
//! the agent gets). Each is the median of `--samples` runs.
//!
//! ```text
//! cargo run --release -p kino-policy-compiler --example update_latency -- [--sizes 0,1000,10000,100000] [--samples 9]
//! ```
//!
//! Run it in release: a debug build is 10-30 times slower and says little.

use std::time::{Duration, Instant};

use kino_policy_compiler::compile::CompilerConfig;
use kino_policy_compiler::ipcache::EndpointRef;
use kino_policy_compiler::labels::Labels;
use kino_policy_compiler::policy::{Policy, PolicyKey, parse_documents};
use kino_policy_compiler::stream::{Interest, Subscriber};
use kino_policy_compiler::view::{Change, EndpointRecord, View};

const NAMESPACE: &str = "bench";
const NODE: &str = "n1";
const CHUNK: usize = 5000;

fn policy(name: &str, specs: &str) -> Policy {
    let text = format!(
        r#"{{"apiVersion": "kino.io/v1", "kind": "KinoNetworkPolicy",
            "metadata": {{"name": "{name}", "namespace": "{NAMESPACE}"}}, "specs": [{specs}]}}"#
    );
    let mut out = parse_documents(&text, NAMESPACE);
    assert!(out.errors.is_empty(), "{name}: {:?}", out.errors);
    out.policies.remove(0)
}

fn selects(app: &str) -> String {
    format!(r#"{{"matchLabels": {{"app": "{app}"}}}}"#)
}

/// Peer `i` as a /32 of 100.64.0.0/10, as bench-policy numbers them.
fn peer(i: usize) -> String {
    let addr = (100u32 << 24 | 64 << 16) + i as u32;
    format!("{}/32", std::net::Ipv4Addr::from(addr))
}

fn chunk(k: usize, first: usize, len: usize) -> Policy {
    let cidrs: Vec<String> = (first..first + len)
        .map(|i| format!("\"{}\"", peer(i)))
        .collect();
    let cidrs = cidrs.join(",");
    policy(
        &format!("bench-cidrs-{k}"),
        &format!(
            r#"{{"endpointSelector": {}, "ingress": [{{"fromCIDR": [{cidrs}]}}]}},
               {{"endpointSelector": {}, "egress": [{{"toCIDR": [{cidrs}]}}]}}"#,
            selects("server"),
            selects("client")
        ),
    )
}

fn probe() -> Policy {
    policy(
        "bench-probe",
        &format!(
            r#"{{"endpointSelector": {}, "ingress": [{{"fromEndpoints": [{}]}}]}}"#,
            selects("server"),
            selects("prober")
        ),
    )
}

fn base() -> Policy {
    policy(
        "bench-base",
        &format!(
            r#"{{"endpointSelector": {}, "ingress": [{{"fromEndpoints": [{}]}}]}},
               {{"endpointSelector": {}, "egress": [{{"toEndpoints": [{}]}}]}}"#,
            selects("server"),
            selects("client"),
            selects("client"),
            selects("server")
        ),
    )
}

fn labels(app: &str) -> Labels {
    Labels::parse_list(&format!(
        "container:namespace={NAMESPACE},container:app={app}"
    ))
    .expect("labels")
}

struct Setup {
    view: View,
    subscriber: Subscriber,
    revision: i64,
    install: Duration,
}

fn setup(n: usize) -> Setup {
    let mut view = View::new(CompilerConfig::default(), 10_000);
    let mut changes = Vec::new();
    for (i, app) in ["client", "server", "prober"].iter().enumerate() {
        let identity = 300 + i as u32;
        changes.push(Change::UpsertIdentity(identity, labels(app)));
        changes.push(Change::UpsertEndpoint(EndpointRecord {
            key: EndpointRef {
                node_name: NODE.into(),
                endpoint_id: i as u32 + 1,
                ..EndpointRef::default()
            },
            identity,
            addresses: vec![format!("10.0.0.{}", i + 1).parse().expect("ip")],
        }));
    }
    changes.push(Change::UpsertPolicy(Box::new(base())));
    view.apply(1, changes);
    let mut subscriber = Subscriber::new(Interest::Node(NODE.into()), None, &view);
    subscriber.catch_up(&view);
    // Installed like bench-policy: one document of 5 000 at a time, each a step the
    // stream follows.
    let started = Instant::now();
    let mut revision = 1;
    for (k, first) in (0..n).step_by(CHUNK).enumerate() {
        revision += 1;
        let len = CHUNK.min(n - first);
        view.apply(
            revision,
            vec![Change::UpsertPolicy(Box::new(chunk(k, first, len)))],
        );
        subscriber.catch_up(&view);
    }
    let install = started.elapsed();
    let server = view.compiler().policy(301).expect("server policy");
    assert_eq!(server.entries.len(), n + 2, "server: N + client + host");
    Setup {
        view,
        subscriber,
        revision,
        install,
    }
}

/// One timed step: (apply, stream, entries the stream sent).
fn step(s: &mut Setup, change: Change) -> (Duration, Duration, usize) {
    s.revision += 1;
    let started = Instant::now();
    s.view.apply(s.revision, vec![change]);
    let applied = started.elapsed();
    let messages = s.subscriber.catch_up(&s.view);
    let streamed = started.elapsed() - applied;
    let sent = messages
        .iter()
        .flat_map(|m| &m.policy_updates)
        .map(|u| u.upserts.len() + u.deletes.len())
        .sum();
    (applied, streamed, sent)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn main() {
    let mut sizes = vec![0, 1000, 10_000, 100_000];
    let mut samples = 9;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--sizes" => {
                sizes = args
                    .next()
                    .expect("--sizes N,N,…")
                    .split(',')
                    .map(|s| s.parse().expect("a size"))
                    .collect()
            }
            "--samples" => samples = args.next().expect("--samples N").parse().expect("N"),
            other => panic!("unknown argument {other} (--sizes, --samples)"),
        }
    }
    println!(
        "| N | install N (s) | upsert bench-probe: total (ms) | compile (ms) | stream (ms) | delete bench-probe: total (ms) | compile (ms) | stream (ms) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in sizes {
        let mut s = setup(n);
        let key = PolicyKey {
            namespace: NAMESPACE.into(),
            name: "bench-probe".into(),
        };
        let (mut up, mut up_apply, mut up_stream) = (Vec::new(), Vec::new(), Vec::new());
        let (mut del, mut del_apply, mut del_stream) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..samples {
            let (a, b, sent) = step(&mut s, Change::UpsertPolicy(Box::new(probe())));
            assert_eq!(sent, 1, "the upsert streams the prober's one entry");
            up.push(a + b);
            up_apply.push(a);
            up_stream.push(b);
            let (a, b, sent) = step(&mut s, Change::DeletePolicy(key.clone()));
            assert_eq!(sent, 1, "the delete streams the prober's one entry");
            del.push(a + b);
            del_apply.push(a);
            del_stream.push(b);
        }
        println!(
            "| {n} | {:.2} | {} | {} | {} | {} | {} | {} |",
            s.install.as_secs_f64(),
            ms(median(up)),
            ms(median(up_apply)),
            ms(median(up_stream)),
            ms(median(del)),
            ms(median(del_apply)),
            ms(median(del_stream)),
        );
    }
}
