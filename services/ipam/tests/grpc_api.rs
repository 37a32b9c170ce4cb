//! The `kino.ipam.v1` API end to end over real gRPC, on both datastore backends (embedded
//! file and real etcd): pools, node blocks, allocation, release, GC, exhaustion, node
//! releases, and the races between replicas (same owner, same blocks, dead requests).
//! Each replica is a separate `Ipam` with its own caches, as separate processes would be.

mod backends;

use std::collections::{BTreeSet, HashMap, HashSet};

use backends::{Replica, World, assert_status, default_pool};
use futures::future::join_all;
use std::time::{Duration, Instant};

use kino_api::datastore::{
    CreateRequest, DeleteRequest, GetRequest, GrantLeaseRequest, ListRequest, Resource,
    ResourceKey, RevokeLeaseRequest, UpdateRequest,
};
use kino_api::ipam as pb;
use kino_api::types::IpFamily;
use kino_ipam::IpamOptions;
use kino_ipam::persistence::Datastore;
use kino_ipam::records::{Claim, NodeBlock, NodeBlocks};
use kino_ipam::service::DefaultPoolOutcome;
use prost::Message;
use tonic::{Code, Status};

type Client = kino_api::ipam::ipam_service_client::IpamServiceClient<tonic::transport::Channel>;

const V4: IpFamily = IpFamily::Ipv4;
const V6: IpFamily = IpFamily::Ipv6;

fn owner(container: &str) -> pb::Owner {
    pb::Owner {
        container_id: container.into(),
        ifname: "eth0".into(),
        pod_namespace: "default".into(),
        pod_name: format!("pod-{container}"),
    }
}

fn family_pool(cidrs: &[&str], mask: u32) -> Option<pb::PoolFamily> {
    Some(pb::PoolFamily {
        cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
        node_mask_size: mask,
    })
}

async fn create_pool(
    c: &mut Client,
    name: &str,
    ipv4: Option<pb::PoolFamily>,
    ipv6: Option<pb::PoolFamily>,
) -> Result<pb::IpPool, Status> {
    c.create_pool(pb::CreatePoolRequest {
        pool: Some(pb::IpPool {
            name: name.into(),
            ipv4,
            ipv6,
            ..Default::default()
        }),
    })
    .await
    .map(|r| r.into_inner().pool.unwrap())
}

async fn allocate(
    c: &mut Client,
    node: &str,
    pool: &str,
    family: IpFamily,
    container: &str,
) -> Result<pb::AllocateResponse, Status> {
    c.allocate(pb::AllocateRequest {
        node: node.into(),
        pool: pool.into(),
        family: family as i32,
        owner: Some(owner(container)),
        requested_address: String::new(),
    })
    .await
    .map(|r| r.into_inner())
}

async fn request_address(
    c: &mut Client,
    node: &str,
    container: &str,
    address: &str,
) -> Result<pb::AllocateResponse, Status> {
    c.allocate(pb::AllocateRequest {
        node: node.into(),
        owner: Some(owner(container)),
        requested_address: address.into(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

fn address_of(r: &pb::AllocateResponse) -> String {
    r.allocation.as_ref().unwrap().address.clone()
}

async fn node_cidrs(c: &mut Client, node: &str, pool: &str) -> pb::NodeAllocation {
    c.allocate_node_cidrs(pb::AllocateNodeCidrsRequest {
        node: node.into(),
        pool: pool.into(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|s| panic!("AllocateNodeCidrs {node}: {s:?}"))
    .into_inner()
    .allocation
    .unwrap()
}

fn cidrs(a: &pb::NodeAllocation) -> Vec<String> {
    a.cidrs.iter().map(|c| c.cidr.clone()).collect()
}

async fn release_owner(c: &mut Client, container: &str) -> Vec<pb::IpAllocation> {
    c.release(pb::ReleaseRequest {
        target: Some(pb::release_request::Target::Owner(owner(container))),
        family: 0,
    })
    .await
    .unwrap()
    .into_inner()
    .released
}

async fn list_all(c: &mut Client, node: &str, pool: &str) -> Vec<pb::IpAllocation> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_allocations(pb::ListAllocationsRequest {
                node: node.into(),
                pool: pool.into(),
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.allocations);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// Every raw resource of a kind in a namespace, straight from the datastore.
async fn raw(w: &World, kind: &str, namespace: &str) -> Vec<Resource> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = w
            .datastore
            .clone()
            .list(ListRequest {
                kind: kind.into(),
                namespace: namespace.into(),
                limit: 5000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.resources);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// Address records (not owner claims) of a pool.
async fn address_records(w: &World, pool: &str) -> Vec<Resource> {
    raw(w, "IPAllocation", pool)
        .await
        .into_iter()
        .filter(|r| !r.name.starts_with("owner:"))
        .collect()
}

/// Every IPAM record of a node in the default pool (its node record, block claims,
/// addresses and owner claims).
async fn node_records(w: &World, node: &str) -> Vec<Resource> {
    let mut out = Vec::new();
    for resource in raw(w, "NodeAllocation", "default")
        .await
        .into_iter()
        .chain(raw(w, "IPAllocation", "default").await)
    {
        let spec = resource.spec.as_ref().unwrap();
        let of_node = match spec.type_url.rsplit('/').next().unwrap() {
            "kino.ipam.v1.NodeAllocation" => {
                pb::NodeAllocation::decode(spec.value.as_slice())
                    .unwrap()
                    .node
                    == node
            }
            "kino.ipam.v1.IPAllocation" => {
                pb::IpAllocation::decode(spec.value.as_slice())
                    .unwrap()
                    .node
                    == node
            }
            "kino.ipam.v1.OwnerClaim" => {
                pb::OwnerClaim::decode(spec.value.as_slice()).unwrap().node == node
            }
            other => panic!("unexpected record type {other}"),
        };
        if of_node {
            out.push(resource);
        }
    }
    out
}

async fn grant(w: &World) -> i64 {
    w.datastore
        .clone()
        .grant_lease(GrantLeaseRequest { ttl_seconds: 600 })
        .await
        .unwrap()
        .into_inner()
        .lease_id
}

async fn revoke(w: &World, lease: i64) {
    w.datastore
        .clone()
        .revoke_lease(RevokeLeaseRequest { lease_id: lease })
        .await
        .unwrap();
}

/// Puts records on `lease`, as a kino-ipam of before node deletions did.
async fn attach(w: &World, records: &[Resource], lease: i64) {
    for record in records {
        w.datastore
            .clone()
            .update(UpdateRequest {
                resource: Some(Resource {
                    lease_id: lease,
                    ..record.clone()
                }),
                expected_revision: record.revision,
            })
            .await
            .unwrap_or_else(|s| panic!("attaching {} to lease {lease}: {s:?}", record.name));
    }
}

/// Writes (creates or replaces) a raw resource.
async fn put_raw(w: &World, resource: Resource) {
    let mut d = w.datastore.clone();
    let key = ResourceKey {
        kind: resource.kind.clone(),
        namespace: resource.namespace.clone(),
        name: resource.name.clone(),
    };
    let current = d.get(GetRequest { key: Some(key) }).await;
    match current {
        Ok(current) => {
            let revision = current.into_inner().resource.unwrap().revision;
            d.update(UpdateRequest {
                resource: Some(resource),
                expected_revision: revision,
            })
            .await
            .unwrap();
        }
        Err(_) => {
            d.create(CreateRequest {
                resource: Some(resource),
            })
            .await
            .unwrap();
        }
    }
}

async fn delete_raw(w: &World, kind: &str, namespace: &str, name: &str) {
    w.datastore
        .clone()
        .delete(DeleteRequest {
            key: Some(ResourceKey {
                kind: kind.into(),
                namespace: namespace.into(),
                name: name.into(),
            }),
            expected_revision: 0,
        })
        .await
        .unwrap();
}

fn spec<T: Message>(message: &str, value: &T) -> Option<prost_types::Any> {
    Some(prost_types::Any {
        type_url: format!("type.googleapis.com/{message}"),
        value: value.encode_to_vec(),
    })
}

/// A Node record as an agent writes it (no lease), optionally marked for deletion.
async fn put_node(w: &World, name: &str, deletion: Option<std::time::SystemTime>) {
    let node = kino_api::types::Node {
        name: name.into(),
        deletion_time: deletion.map(Into::into),
        ..Default::default()
    };
    put_raw(
        w,
        Resource {
            kind: "Node".into(),
            name: name.into(),
            spec: spec("kino.types.v1.Node", &node),
            ..Default::default()
        },
    )
    .await;
}

/// A NodeHealth record as an agent writes it, on `lease`.
async fn put_health(w: &World, name: &str, lease: i64) {
    let health = kino_api::types::NodeHealth {
        name: name.into(),
        agent_version: "test".into(),
        lease_ttl_seconds: 600,
        ..Default::default()
    };
    put_raw(
        w,
        Resource {
            kind: "NodeHealth".into(),
            name: name.into(),
            spec: spec("kino.types.v1.NodeHealth", &health),
            lease_id: lease,
            ..Default::default()
        },
    )
    .await;
}

/// An agent's Endpoint record on `node`.
async fn put_endpoint(w: &World, node: &str, id: &str) {
    put_raw(
        w,
        Resource {
            kind: "Endpoint".into(),
            namespace: node.into(),
            name: id.into(),
            spec: spec(
                "kino.agent.v1.Endpoint",
                &kino_api::agent::Endpoint::default(),
            ),
            ..Default::default()
        },
    )
    .await;
}

async fn with_default_pool(r: &Replica) {
    assert_eq!(
        r.ipam.ensure_pool(default_pool()).await.unwrap(),
        DefaultPoolOutcome::Created
    );
}

mod cases {
    use super::*;

    pub async fn pools_are_validated_created_listed_and_deleted(mut w: World) {
        let r = w.replica().await;
        let mut c = r.client.clone();

        // Bad input names the field, and writes nothing.
        let bad = c.create_pool(pb::CreatePoolRequest { pool: None }).await;
        assert_status(bad, Code::InvalidArgument, &["pool"]);
        let bad = create_pool(&mut c, "blue", family_pool(&["10.10.0.1/16"], 24), None).await;
        assert_status(
            bad,
            Code::InvalidArgument,
            &["pool.ipv4.cidrs[0]", "did you mean 10.10.0.0/16"],
        );
        let bad = create_pool(&mut c, "blue", family_pool(&["not-a-cidr"], 24), None).await;
        assert_status(bad, Code::InvalidArgument, &["pool.ipv4.cidrs[0]"]);
        let bad = create_pool(&mut c, "blue", family_pool(&["10.10.0.0/16"], 31), None).await;
        assert_status(
            bad,
            Code::InvalidArgument,
            &["pool.ipv4.node_mask_size", "31"],
        );
        let bad = create_pool(&mut c, "blue", None, family_pool(&["fd10::/112"], 8)).await;
        assert_status(bad, Code::InvalidArgument, &["pool.ipv6.node_mask_size"]);
        let bad = create_pool(
            &mut c,
            "bad name!",
            family_pool(&["10.10.0.0/16"], 24),
            None,
        )
        .await;
        assert_status(bad, Code::InvalidArgument, &["pool.name"]);
        let bad = create_pool(&mut c, "blue", None, None).await;
        assert_status(bad, Code::InvalidArgument, &["at least one family"]);
        assert!(raw(&w, "IPPool", "").await.is_empty(), "nothing written");

        // A dual-stack pool.
        let blue = create_pool(
            &mut c,
            "blue",
            family_pool(&["10.10.0.0/16"], 24),
            family_pool(&["fd10::/112"], 120),
        )
        .await
        .unwrap();
        assert_eq!(blue.phase(), pb::PoolPhase::Ready);
        assert!(blue.create_time.is_some());
        let again = create_pool(&mut c, "blue", family_pool(&["10.11.0.0/16"], 24), None).await;
        assert_status(again, Code::AlreadyExists, &["blue"]);

        // Overlapping another pool: refused naming both, nothing left behind.
        let overlap = create_pool(&mut c, "green", family_pool(&["10.10.5.0/24"], 26), None).await;
        assert_status(
            overlap,
            Code::InvalidArgument,
            &[
                "pool.ipv4.cidrs[0]",
                "10.10.5.0/24",
                "10.10.0.0/16",
                "\"blue\"",
            ],
        );
        let overlap = create_pool(
            &mut c,
            "green",
            family_pool(&["10.20.0.0/16"], 24),
            family_pool(&["fd10::/104"], 120),
        )
        .await;
        assert_status(overlap, Code::InvalidArgument, &["pool.ipv6.cidrs[0]"]);
        create_pool(&mut c, "green", family_pool(&["10.20.0.0/16"], 24), None)
            .await
            .unwrap();
        let listed: Vec<String> = c
            .list_pools(pb::ListPoolsRequest {})
            .await
            .unwrap()
            .into_inner()
            .pools
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(listed, ["blue", "green"]);
        let got = c
            .get_pool(pb::GetPoolRequest {
                name: "blue".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .pool
            .unwrap();
        assert_eq!(got.ipv6.unwrap().cidrs, ["fd10::/112"]);
        let missing = c
            .get_pool(pb::GetPoolRequest {
                name: "nope".into(),
            })
            .await;
        assert_status(missing, Code::NotFound, &["\"nope\""]);

        // Two replicas creating overlapping pools at once: exactly one wins.
        let r2 = w.replica().await;
        let (mut c1, mut c2) = (c.clone(), r2.client.clone());
        let (a, b) = tokio::join!(
            create_pool(&mut c1, "red", family_pool(&["172.16.0.0/16"], 24), None),
            create_pool(
                &mut c2,
                "yellow",
                family_pool(&["172.16.128.0/17"], 24),
                None
            ),
        );
        assert!(
            a.is_ok() != b.is_ok(),
            "exactly one of two overlapping pools must be created: {a:?} {b:?}"
        );

        // Deleting a pool with allocations names them.
        allocate(&mut c, "n1", "blue", V4, "c1").await.unwrap();
        let refused = c
            .delete_pool(pb::DeletePoolRequest {
                name: "blue".into(),
            })
            .await;
        assert_status(
            refused,
            Code::FailedPrecondition,
            &["\"blue\"", "n1", "10.10.0.2", "container c1"],
        );
        assert_eq!(
            c.get_pool(pb::GetPoolRequest {
                name: "blue".into()
            })
            .await
            .unwrap()
            .into_inner()
            .pool
            .unwrap()
            .phase(),
            pb::PoolPhase::Ready,
            "a refused delete leaves the pool usable"
        );
        allocate(&mut c, "n1", "blue", V4, "c2").await.unwrap();
        c.release_node_cidrs(pb::ReleaseNodeCidrsRequest {
            node: "n1".into(),
            pool: "blue".into(),
            force: true,
        })
        .await
        .unwrap();
        let deleted = c
            .delete_pool(pb::DeletePoolRequest {
                name: "blue".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .pool
            .unwrap();
        assert_eq!(deleted.name, "blue");
        assert!(raw(&w, "IPAllocation", "blue").await.is_empty());
        assert!(raw(&w, "NodeAllocation", "blue").await.is_empty());
        let gone = c
            .delete_pool(pb::DeletePoolRequest {
                name: "blue".into(),
            })
            .await;
        assert_status(gone, Code::NotFound, &["\"blue\""]);
        w.finish().await;
    }

    pub async fn node_cidrs_are_idempotent_across_replicas_and_restarts(mut w: World) {
        let r1 = w.replica().await;
        with_default_pool(&r1).await;
        let r2 = w.replica().await;
        assert_eq!(
            r2.ipam.ensure_pool(default_pool()).await.unwrap(),
            DefaultPoolOutcome::Exists,
            "a second replica finds the default pool"
        );
        let (mut c1, mut c2) = (r1.client.clone(), r2.client.clone());

        let n1 = node_cidrs(&mut c1, "node-1", "").await;
        assert_eq!(cidrs(&n1), ["10.0.0.0/24", "fd00::/120"]);
        assert_eq!(n1.cidrs[0].gateway, "10.0.0.1");
        assert_eq!(n1.cidrs[1].gateway, "fd00::1");
        assert_eq!(n1.pool, "default");
        assert_eq!(
            cidrs(&node_cidrs(&mut c2, "node-1", "default").await),
            cidrs(&n1)
        );
        let n2 = node_cidrs(&mut c2, "node-2", "").await;
        assert_eq!(cidrs(&n2), ["10.0.1.0/24", "fd00::100/120"]);

        // A restarted replica (fresh caches) gives the same answers.
        let mut restarted = w.replica().await.client;
        assert_eq!(
            cidrs(&node_cidrs(&mut restarted, "node-1", "").await),
            cidrs(&n1)
        );
        let got = restarted
            .get_node_cidrs(pb::GetNodeCidrsRequest {
                node: "node-2".into(),
                pool: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .allocations;
        assert_eq!(got.len(), 1);
        assert_eq!(cidrs(&got[0]), cidrs(&n2));
        let none = restarted
            .get_node_cidrs(pb::GetNodeCidrsRequest {
                node: "node-9".into(),
                pool: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .allocations;
        assert!(none.is_empty());

        // Bad input.
        let bad = c1
            .allocate_node_cidrs(pb::AllocateNodeCidrsRequest {
                node: String::new(),
                ..Default::default()
            })
            .await;
        assert_status(bad, Code::InvalidArgument, &["node"]);
        let bad = c1
            .allocate_node_cidrs(pb::AllocateNodeCidrsRequest {
                node: "block:x".into(),
                ..Default::default()
            })
            .await;
        assert_status(bad, Code::InvalidArgument, &["node", "':'"]);
        let bad = c1
            .allocate_node_cidrs(pb::AllocateNodeCidrsRequest {
                node: "n".into(),
                pool: "nope".into(),
                ..Default::default()
            })
            .await;
        assert_status(bad, Code::NotFound, &["pool", "\"nope\""]);

        // Many nodes at once on three replicas (each node asked on every replica): every
        // node gets one block per family, no block is given twice, no claim is left over.
        let r3 = w.replica().await;
        let clients = [c1.clone(), c2.clone(), r3.client.clone()];
        let mut calls = Vec::new();
        for n in 0..15 {
            for client in &clients {
                let mut client = client.clone();
                calls.push(async move {
                    let node = format!("burst-{n}");
                    (node.clone(), node_cidrs(&mut client, &node, "").await)
                });
            }
        }
        let results = join_all(calls).await;
        let mut per_node: HashMap<String, BTreeSet<Vec<String>>> = HashMap::new();
        for (node, allocation) in &results {
            per_node
                .entry(node.clone())
                .or_default()
                .insert(cidrs(allocation));
        }
        let mut blocks = HashSet::new();
        for (node, answers) in &per_node {
            assert_eq!(answers.len(), 1, "{node} got different blocks: {answers:?}");
            for block in answers.iter().next().unwrap() {
                assert!(blocks.insert(block.clone()), "block {block} given twice");
            }
        }
        let records = raw(&w, "NodeAllocation", "default").await;
        let claims = records
            .iter()
            .filter(|r| r.name.starts_with("block:"))
            .count();
        assert_eq!(claims, (15 + 2) * 2, "one block claim per node and family");
        w.finish().await;
    }

    pub async fn allocate_release_and_gc(mut w: World) {
        let r1 = w.replica().await;
        with_default_pool(&r1).await;
        let r2 = w.replica().await;
        let (mut c1, mut c2) = (r1.client.clone(), r2.client.clone());

        let first = allocate(&mut c1, "n1", "", V4, "c1").await.unwrap();
        let a = first.allocation.clone().unwrap();
        assert_eq!(
            (
                a.address.as_str(),
                a.prefix_length,
                a.gateway.as_str(),
                a.node_cidr.as_str()
            ),
            ("10.0.0.2", 24, "10.0.0.1", "10.0.0.0/24"),
            "the first address after the gateway"
        );
        assert!(!first.existing);
        assert_eq!(a.owner.unwrap().pod_name, "pod-c1");
        // A retried CNI ADD, on the other replica: the same address.
        let retry = allocate(&mut c2, "n1", "", V4, "c1").await.unwrap();
        assert_eq!(address_of(&retry), "10.0.0.2");
        assert!(retry.existing);
        let v6 = allocate(&mut c2, "n1", "", V6, "c1").await.unwrap();
        assert_eq!(address_of(&v6), "fd00::2");
        assert_eq!(v6.allocation.as_ref().unwrap().prefix_length, 120);
        let second = allocate(&mut c2, "n1", "", V4, "c2").await.unwrap();
        assert_eq!(address_of(&second), "10.0.0.3");

        // Requested addresses.
        let asked = request_address(&mut c1, "n1", "c3", "10.0.0.50")
            .await
            .unwrap();
        assert_eq!(address_of(&asked), "10.0.0.50");
        let again = request_address(&mut c2, "n1", "c3", "10.0.0.50")
            .await
            .unwrap();
        assert!(again.existing);
        let taken = request_address(&mut c2, "n1", "c4", "10.0.0.50").await;
        assert_status(
            taken,
            Code::AlreadyExists,
            &["10.0.0.50", "container c3", "pod-c3"],
        );
        for (addr, word) in [
            ("10.0.0.0", "network"),
            ("10.0.0.1", "gateway"),
            ("10.0.0.255", "broadcast"),
            ("fd00::1", "gateway"),
        ] {
            let refused = request_address(&mut c1, "n1", "c4", addr).await;
            assert_status(refused, Code::InvalidArgument, &["requested_address", word]);
        }
        let outside = request_address(&mut c1, "n1", "c4", "10.0.7.7").await;
        assert_status(
            outside,
            Code::InvalidArgument,
            &["requested_address", "outside", "10.0.0.0/24"],
        );
        let other = request_address(&mut c1, "n1", "c1", "10.0.0.60").await;
        assert_status(other, Code::FailedPrecondition, &["10.0.0.2"]);
        let garbage = request_address(&mut c1, "n1", "c4", "10.0.0.5/24").await;
        assert_status(garbage, Code::InvalidArgument, &["requested_address"]);

        // Bad input.
        let no_owner = c1
            .allocate(pb::AllocateRequest {
                node: "n1".into(),
                family: V4 as i32,
                ..Default::default()
            })
            .await;
        assert_status(no_owner, Code::InvalidArgument, &["owner"]);
        let mut nameless = owner("");
        nameless.ifname = "eth0".into();
        let no_container = c1
            .allocate(pb::AllocateRequest {
                node: "n1".into(),
                family: V4 as i32,
                owner: Some(nameless),
                ..Default::default()
            })
            .await;
        assert_status(no_container, Code::InvalidArgument, &["owner.container_id"]);
        let no_family = c1
            .allocate(pb::AllocateRequest {
                node: "n1".into(),
                owner: Some(owner("c9")),
                ..Default::default()
            })
            .await;
        assert_status(no_family, Code::InvalidArgument, &["family"]);
        let no_pool = allocate(&mut c1, "n1", "nope", V4, "c9").await;
        assert_status(no_pool, Code::NotFound, &["pool", "\"nope\""]);

        // Listing and status.
        let listed = list_all(&mut c1, "n1", "").await;
        let addresses: BTreeSet<String> = listed.iter().map(|a| a.address.clone()).collect();
        assert_eq!(
            addresses,
            ["10.0.0.2", "10.0.0.3", "10.0.0.50", "fd00::2"]
                .map(String::from)
                .into()
        );
        let unknown = c1
            .list_allocations(pb::ListAllocationsRequest {
                node: "nobody".into(),
                ..Default::default()
            })
            .await;
        assert_status(unknown, Code::NotFound, &["node", "\"nobody\""]);
        let status = c1
            .pool_status(pb::PoolStatusRequest {
                pool: String::new(),
                node: "n1".into(),
                include_allocations: true,
            })
            .await
            .unwrap()
            .into_inner();
        let pool = &status.pools[0];
        assert_eq!(pool.pool, "default");
        let v4 = &pool.families[0];
        assert_eq!(
            (v4.node_blocks_total, v4.node_blocks_allocated, v4.allocated),
            (65536, 1, 3)
        );
        assert_eq!(v4.size, 65536 * 253);
        assert_eq!(v4.free, v4.size - 3);
        let node = &pool.nodes[0];
        assert_eq!(
            (node.node.as_str(), node.size, node.allocated, node.free),
            ("n1", 253, 3, 250)
        );
        assert_eq!(node.allocations.len(), 3);
        assert_eq!(node.allocations[0].address, "10.0.0.2", "sorted by address");

        // Release by owner (both families), idempotent.
        let released = release_owner(&mut c2, "c1").await;
        let freed: BTreeSet<String> = released.iter().map(|a| a.address.clone()).collect();
        assert_eq!(freed, ["10.0.0.2", "fd00::2"].map(String::from).into());
        assert!(release_owner(&mut c1, "c1").await.is_empty());
        // By address, idempotent.
        for expected in [1, 0] {
            let released = c1
                .release(pb::ReleaseRequest {
                    target: Some(pb::release_request::Target::Address("10.0.0.50".into())),
                    family: 0,
                })
                .await
                .unwrap()
                .into_inner()
                .released;
            assert_eq!(released.len(), expected);
        }
        let no_target = c1.release(pb::ReleaseRequest::default()).await;
        assert_status(no_target, Code::InvalidArgument, &["target"]);
        // The released owner's claim is gone too: it gets a fresh address.
        let back = allocate(&mut c1, "n1", "", V4, "c1").await.unwrap();
        assert!(!back.existing);

        // Gc keeps the valid owners and frees the rest, reporting them.
        for c in ["g1", "g2", "g3"] {
            allocate(&mut c2, "n1", "", V4, c).await.unwrap();
            allocate(&mut c2, "n1", "", V6, c).await.unwrap();
        }
        allocate(&mut c2, "n2", "", V4, "elsewhere").await.unwrap();
        let valid = vec![owner("c1"), owner("c2"), owner("g1")];
        let dry = c1
            .gc(pb::GcRequest {
                node: "n1".into(),
                valid_owners: valid.clone(),
                dry_run: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .freed;
        assert_eq!(dry.len(), 4);
        assert_eq!(list_all(&mut c1, "n1", "").await.len(), 2 + 6);
        let freed = c1
            .gc(pb::GcRequest {
                node: "n1".into(),
                valid_owners: valid.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .freed;
        let freed_owners: BTreeSet<String> = freed
            .iter()
            .map(|a| a.owner.as_ref().unwrap().container_id.clone())
            .collect();
        assert_eq!(freed.len(), 4);
        assert_eq!(freed_owners, ["g2", "g3"].map(String::from).into());
        let left: BTreeSet<String> = list_all(&mut c1, "", "")
            .await
            .into_iter()
            .map(|a| a.owner.unwrap().container_id)
            .collect();
        assert_eq!(
            left,
            ["c1", "c2", "g1", "elsewhere"].map(String::from).into()
        );
        let again = c1
            .gc(pb::GcRequest {
                node: "n1".into(),
                valid_owners: valid,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .freed;
        assert!(again.is_empty(), "Gc is idempotent");
        // min_age protects young allocations (racing ADDs).
        let young = c1
            .gc(pb::GcRequest {
                node: "n1".into(),
                min_age: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .freed;
        assert!(young.is_empty(), "{young:?}");
        w.finish().await;
    }

    pub async fn exhaustion_names_pool_node_and_use_and_nodes_grow(mut w: World) {
        let r = w.replica().await;
        let mut c = r.client.clone();
        // 4 blocks of /30: one address each.
        create_pool(&mut c, "tiny", family_pool(&["192.168.0.0/28"], 30), None)
            .await
            .unwrap();
        let mut got = Vec::new();
        for i in 0..4 {
            let a = allocate(&mut c, "n1", "tiny", V4, &format!("t{i}"))
                .await
                .unwrap();
            got.push(address_of(&a));
        }
        assert_eq!(
            got,
            ["192.168.0.2", "192.168.0.6", "192.168.0.10", "192.168.0.14"]
        );
        let n1 = c
            .get_node_cidrs(pb::GetNodeCidrsRequest {
                node: "n1".into(),
                pool: "tiny".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .allocations;
        assert_eq!(n1[0].cidrs.len(), 4, "the node grew block by block");
        let full = allocate(&mut c, "n1", "tiny", V4, "t4").await;
        assert_status(
            full,
            Code::ResourceExhausted,
            &["\"tiny\"", "\"n1\"", "4 of 4 in use"],
        );
        // A retried request of an owner that holds an address still gets it.
        let retry = allocate(&mut c, "n1", "tiny", V4, "t0").await.unwrap();
        assert!(retry.existing);
        let other_node = allocate(&mut c, "n2", "tiny", V4, "t5").await;
        assert_status(
            other_node,
            Code::ResourceExhausted,
            &["\"tiny\"", "no free IPv4 block"],
        );
        let family = allocate(&mut c, "n1", "tiny", V6, "t6").await;
        assert_status(family, Code::InvalidArgument, &["family", "no IPv6"]);

        // With growth disabled, one block is all a node gets.
        let mut fixed = w
            .replica_with(IpamOptions {
                max_node_blocks: 1,
                ..IpamOptions::default()
            })
            .await
            .client;
        create_pool(
            &mut fixed,
            "small",
            family_pool(&["192.168.1.0/29"], 30),
            None,
        )
        .await
        .unwrap();
        allocate(&mut fixed, "n1", "small", V4, "s0").await.unwrap();
        let full = allocate(&mut fixed, "n1", "small", V4, "s1").await;
        assert_status(
            full,
            Code::ResourceExhausted,
            &[
                "\"small\"",
                "\"n1\"",
                "1 of 1 in use",
                "192.168.1.0/30",
                "--max-node-blocks",
            ],
        );
        // Freeing one makes room again.
        release_owner(&mut fixed, "s0").await;
        allocate(&mut fixed, "n1", "small", V4, "s1").await.unwrap();
        w.finish().await;
    }

    pub async fn release_node_cidrs_refuses_then_forces(mut w: World) {
        let r = w.replica().await;
        with_default_pool(&r).await;
        let mut c = r.client.clone();
        node_cidrs(&mut c, "n1", "").await;
        allocate(&mut c, "n1", "", V4, "c2").await.unwrap();
        // ReleaseNodeCidrs: refused while addresses are allocated, unless forced.
        let refused = c
            .release_node_cidrs(pb::ReleaseNodeCidrsRequest {
                node: "n1".into(),
                pool: String::new(),
                force: false,
            })
            .await;
        assert_status(
            refused,
            Code::FailedPrecondition,
            &["\"n1\"", "container c2", "force"],
        );
        allocate(&mut c, "n1", "", V4, "c3")
            .await
            .expect("still usable after a refused release");
        let released = c
            .release_node_cidrs(pb::ReleaseNodeCidrsRequest {
                node: "n1".into(),
                pool: String::new(),
                force: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(released.released.len(), 1);
        assert_eq!(released.freed.len(), 2);
        let again = c
            .release_node_cidrs(pb::ReleaseNodeCidrsRequest {
                node: "n1".into(),
                pool: String::new(),
                force: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            again.released.is_empty() && again.freed.is_empty(),
            "idempotent"
        );
        w.finish().await;
    }

    /// A node's existence is not its lease: nothing IPAM holds for a node hangs on one, a
    /// lapsed lease or a vanished Node record frees nothing, records an older kino-ipam put
    /// on a lease are moved off, a node's block goes to no other node while it holds
    /// addresses, and only DeleteNode gives a node's blocks and addresses back.
    pub async fn leases_free_nothing_and_only_node_deletion_does(mut w: World) {
        let r = w.replica().await;
        with_default_pool(&r).await;
        let mut c = r.client.clone();
        let mut nodes = r.nodes.clone();

        // AllocateNodeCidrs' lease_id is ignored: no record hangs on it.
        let lease = grant(&w).await;
        #[allow(deprecated)]
        let n1 = c
            .allocate_node_cidrs(pb::AllocateNodeCidrsRequest {
                node: "n1".into(),
                lease_id: lease,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .allocation
            .unwrap();
        let v4 = address_of(&allocate(&mut c, "n1", "", V4, "c1").await.unwrap());
        allocate(&mut c, "n1", "", V6, "c1").await.unwrap();
        let held = node_records(&w, "n1").await;
        assert_eq!(
            held.len(),
            1 + 2 + 2 + 2,
            "node, 2 block claims, 2 addresses, 2 owner claims: {held:?}"
        );
        assert!(
            held.iter().all(|r| r.lease_id == 0),
            "nothing on a lease: {held:?}"
        );
        revoke(&w, lease).await;
        assert_eq!(
            node_records(&w, "n1").await.len(),
            held.len(),
            "revoking the lease frees nothing"
        );

        // Records an older kino-ipam attached to the node's lease: moved off at start-up ...
        let old = grant(&w).await;
        attach(&w, &held, old).await;
        assert_eq!(r.ipam.detach_leases().await.unwrap(), held.len());
        revoke(&w, old).await;
        assert_eq!(
            node_records(&w, "n1").await.len(),
            held.len(),
            "moved off before the lease ended"
        );
        // ... and whenever the node's blocks are next read.
        let old = grant(&w).await;
        attach(&w, &node_records(&w, "n1").await, old).await;
        let r2 = w.replica().await;
        let mut c2 = r2.client.clone();
        allocate(&mut c2, "n1", "", V4, "c2").await.unwrap();
        revoke(&w, old).await;
        let after = node_records(&w, "n1").await;
        assert_eq!(
            after.len(),
            held.len() + 2,
            "c1's and c2's records all kept: {after:?}"
        );

        // A Node record that vanishes frees nothing either (it used to release the node).
        put_node(&w, "n1", None).await;
        delete_raw(&w, "Node", "", "n1").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(node_records(&w, "n1").await.len(), held.len() + 2);

        // The node's blocks go to no other node while they are its.
        let n2 = node_cidrs(&mut c, "n2", "").await;
        for block in cidrs(&n2) {
            assert!(!cidrs(&n1).contains(&block), "n2 got n1's block {block}");
        }

        // The node as operators see it.
        put_node(&w, "n1", None).await;
        let health_lease = grant(&w).await;
        put_health(&w, "n1", health_lease).await;
        put_endpoint(&w, "n1", "7").await;
        put_raw(
            &w,
            Resource {
                kind: "PolicyRealization".into(),
                name: "n1".into(),
                spec: spec(
                    "kino.policy.v1.PolicyRealization",
                    &kino_api::policy::PolicyRealization {
                        node_name: "n1".into(),
                        ..Default::default()
                    },
                ),
                ..Default::default()
            },
        )
        .await;
        let got = nodes
            .get_node(kino_api::node::GetNodeRequest { name: "n1".into() })
            .await
            .unwrap()
            .into_inner()
            .node
            .unwrap();
        assert_eq!(got.health(), kino_api::node::NodeHealthState::Live);
        assert_eq!(got.endpoints, 1);
        let allocated: Vec<(String, u64)> = got
            .pod_cidrs
            .iter()
            .map(|p| (p.cidr.clone(), p.allocated))
            .collect();
        assert_eq!(
            allocated,
            vec![(cidrs(&n1)[0].clone(), 2), (cidrs(&n1)[1].clone(), 1)]
        );
        let listed: Vec<String> = nodes
            .list_nodes(kino_api::node::ListNodesRequest {})
            .await
            .unwrap()
            .into_inner()
            .nodes
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(listed, ["n1", "n2"]);

        // DeleteNode: refused while the node's agent is live, unless forced.
        let refused = nodes
            .delete_node(kino_api::node::DeleteNodeRequest {
                name: "n1".into(),
                force: false,
            })
            .await;
        assert_status(
            refused,
            Code::FailedPrecondition,
            &["\"n1\"", "live", "force"],
        );
        assert_eq!(
            node_records(&w, "n1").await.len(),
            held.len() + 2,
            "a refused deletion changes nothing"
        );
        // The lease lapses: the node is unreachable, and still holds everything.
        revoke(&w, health_lease).await;
        let got = nodes
            .get_node(kino_api::node::GetNodeRequest { name: "n1".into() })
            .await
            .unwrap()
            .into_inner()
            .node
            .unwrap();
        assert_eq!(got.health(), kino_api::node::NodeHealthState::Unreachable);
        assert_eq!(got.endpoints, 1);
        let deleted = nodes
            .delete_node(kino_api::node::DeleteNodeRequest {
                name: "n1".into(),
                force: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(deleted.released_cidrs, cidrs(&n1));
        assert_eq!(deleted.freed_addresses.len(), 3, "{deleted:?}");
        assert!(deleted.freed_addresses.contains(&v4));
        assert_eq!(deleted.deleted_endpoints, 1);
        assert!(
            node_records(&w, "n1").await.is_empty(),
            "nothing of n1 is left"
        );
        for kind in ["Node", "NodeHealth", "PolicyRealization"] {
            assert!(
                raw(&w, kind, "").await.iter().all(|r| r.name != "n1"),
                "{kind} n1 left"
            );
        }
        assert!(raw(&w, "Endpoint", "n1").await.is_empty());
        let gone = nodes
            .get_node(kino_api::node::GetNodeRequest { name: "n1".into() })
            .await;
        assert_status(gone, Code::NotFound, &["\"n1\"", "kino node list"]);
        let again = nodes
            .delete_node(kino_api::node::DeleteNodeRequest {
                name: "n1".into(),
                force: true,
            })
            .await;
        assert_status(again, Code::NotFound, &["\"n1\""]);
        // Its addresses are free again: the next node gets its block back.
        let n3 = node_cidrs(&mut c, "n3", "").await;
        assert_eq!(cidrs(&n3), cidrs(&n1));

        // Forced deletion of a live node.
        put_node(&w, "n3", None).await;
        put_health(&w, "n3", grant(&w).await).await;
        allocate(&mut c, "n3", "", V4, "c9").await.unwrap();
        let forced = nodes
            .delete_node(kino_api::node::DeleteNodeRequest {
                name: "n3".into(),
                force: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            forced.node.unwrap().health(),
            kino_api::node::NodeHealthState::Live
        );
        assert_eq!(forced.freed_addresses.len(), 1);
        assert!(node_records(&w, "n3").await.is_empty());

        // An interrupted deletion (marked long ago, its deleter gone) is finished by the
        // replicas' watcher.
        node_cidrs(&mut c, "n4", "").await;
        allocate(&mut c, "n4", "", V4, "c10").await.unwrap();
        put_node(
            &w,
            "n4",
            Some(std::time::SystemTime::now() - kino_ipam::service::FINISH_DELETION_AFTER * 2),
        )
        .await;
        // The deletion ends with the Node record itself (blocks and addresses go first), so
        // the test waits for that last step, not for an intermediate one.
        let deadline = Instant::now() + Duration::from_secs(60);
        while raw(&w, "Node", "").await.iter().any(|r| r.name == "n4") {
            assert!(
                Instant::now() < deadline,
                "the marked node n4 was never finished"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            node_records(&w, "n4").await.is_empty(),
            "n4's blocks and addresses are left"
        );
        assert!(
            raw(&w, "NodeHealth", "")
                .await
                .iter()
                .all(|r| r.name != "n4")
        );
        w.finish().await;
    }

    pub async fn replicas_racing_on_one_owner_agree(mut w: World) {
        let r1 = w.replica().await;
        with_default_pool(&r1).await;
        let r2 = w.replica().await;
        let r3 = w.replica().await;
        let clients = [r1.client.clone(), r2.client.clone(), r3.client.clone()];
        let mut calls = Vec::new();
        for o in 0..40usize {
            for round in 0..2 {
                for client in &clients {
                    let mut client = client.clone();
                    let family = if o.is_multiple_of(4) { V6 } else { V4 };
                    calls.push(async move {
                        let _ = round;
                        let container = format!("race-{o}");
                        let r = allocate(&mut client, "n1", "", family, &container)
                            .await
                            .unwrap_or_else(|s| panic!("{container}: {s:?}"));
                        (container, address_of(&r))
                    });
                }
            }
        }
        let results = join_all(calls).await;
        let mut per_owner: HashMap<String, BTreeSet<String>> = HashMap::new();
        for (container, address) in results {
            per_owner.entry(container).or_default().insert(address);
        }
        let mut seen = HashSet::new();
        for (container, addresses) in &per_owner {
            assert_eq!(addresses.len(), 1, "{container} got {addresses:?}");
            assert!(seen.insert(addresses.iter().next().unwrap().clone()));
        }
        let records = address_records(&w, "default").await;
        assert_eq!(
            records.len(),
            40,
            "one address record per owner, none left over"
        );
        let claims = raw(&w, "IPAllocation", "default")
            .await
            .into_iter()
            .filter(|r| r.name.starts_with("owner:"))
            .count();
        assert_eq!(claims, 40);
        w.finish().await;
    }

    pub async fn half_done_claims_are_finished_or_taken_over(mut w: World) {
        let r = w.replica().await;
        with_default_pool(&r).await;
        let mut c = r.client.clone();
        node_cidrs(&mut c, "n1", "").await;
        let store = r.ipam.store().clone();
        let ghost = |container: &str, address: &str| Claim {
            owner: kino_ipam::owner::Owner {
                container_id: container.into(),
                ifname: "eth0".into(),
                pod_namespace: "default".into(),
                pod_name: format!("pod-{container}"),
            },
            family: kino_ipam::prefix::Family::V4,
            pool: "default".into(),
            node: "n1".into(),
            address: address.parse().unwrap(),
            bound: false,
            update_time: std::time::SystemTime::now(),
        };
        // A replica died after writing the claim: the retry takes it over.
        let dead = ghost("dead-1", "10.0.0.7");
        create_raw(&store, &dead).await;
        let a = allocate(&mut c, "n1", "", V4, "dead-1").await.unwrap();
        assert_eq!(address_of(&a), "10.0.0.7");
        // A replica died after writing the address record, before binding: finished at once.
        let half = ghost("dead-2", "10.0.0.8");
        create_raw(&store, &half).await;
        allocate(&mut c, "n1", "", V4, "x").await.unwrap(); // (some other traffic)
        let record = kino_ipam::records::Allocation {
            address: "10.0.0.8".parse().unwrap(),
            block: "10.0.0.0/24".parse().unwrap(),
            pool: "default".into(),
            node: "n1".into(),
            owner: half.owner.clone(),
            allocate_time: std::time::SystemTime::now(),
        };
        let _ = store.create("default", "10.0.0.8", &record, 0).await;
        let b = allocate(&mut c, "n1", "", V4, "dead-2").await.unwrap();
        assert_eq!(address_of(&b), "10.0.0.8");
        assert!(b.existing);
        // A dead claim naming an address someone else holds: the taker picks another one.
        let clash = ghost("dead-3", "10.0.0.8");
        create_raw(&store, &clash).await;
        let d = allocate(&mut c, "n1", "", V4, "dead-3").await.unwrap();
        assert_ne!(address_of(&d), "10.0.0.8");
        // Gc frees an address record no claim names (a request that died half-way),
        // even when its owner is valid; and keeps the real ones.
        let orphan = kino_ipam::records::Allocation {
            address: "10.0.0.99".parse().unwrap(),
            owner: half.owner.clone(),
            ..record.clone()
        };
        let _ = store.create("default", "10.0.0.99", &orphan, 0).await;
        let valid: Vec<pb::Owner> = ["dead-1", "dead-2", "dead-3", "x"]
            .iter()
            .map(|c| owner(c))
            .collect();
        let freed = c
            .gc(pb::GcRequest {
                node: "n1".into(),
                valid_owners: valid,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .freed;
        let freed: Vec<String> = freed.into_iter().map(|a| a.address).collect();
        assert_eq!(freed, ["10.0.0.99"]);
        assert_eq!(address_records(&w, "default").await.len(), 4);

        // A replica died between claiming a block for a node and listing it in the node
        // record: Gc of the node gives the block back; so does ReleaseNodeCidrs for a node
        // that never got a record.
        let stray = |node: &str, cidr: &str| NodeBlocks {
            pool: "default".into(),
            node: node.into(),
            blocks: vec![NodeBlock {
                cidr: cidr.parse().unwrap(),
                allocate_time: std::time::SystemTime::now(),
            }],
            releasing: false,
        };
        store
            .create(
                "default",
                "block:10.0.9.0-24",
                &stray("n1", "10.0.9.0/24"),
                0,
            )
            .await
            .map_err(|e| format!("{e:?}"))
            .unwrap();
        store
            .create(
                "default",
                "block:10.0.10.0-24",
                &stray("ghost", "10.0.10.0/24"),
                0,
            )
            .await
            .map_err(|e| format!("{e:?}"))
            .unwrap();
        c.gc(pb::GcRequest {
            node: "n1".into(),
            valid_owners: ["dead-1", "dead-2", "dead-3", "x"]
                .iter()
                .map(|c| owner(c))
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap();
        let names: Vec<String> = raw(&w, "NodeAllocation", "default")
            .await
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert!(
            !names.contains(&"block:10.0.9.0-24".to_owned()),
            "{names:?}"
        );
        assert!(
            names.contains(&"block:10.0.0.0-24".to_owned()),
            "n1's own block stays"
        );
        let released = c
            .release_node_cidrs(pb::ReleaseNodeCidrsRequest {
                node: "ghost".into(),
                pool: String::new(),
                force: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(released.released.is_empty());
        let names: Vec<String> = raw(&w, "NodeAllocation", "default")
            .await
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(
            names,
            ["block:10.0.0.0-24", "block:fd00::-120", "n1"],
            "no stray claim, no barrier left"
        );
        // n1 still allocates.
        allocate(&mut c, "n1", "", V4, "after").await.unwrap();
        w.finish().await;
    }

    pub async fn many_concurrent_allocations_and_releases_never_duplicate(mut w: World) {
        let r1 = w.replica().await;
        with_default_pool(&r1).await;
        let r2 = w.replica().await;
        let r3 = w.replica().await;
        let clients = [r1.client.clone(), r2.client.clone(), r3.client.clone()];
        let mut tasks = Vec::new();
        for worker in 0..24 {
            let mut client = clients[worker % 3].clone();
            tasks.push(tokio::spawn(async move {
                let mut held: Vec<(String, String)> = Vec::new();
                for i in 0..12 {
                    let container = format!("w{worker}-{i}");
                    let node = format!("n{}", worker % 2);
                    let a = allocate(&mut client, &node, "", V4, &container)
                        .await
                        .unwrap_or_else(|s| panic!("{container}: {s:?}"));
                    held.push((container, address_of(&a)));
                    if i % 3 == 2 {
                        let (gone, _) = held.remove(0);
                        release_owner(&mut client, &gone).await;
                    }
                }
                held
            }));
        }
        let mut expected: HashMap<String, String> = HashMap::new();
        for task in tasks {
            for (container, address) in task.await.unwrap() {
                expected.insert(container, address);
            }
        }
        let listed = list_all(&mut clients[0].clone(), "", "").await;
        let mut seen = HashSet::new();
        for a in &listed {
            assert!(
                seen.insert(a.address.clone()),
                "{} handed out twice",
                a.address
            );
            let container = &a.owner.as_ref().unwrap().container_id;
            assert_eq!(expected.get(container), Some(&a.address), "{container}");
        }
        assert_eq!(listed.len(), expected.len(), "no leaked allocation");
        w.finish().await;
    }

    pub async fn listing_pages(mut w: World) {
        let r = w.replica().await;
        with_default_pool(&r).await;
        let mut c = r.client.clone();
        create_pool(&mut c, "blue", family_pool(&["172.24.0.0/16"], 24), None)
            .await
            .unwrap();
        for i in 0..7 {
            allocate(&mut c, "n1", "", V4, &format!("p{i}"))
                .await
                .unwrap();
            allocate(&mut c, "n1", "blue", V4, &format!("b{i}"))
                .await
                .unwrap();
        }
        allocate(&mut c, "n1", "", V6, "p0").await.unwrap();
        let mut pages = Vec::new();
        let mut token = String::new();
        loop {
            let page = c
                .list_allocations(pb::ListAllocationsRequest {
                    page_size: 5,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            pages.push(page.allocations.len());
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(pages.iter().sum::<usize>(), 15);
        assert!(pages.iter().all(|n| *n <= 5), "{pages:?}");
        let blue = list_all(&mut c, "", "blue").await;
        assert!(blue.iter().all(|a| a.pool == "blue") && blue.len() == 7);
        let v6 = c
            .list_allocations(pb::ListAllocationsRequest {
                family: V6 as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .allocations;
        assert_eq!(v6.len(), 1);
        let bad = c
            .list_allocations(pb::ListAllocationsRequest {
                page_size: 6000,
                ..Default::default()
            })
            .await;
        assert_status(bad, Code::InvalidArgument, &["page_size"]);
        let bad = c
            .list_allocations(pb::ListAllocationsRequest {
                page_token: "bogus".into(),
                ..Default::default()
            })
            .await;
        assert_status(bad, Code::InvalidArgument, &["page_token"]);
        let unknown = c
            .pool_status(pb::PoolStatusRequest {
                pool: "nope".into(),
                ..Default::default()
            })
            .await;
        assert_status(unknown, Code::NotFound, &["pool", "\"nope\""]);
        w.finish().await;
    }
}

/// Issue 11: a 1 MB name (node, pool, requested address, CIDR) is refused naming the field,
/// and the message repeats at most 128 bytes of it.
async fn huge_names_are_not_echoed(mut w: World) {
    let r = w.replica().await;
    with_default_pool(&r).await;
    let mut c = r.client.clone();
    let huge = "n".repeat(1 << 20);
    let short = |status: Status, field: &str| {
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(
            status.message().contains(field),
            "{}",
            &status.message()[..200.min(status.message().len())]
        );
        assert!(
            status.message().len() < 512,
            "{field}: the message is {} bytes",
            status.message().len()
        );
    };
    short(
        allocate(&mut c, &huge, "", V4, "c1").await.unwrap_err(),
        "node",
    );
    short(
        allocate(&mut c, "n1", &huge, V4, "c1").await.unwrap_err(),
        "pool",
    );
    let status = c
        .allocate(pb::AllocateRequest {
            node: "n1".into(),
            family: V4 as i32,
            owner: Some(owner("c1")),
            requested_address: huge.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    short(status, "requested_address");
    let status = create_pool(&mut c, "big", family_pool(&[&huge], 24), None)
        .await
        .unwrap_err();
    short(status, "ipv4");
    w.finish().await;
}

async fn create_raw(store: &Datastore, claim: &Claim) {
    store
        .create("default", &claim.owner.claim_name(claim.family), claim, 0)
        .await
        .map_err(|e| format!("{e:?}"))
        .expect("writing a half-done claim");
}

kino_datastore_gateway::testing::suite!("ipam", |backend| crate::World::new(backend).await;
    pools_are_validated_created_listed_and_deleted,
    node_cidrs_are_idempotent_across_replicas_and_restarts,
    allocate_release_and_gc,
    exhaustion_names_pool_node_and_use_and_nodes_grow,
    release_node_cidrs_refuses_then_forces,
    leases_free_nothing_and_only_node_deletion_does,
    replicas_racing_on_one_owner_agree,
    half_done_claims_are_finished_or_taken_over,
    many_concurrent_allocations_and_releases_never_duplicate,
    listing_pages,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_names_are_refused_and_not_echoed() {
    huge_names_are_not_echoed(World::new(backends::embedded().await).await).await;
}
