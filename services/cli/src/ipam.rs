//! `kino ipam pools` and `kino ipam allocations`: IP pools with their utilisation (per pool
//! and per node), and the addresses handed out with their owners. Tables for people,
//! `-o json` for scripts.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand, ValueEnum};
use kino_api::ipam::ipam_service_client::IpamServiceClient;
use kino_api::ipam::{
    FamilyUsage, IpAllocation, ListAllocationsRequest, NodeUsage, PoolStatusRequest, PoolUsage,
};
use kino_api::types::IpFamily;
use kino_service_kit::{ClientTlsArgs, TracedChannel};
use serde::Serialize;

/// `kino ipam ...`.
#[derive(Args, Debug, Clone)]
pub struct IpamArgs {
    /// What to show.
    #[command(subcommand)]
    pub command: IpamCommand,
}

/// The `kino ipam` commands.
#[derive(Subcommand, Debug, Clone)]
pub enum IpamCommand {
    /// Pools and their utilisation, per family and per node.
    Pools {
        /// Only this pool.
        #[arg(long)]
        pool: Option<String>,
        /// Only this node in the per-node table (the global `--node`).
        #[arg(skip)]
        node: Option<String>,
    },
    /// Allocated addresses and who holds them.
    Allocations {
        /// Only this node (the global `--node`).
        #[arg(skip)]
        node: Option<String>,
        /// Only this pool.
        #[arg(long)]
        pool: Option<String>,
        /// Only this family.
        #[arg(long, value_enum)]
        family: Option<FamilyArg>,
    },
}

/// An address family on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FamilyArg {
    /// IPv4.
    #[value(name = "ipv4", alias = "4", alias = "v4")]
    Ipv4,
    /// IPv6.
    #[value(name = "ipv6", alias = "6", alias = "v6")]
    Ipv6,
}

/// Why a `kino ipam` command failed.
#[derive(Debug, thiserror::Error)]
pub enum IpamCliError {
    /// kino-ipam could not be reached.
    #[error(
        "cannot reach kino-ipam at {target}: {detail} (is it running? `kino status` shows the suite)"
    )]
    Unreachable {
        /// Where it was looked for.
        target: String,
        /// Why it failed.
        detail: String,
    },
    /// kino-ipam answered with an error.
    #[error("kino-ipam answered {code:?}: {message}")]
    Refused {
        /// The status code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// The command cannot be built from its flags and what kino-ipam holds (e.g. a
    /// backend to remove that the service does not have).
    #[error("{0}")]
    Usage(String),
    /// No answer in time.
    #[error(
        "kino-ipam at {target} did not answer within {timeout:?} (raise --timeout if it is just slow)"
    )]
    Timeout {
        /// Where it was looked for.
        target: String,
        /// The limit.
        timeout: Duration,
    },
}

/// Runs a `kino ipam` command and returns what to print.
pub async fn run(
    command: &IpamCommand,
    target: &str,
    tls: &ClientTlsArgs,
    timeout: Duration,
    json: bool,
) -> Result<String, IpamCliError> {
    let work = async {
        let mut client = IpamServiceClient::new(connect(target, tls).await?);
        match command {
            IpamCommand::Pools { pool, node } => {
                let pools = pool_status(&mut client, pool, node).await?;
                Ok(if json {
                    pools_json(&pools)
                } else {
                    render_pools(&pools)
                })
            }
            IpamCommand::Allocations { node, pool, family } => {
                let mut allocations = list_allocations(&mut client, node, pool, *family).await?;
                sort_allocations(&mut allocations);
                Ok(if json {
                    allocations_json(&allocations)
                } else {
                    render_allocations(&allocations, SystemTime::now())
                })
            }
        }
    };
    within(target, timeout, work).await
}

/// A channel to kino-ipam (its `kino.ipam.v1` and `kino.node.v1` services).
pub async fn connect(target: &str, tls: &ClientTlsArgs) -> Result<TracedChannel, IpamCliError> {
    kino_service_kit::connect(target, tls)
        .await
        .map_err(|e| IpamCliError::Unreachable {
            target: target.to_owned(),
            detail: match e {
                kino_service_kit::ServiceError::Connect { detail, .. } => detail,
                e => e.to_string(),
            },
        })
}

/// Runs `work` against kino-ipam at `target`, giving up after `timeout`.
pub async fn within<T>(
    target: &str,
    timeout: Duration,
    work: impl Future<Output = Result<T, IpamCliError>>,
) -> Result<T, IpamCliError> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(IpamCliError::Timeout {
                target: target.to_owned(),
                timeout,
            })
        })
}

/// kino-ipam's refusal, as the command's error.
pub fn refused(status: tonic::Status) -> IpamCliError {
    IpamCliError::Refused {
        code: status.code(),
        message: status.message().to_owned(),
    }
}

async fn pool_status(
    client: &mut IpamServiceClient<TracedChannel>,
    pool: &Option<String>,
    node: &Option<String>,
) -> Result<Vec<PoolUsage>, IpamCliError> {
    Ok(client
        .pool_status(PoolStatusRequest {
            pool: pool.clone().unwrap_or_default(),
            node: node.clone().unwrap_or_default(),
            include_allocations: false,
        })
        .await
        .map_err(refused)?
        .into_inner()
        .pools)
}

async fn list_allocations(
    client: &mut IpamServiceClient<TracedChannel>,
    node: &Option<String>,
    pool: &Option<String>,
    family: Option<FamilyArg>,
) -> Result<Vec<IpAllocation>, IpamCliError> {
    let family = match family {
        None => IpFamily::Unspecified,
        Some(FamilyArg::Ipv4) => IpFamily::Ipv4,
        Some(FamilyArg::Ipv6) => IpFamily::Ipv6,
    };
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_allocations(ListAllocationsRequest {
                node: node.clone().unwrap_or_default(),
                pool: pool.clone().unwrap_or_default(),
                family: family as i32,
                page_size: 5000,
                page_token: token.clone(),
            })
            .await
            .map_err(refused)?
            .into_inner();
        out.extend(page.allocations);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

/// By pool, then node, then address (numerically).
fn sort_allocations(allocations: &mut [IpAllocation]) {
    let numeric = |a: &IpAllocation| match a.address.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => (0u8, u128::from(u32::from(v4))),
        Ok(IpAddr::V6(v6)) => (1u8, u128::from(v6)),
        Err(_) => (2u8, 0),
    };
    allocations.sort_by(|a, b| (&a.pool, &a.node, numeric(a)).cmp(&(&b.pool, &b.node, numeric(b))));
}

fn family_name(value: i32) -> &'static str {
    match IpFamily::try_from(value) {
        Ok(IpFamily::Ipv4) => "IPv4",
        Ok(IpFamily::Ipv6) => "IPv6",
        _ => "?",
    }
}

/// Use as a percentage with one decimal ("0.0%" … "100.0%").
fn percent(used: u64, size: u64) -> String {
    if size == 0 {
        return "-".to_owned();
    }
    format!("{:.1}%", used as f64 * 100.0 / size as f64)
}

/// Left-aligned columns separated by three spaces, like `kino status`.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let _ = write!(line, "{cell:w$}   ", w = widths[i]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The pools table, then the per-node table.
pub fn render_pools(pools: &[PoolUsage]) -> String {
    if pools.is_empty() {
        return "No pools. kino-ipam creates the \"default\" pool at start-up unless --no-default-pool is set.\n".to_owned();
    }
    let rows: Vec<Vec<String>> = pools
        .iter()
        .flat_map(|p| {
            p.families.iter().map(move |f: &FamilyUsage| {
                vec![
                    p.pool.clone(),
                    family_name(f.family).to_owned(),
                    f.cidrs.join(","),
                    format!("/{}", f.node_mask_size),
                    format!("{}/{}", f.node_blocks_allocated, f.node_blocks_total),
                    format!("{}/{}", f.allocated, f.size),
                    percent(f.allocated, f.size),
                ]
            })
        })
        .collect();
    let mut out = table(
        &[
            "POOL",
            "FAMILY",
            "CIDRS",
            "NODE MASK",
            "NODE BLOCKS",
            "ADDRESSES",
            "USED",
        ],
        &rows,
    );
    let nodes: Vec<Vec<String>> = pools
        .iter()
        .flat_map(|p| {
            p.nodes.iter().map(move |n: &NodeUsage| {
                vec![
                    n.node.clone(),
                    p.pool.clone(),
                    family_name(n.family).to_owned(),
                    n.cidrs.join(","),
                    n.allocated.to_string(),
                    n.free.to_string(),
                    n.size.to_string(),
                    percent(n.allocated, n.size),
                ]
            })
        })
        .collect();
    out.push('\n');
    if nodes.is_empty() {
        out.push_str("No node has blocks yet (a node gets them on its first allocation).\n");
    } else {
        out.push_str(&table(
            &[
                "NODE",
                "POOL",
                "FAMILY",
                "CIDRS",
                "ALLOCATED",
                "FREE",
                "SIZE",
                "USED",
            ],
            &nodes,
        ));
    }
    out
}

/// The allocations table.
pub fn render_allocations(allocations: &[IpAllocation], now: SystemTime) -> String {
    if allocations.is_empty() {
        return "No allocations.\n".to_owned();
    }
    let rows: Vec<Vec<String>> = allocations
        .iter()
        .map(|a| {
            let owner = a.owner.clone().unwrap_or_default();
            let pod = match (owner.pod_namespace.is_empty(), owner.pod_name.is_empty()) {
                (_, true) => "-".to_owned(),
                (true, false) => owner.pod_name.clone(),
                (false, false) => format!("{}/{}", owner.pod_namespace, owner.pod_name),
            };
            vec![
                a.pool.clone(),
                a.node.clone(),
                a.address.clone(),
                a.node_cidr.clone(),
                owner.container_id.chars().take(12).collect(),
                owner.ifname.clone(),
                pod,
                age(a.allocate_time.as_ref(), now),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "POOL",
            "NODE",
            "ADDRESS",
            "NODE CIDR",
            "CONTAINER",
            "IFNAME",
            "POD",
            "AGE",
        ],
        &rows,
    );
    let _ = writeln!(out, "\n{} allocation(s)", allocations.len());
    out
}

/// How long ago, kubectl style: 45s, 12m, 3h, 5d.
fn age(time: Option<&prost_types::Timestamp>, now: SystemTime) -> String {
    let Some(time) = time.filter(|t| t.seconds > 0) else {
        return "-".to_owned();
    };
    let then = UNIX_EPOCH + Duration::from_secs(time.seconds as u64);
    let secs = now.duration_since(then).unwrap_or_default().as_secs();
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// RFC 3339 (UTC) text of a timestamp.
fn rfc3339(time: Option<&prost_types::Timestamp>) -> Option<String> {
    let t = time?;
    let days = t.seconds.div_euclid(86_400);
    let secs = t.seconds.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    ))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PoolJson<'a> {
    pool: &'a str,
    families: Vec<FamilyJson<'a>>,
    nodes: Vec<NodeJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FamilyJson<'a> {
    family: &'static str,
    cidrs: &'a [String],
    node_mask_size: u32,
    node_blocks_total: u64,
    node_blocks_allocated: u64,
    size: u64,
    allocated: u64,
    free: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeJson<'a> {
    node: &'a str,
    family: &'static str,
    cidrs: &'a [String],
    size: u64,
    allocated: u64,
    free: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AllocationJson<'a> {
    address: &'a str,
    family: &'static str,
    prefix_length: u32,
    gateway: &'a str,
    node_cidr: &'a str,
    pool: &'a str,
    node: &'a str,
    container_id: &'a str,
    ifname: &'a str,
    pod_namespace: &'a str,
    pod_name: &'a str,
    allocate_time: Option<String>,
}

/// `{"pools": [...]}` as pretty JSON.
pub fn pools_json(pools: &[PoolUsage]) -> String {
    let pools: Vec<PoolJson> = pools
        .iter()
        .map(|p| PoolJson {
            pool: &p.pool,
            families: p
                .families
                .iter()
                .map(|f| FamilyJson {
                    family: family_name(f.family),
                    cidrs: &f.cidrs,
                    node_mask_size: f.node_mask_size,
                    node_blocks_total: f.node_blocks_total,
                    node_blocks_allocated: f.node_blocks_allocated,
                    size: f.size,
                    allocated: f.allocated,
                    free: f.free,
                })
                .collect(),
            nodes: p
                .nodes
                .iter()
                .map(|n| NodeJson {
                    node: &n.node,
                    family: family_name(n.family),
                    cidrs: &n.cidrs,
                    size: n.size,
                    allocated: n.allocated,
                    free: n.free,
                })
                .collect(),
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "pools": pools }))
        .expect("the pools serialise")
}

/// `{"allocations": [...]}` as pretty JSON.
pub fn allocations_json(allocations: &[IpAllocation]) -> String {
    let empty = kino_api::ipam::Owner::default();
    let list: Vec<AllocationJson> = allocations
        .iter()
        .map(|a| {
            let owner = a.owner.as_ref().unwrap_or(&empty);
            AllocationJson {
                address: &a.address,
                family: family_name(a.family),
                prefix_length: a.prefix_length,
                gateway: &a.gateway,
                node_cidr: &a.node_cidr,
                pool: &a.pool,
                node: &a.node,
                container_id: &owner.container_id,
                ifname: &owner.ifname,
                pod_namespace: &owner.pod_namespace,
                pod_name: &owner.pod_name,
                allocate_time: rfc3339(a.allocate_time.as_ref()),
            }
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "allocations": list }))
        .expect("the allocations serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kino_api::ipam::Owner;

    fn usage() -> Vec<PoolUsage> {
        vec![PoolUsage {
            pool: "default".into(),
            families: vec![FamilyUsage {
                family: IpFamily::Ipv4 as i32,
                cidrs: vec!["10.0.0.0/8".into()],
                node_mask_size: 24,
                node_blocks_total: 65536,
                node_blocks_allocated: 1,
                size: 16_580_608,
                allocated: 3,
                free: 16_580_605,
            }],
            nodes: vec![NodeUsage {
                node: "node-1".into(),
                family: IpFamily::Ipv4 as i32,
                cidrs: vec!["10.0.0.0/24".into()],
                size: 253,
                allocated: 3,
                free: 250,
                allocations: vec![],
            }],
        }]
    }

    fn allocation(address: &str, node: &str) -> IpAllocation {
        IpAllocation {
            address: address.into(),
            family: IpFamily::Ipv4 as i32,
            prefix_length: 24,
            gateway: "10.0.0.1".into(),
            node_cidr: "10.0.0.0/24".into(),
            pool: "default".into(),
            node: node.into(),
            owner: Some(Owner {
                container_id: "0123456789abcdef0123".into(),
                ifname: "eth0".into(),
                pod_namespace: "default".into(),
                pod_name: "web".into(),
            }),
            allocate_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
        }
    }

    #[test]
    fn pools_table_shows_utilisation_per_pool_and_node() {
        let text = render_pools(&usage());
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("POOL") && lines[0].contains("USED"),
            "{text}"
        );
        assert!(
            lines[1].contains("10.0.0.0/8") && lines[1].contains("1/65536"),
            "{text}"
        );
        assert!(
            lines[1].contains("3/16580608") && lines[1].ends_with("0.0%"),
            "{text}"
        );
        let node = lines.iter().find(|l| l.starts_with("node-1")).expect(&text);
        assert!(
            node.contains("10.0.0.0/24") && node.ends_with("1.2%"),
            "{node}"
        );
    }

    #[test]
    fn allocations_table_and_json() {
        let mut list = vec![
            allocation("10.0.0.10", "node-1"),
            allocation("10.0.0.9", "node-1"),
        ];
        sort_allocations(&mut list);
        assert_eq!(list[0].address, "10.0.0.9", "numeric order");
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000 + 300);
        let text = render_allocations(&list, now);
        let row = text.lines().nth(1).unwrap();
        for word in [
            "default",
            "node-1",
            "10.0.0.9",
            "0123456789ab ",
            "eth0",
            "default/web",
            "5m",
        ] {
            assert!(row.contains(word), "{word} in {row}");
        }
        assert!(text.contains("2 allocation(s)"));
        let json: serde_json::Value = serde_json::from_str(&allocations_json(&list)).unwrap();
        assert_eq!(
            json["allocations"][0]["containerId"],
            "0123456789abcdef0123"
        );
        assert_eq!(
            json["allocations"][0]["allocateTime"],
            "2023-11-14T22:13:20Z"
        );
        let json: serde_json::Value = serde_json::from_str(&pools_json(&usage())).unwrap();
        assert_eq!(json["pools"][0]["families"][0]["allocated"], 3);
        assert_eq!(json["pools"][0]["nodes"][0]["node"], "node-1");
    }
}
