//! bench-datastore: compare-and-swap updates/s and watch delivery latency with many watchers,
//! for the gateway on the embedded backend, the gateway on etcd, and etcd-client talking to
//! etcd directly (the raw baseline) — all measured in the same run, printed as a table.
//!
//! cargo run --release -p kino-integration-tests --bin bench-datastore

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use etcd_client::{Compare, CompareOp, Txn, TxnOp, WatchOptions};
use futures::StreamExt;
use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
use kino_api::datastore::{CreateRequest, Resource, UpdateRequest, WatchRequest};
use kino_datastore_gateway::grpc::DatastoreGrpc;
use kino_datastore_gateway::store::Store;
use kino_datastore_gateway::store::embedded::{EmbeddedOptions, EmbeddedStore};
use kino_datastore_gateway::store::etcd::{EtcdOptions, EtcdStore};
use kino_datastore_gateway::{Gateway, Limits};
use kino_integration_tests::etcd::Etcd;
use kino_integration_tests::stats::percentile;
use tokio::sync::Mutex;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(about = "Datastore benchmark: CAS updates/s and watch latency, gateway vs raw etcd")]
struct Args {
    /// Seconds per CAS measurement.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Concurrency levels of the CAS measurement.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    concurrency: Vec<usize>,
    /// Watchers in the latency measurement.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Writes observed by the watchers.
    #[arg(long, default_value_t = 200)]
    writes: usize,
    /// Use this etcd instead of starting a private one.
    #[arg(long)]
    etcd_endpoint: Option<String>,
}

#[derive(Default, Clone)]
struct Row {
    name: &'static str,
    cas: Vec<(usize, f64, Duration, Duration)>,
    watch_p50: Duration,
    watch_p99: Duration,
    delivered: usize,
    expected: usize,
}

fn resource(name: &str, n: u64) -> Resource {
    Resource {
        kind: "Node".into(),
        name: name.into(),
        spec: Some(prost_types_any(n)),
        ..Resource::default()
    }
}

fn prost_types_any(n: u64) -> prost_types::Any {
    prost_types::Any {
        type_url: "type.googleapis.com/kino.bench.Counter".into(),
        value: n.to_le_bytes().to_vec(),
    }
}

/// Serves a gateway over `store` on loopback and returns a client channel.
async fn serve_gateway(store: Arc<dyn Store>) -> anyhow::Result<Channel> {
    let gateway = Arc::new(Gateway::new(store, Limits::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DatastoreGrpc::new(gateway).into_server())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?)
}

async fn gateway_cas(
    channel: &Channel,
    workers: usize,
    seconds: u64,
) -> anyhow::Result<(f64, Duration, Duration)> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mut client = DatastoreServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let name = format!("cas-{workers}-{w}");
            let mut rev = client
                .create(CreateRequest {
                    resource: Some(resource(&name, 0)),
                })
                .await?
                .into_inner()
                .resource
                .context("no resource")?
                .revision;
            let mut lat = Vec::new();
            let mut n = 0;
            while Instant::now() < deadline {
                n += 1;
                let t = Instant::now();
                rev = client
                    .update(UpdateRequest {
                        resource: Some(resource(&name, n)),
                        expected_revision: rev,
                    })
                    .await?
                    .into_inner()
                    .resource
                    .context("no resource")?
                    .revision;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    summarize(tasks, seconds).await
}

async fn raw_cas(
    client: &etcd_client::Client,
    prefix: &str,
    workers: usize,
    seconds: u64,
) -> anyhow::Result<(f64, Duration, Duration)> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mut client = client.clone();
        let key = format!("{prefix}cas-{workers}-{w}");
        tasks.push(tokio::spawn(async move {
            let mut rev = client
                .put(key.clone(), 0u64.to_le_bytes().to_vec(), None)
                .await?
                .header()
                .context("no header")?
                .revision();
            let mut lat = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let t = Instant::now();
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
                    .and_then([TxnOp::put(key.clone(), n.to_le_bytes().to_vec(), None)]);
                let resp = client.txn(txn).await?;
                anyhow::ensure!(resp.succeeded(), "raw CAS lost on a private key");
                rev = resp.header().context("no header")?.revision();
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    summarize(tasks, seconds).await
}

async fn summarize(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Vec<Duration>>>>,
    seconds: u64,
) -> anyhow::Result<(f64, Duration, Duration)> {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((
        all.len() as f64 / seconds as f64,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
    ))
}

/// Receive times per watcher, indexed by write number.
type Arrivals = Arc<Mutex<Vec<Vec<(i64, Instant)>>>>;

async fn gateway_watch(
    channel: &Channel,
    watchers: usize,
    writes: usize,
) -> anyhow::Result<(Duration, Duration, usize)> {
    let arrivals: Arrivals = Arc::new(Mutex::new(vec![Vec::new(); watchers]));
    let mut tasks = Vec::new();
    for i in 0..watchers {
        let mut client = DatastoreServiceClient::new(channel.clone());
        let mut stream = client
            .watch(WatchRequest {
                kind: "Node".into(),
                name_prefix: "watched".into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let arrivals = arrivals.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = 0;
            while seen < writes {
                let Ok(Some(Ok(resp))) =
                    tokio::time::timeout(Duration::from_secs(10), stream.next()).await
                else {
                    break;
                };
                let now = Instant::now();
                let mut a = arrivals.lock().await;
                for e in resp.events {
                    a[i].push((e.resource.map(|r| r.revision).unwrap_or(0), now));
                    seen += 1;
                }
            }
        }));
    }
    let mut writer = DatastoreServiceClient::new(channel.clone());
    let mut acks = Vec::new();
    let mut rev = 0;
    for n in 0..writes as u64 {
        let r = if n == 0 {
            writer
                .create(CreateRequest {
                    resource: Some(resource("watched", n)),
                })
                .await?
        } else {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let r = writer
                .update(UpdateRequest {
                    resource: Some(resource("watched", n)),
                    expected_revision: rev,
                })
                .await?;
            r.map(|u| kino_api::datastore::CreateResponse {
                resource: u.resource,
            })
        };
        let now = Instant::now();
        rev = r.into_inner().resource.context("no resource")?.revision;
        acks.push((rev, now));
    }
    for t in tasks {
        t.await?;
    }
    latencies(&acks, &arrivals.lock().await)
}

async fn raw_watch(
    client: &etcd_client::Client,
    prefix: &str,
    watchers: usize,
    writes: usize,
) -> anyhow::Result<(Duration, Duration, usize)> {
    let arrivals: Arrivals = Arc::new(Mutex::new(vec![Vec::new(); watchers]));
    let key = format!("{prefix}watched");
    let mut tasks = Vec::new();
    for i in 0..watchers {
        let mut stream = client
            .clone()
            .watch(key.clone(), Some(WatchOptions::new()))
            .await?;
        let arrivals = arrivals.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = 0;
            while seen < writes {
                let Ok(Ok(Some(resp))) =
                    tokio::time::timeout(Duration::from_secs(10), stream.message()).await
                else {
                    break;
                };
                let now = Instant::now();
                let mut a = arrivals.lock().await;
                for e in resp.events() {
                    a[i].push((e.kv().map(|kv| kv.mod_revision()).unwrap_or(0), now));
                    seen += 1;
                }
            }
        }));
    }
    // Let every watch register before writing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut writer = client.clone();
    let mut acks = Vec::new();
    for n in 0..writes as u64 {
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let resp = writer
            .put(key.clone(), n.to_le_bytes().to_vec(), None)
            .await?;
        acks.push((
            resp.header().context("no header")?.revision(),
            Instant::now(),
        ));
    }
    for t in tasks {
        t.await?;
    }
    latencies(&acks, &arrivals.lock().await)
}

/// Delivery latency = arrival at a watcher − the writer's ack of the same revision (an
/// arrival before the ack counts as zero).
fn latencies(
    acks: &[(i64, Instant)],
    arrivals: &[Vec<(i64, Instant)>],
) -> anyhow::Result<(Duration, Duration, usize)> {
    let ack_of: std::collections::HashMap<i64, Instant> = acks.iter().copied().collect();
    let mut all = Vec::new();
    for watcher in arrivals {
        for (rev, at) in watcher {
            if let Some(ack) = ack_of.get(rev) {
                all.push(at.saturating_duration_since(*ack));
            }
        }
    }
    Ok((percentile(&all, 0.5), percentile(&all, 0.99), all.len()))
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _private;
    let endpoint = match &args.etcd_endpoint {
        Some(e) => e.clone(),
        None => {
            let etcd = Etcd::start().await?;
            let e = etcd.endpoint.clone();
            _private = etcd;
            e
        }
    };
    let run = format!("/kino-bench-{}/", std::process::id());
    let mut rows = Vec::new();

    // Raw baseline: etcd-client straight to etcd.
    let raw = etcd_client::Client::connect([&endpoint], None).await?;
    let mut row = Row {
        name: "etcd-client → etcd (raw)",
        ..Row::default()
    };
    for &c in &args.concurrency {
        let (ops, p50, p99) = raw_cas(&raw, &format!("{run}raw/"), c, args.seconds).await?;
        row.cas.push((c, ops, p50, p99));
    }
    let (p50, p99, n) = raw_watch(&raw, &format!("{run}raw/"), args.watchers, args.writes).await?;
    (row.watch_p50, row.watch_p99, row.delivered) = (p50, p99, n);
    row.expected = args.watchers * args.writes;
    rows.push(row);

    // Through the gateway, etcd backend.
    let etcd_store = EtcdStore::connect(EtcdOptions {
        endpoints: vec![endpoint.clone()],
        prefix: format!("{run}gw/"),
        request_timeout: Duration::from_secs(10),
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let embedded = EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("bench.redb"))).await?;
    let backends: Vec<(&'static str, Arc<dyn Store>)> = vec![
        ("gateway → etcd", Arc::new(etcd_store)),
        ("gateway → embedded", Arc::new(embedded)),
    ];
    for (name, store) in backends {
        let channel = serve_gateway(store).await?;
        let mut row = Row {
            name,
            ..Row::default()
        };
        for &c in &args.concurrency {
            let (ops, p50, p99) = gateway_cas(&channel, c, args.seconds).await?;
            row.cas.push((c, ops, p50, p99));
        }
        let (p50, p99, n) = gateway_watch(&channel, args.watchers, args.writes).await?;
        (row.watch_p50, row.watch_p99, row.delivered) = (p50, p99, n);
        row.expected = args.watchers * args.writes;
        rows.push(row);
    }
    let mut cleanup = raw.clone();
    cleanup
        .delete(
            run.as_str(),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await?;

    print_table(&args, &rows);
    Ok(())
}

fn print_table(args: &Args, rows: &[Row]) {
    let raw = &rows[0];
    println!(
        "\n## bench-datastore — {}s per CAS point, {} watchers × {} writes\n",
        args.seconds, args.watchers, args.writes
    );
    let mut header = String::from("| path |");
    let mut rule = String::from("|---|");
    for c in &args.concurrency {
        header.push_str(&format!(" CAS/s c={c} | ×raw | p50/p99 ms c={c} |"));
        rule.push_str("---|---|---|");
    }
    header.push_str(" watch p50 ms | watch p99 ms | delivered |");
    rule.push_str("---|---|---|");
    println!("{header}\n{rule}");
    for row in rows {
        let mut line = format!("| {} |", row.name);
        for (i, (_, ops, p50, p99)) in row.cas.iter().enumerate() {
            let ratio = ops / raw.cas[i].1.max(f64::MIN_POSITIVE);
            line.push_str(&format!(
                " {:.0} | {:.2} | {}/{} |",
                ops,
                ratio,
                ms(*p50),
                ms(*p99)
            ));
        }
        line.push_str(&format!(
            " {} | {} | {}/{} |",
            ms(row.watch_p50),
            ms(row.watch_p99),
            row.delivered,
            row.expected
        ));
        println!("{line}");
    }
}
