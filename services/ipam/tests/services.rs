//! The `kino.service.v1` API end to end over real gRPC, on both datastore backends: services
//! created, read, listed, updated and deleted with their Service records and claims; every
//! refusal naming its field and leaving nothing behind (an unknown backend among them);
//! a frontend held by one service at most, also when replicas race for it; frontend ids
//! kept across updates and reused after deletion; claims left by a kino-ipam that stopped
//! half-way collected or taken over, and a claim still being written never taken.

mod backends;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use backends::{Replica, World, assert_status, default_pool};
use futures::future::join_all;
use kino_api::datastore::{ListRequest, Resource};
use kino_api::ipam as ipam_pb;
use kino_api::service as pb;
use kino_api::types::{IpFamily, Node, NodeAddress, NodeAddressType};
use kino_ipam::IpamOptions;
use kino_ipam::lb::claims::{Claim, FrontendClaim, IdClaim};
use kino_ipam::lb::model::ServiceName;
use kino_ipam::lb::network::ServiceNetwork;
use tonic::{Code, Status};

fn frontend(
    kind: pb::FrontendType,
    address: &str,
    port: u32,
    protocol: pb::Protocol,
) -> pb::Frontend {
    pb::Frontend {
        r#type: kind as i32,
        address: address.into(),
        port,
        protocol: protocol as i32,
        ..Default::default()
    }
}

fn vip(address: &str, port: u32) -> pb::Frontend {
    frontend(
        pb::FrontendType::ClusterIp,
        address,
        port,
        pb::Protocol::Tcp,
    )
}

fn backend(address: &str, port: u32) -> pb::Backend {
    pb::Backend {
        address: address.into(),
        port,
        ..Default::default()
    }
}

fn service(name: &str, frontends: Vec<pb::Frontend>, backends: Vec<pb::Backend>) -> pb::Service {
    pb::Service {
        name: name.into(),
        frontends,
        backends,
        ..Default::default()
    }
}

async fn create(r: &Replica, service: pb::Service) -> Result<pb::Service, Status> {
    r.services
        .clone()
        .create_service(pb::CreateServiceRequest {
            service: Some(service),
        })
        .await
        .map(|response| response.into_inner().service.expect("a service"))
}

async fn update(r: &Replica, service: pb::Service, expected: i64) -> Result<pb::Service, Status> {
    r.services
        .clone()
        .update_service(pb::UpdateServiceRequest {
            service: Some(service),
            expected_revision: expected,
        })
        .await
        .map(|response| response.into_inner().service.expect("a service"))
}

async fn delete(r: &Replica, name: &str) -> Result<pb::Service, Status> {
    r.services
        .clone()
        .delete_service(pb::DeleteServiceRequest {
            namespace: String::new(),
            name: name.into(),
        })
        .await
        .map(|response| response.into_inner().service.expect("a service"))
}

async fn get(r: &Replica, name: &str) -> Result<pb::Service, Status> {
    r.services
        .clone()
        .get_service(pb::GetServiceRequest {
            namespace: String::new(),
            name: name.into(),
        })
        .await
        .map(|response| response.into_inner().service.expect("a service"))
}

async fn list(r: &Replica, namespace: &str) -> Vec<pb::Service> {
    r.services
        .clone()
        .list_services(pb::ListServicesRequest {
            namespace: namespace.into(),
        })
        .await
        .expect("ListServices")
        .into_inner()
        .services
}

/// Every record of `kind`, straight from the datastore.
async fn raw(w: &World, kind: &str) -> Vec<Resource> {
    w.datastore
        .clone()
        .list(ListRequest {
            kind: kind.into(),
            limit: 5000,
            ..Default::default()
        })
        .await
        .expect("List")
        .into_inner()
        .resources
}

async fn names(w: &World, kind: &str) -> BTreeSet<String> {
    raw(w, kind).await.into_iter().map(|r| r.name).collect()
}

/// The default pool, and pods on nodes n1 and n2 holding addresses: returns them.
async fn pods(r: &Replica, count: usize) -> Vec<String> {
    r.ipam
        .ensure_pool(default_pool())
        .await
        .expect("default pool");
    let mut addresses = Vec::new();
    for i in 0..count {
        let node = if i % 2 == 0 { "n1" } else { "n2" };
        let allocated = r
            .client
            .clone()
            .allocate(ipam_pb::AllocateRequest {
                node: node.into(),
                family: IpFamily::Ipv4 as i32,
                owner: Some(ipam_pb::Owner {
                    container_id: format!("c{i}"),
                    ifname: "eth0".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("Allocate")
            .into_inner();
        addresses.push(allocated.allocation.expect("an allocation").address);
    }
    addresses
}

/// A replica whose claims bind for an hour unless listed, so that no request of a test
/// ever takes over another's claim because the machine is slow; claims left "an hour ago"
/// are written by the tests themselves.
async fn replica(w: &mut World) -> Replica {
    w.replica_with(IpamOptions {
        takeover_after: TAKEOVER,
        ..IpamOptions::default()
    })
    .await
}

const TAKEOVER: Duration = Duration::from_secs(3600);

fn ids(service: &pb::Service) -> Vec<u32> {
    service.frontends.iter().map(|f| f.id).collect()
}

mod cases {
    use super::*;

    pub async fn services_are_created_read_listed_updated_and_deleted(mut w: World) {
        let r = replica(&mut w).await;
        let pods = pods(&r, 2).await;
        // A node's own address is a backend too (a host-network service).
        r.ipam
            .store()
            .create(
                "",
                "n3",
                &Node {
                    name: "n3".into(),
                    addresses: vec![NodeAddress {
                        r#type: NodeAddressType::InternalIp as i32,
                        address: "192.0.2.13".into(),
                    }],
                    ..Default::default()
                },
                0,
            )
            .await
            .expect("a Node record");
        let mut web = service(
            "web",
            vec![vip("172.20.0.10", 80), vip("fd00:ffff::a", 80)],
            vec![
                backend(&pods[0], 8080),
                backend(&pods[1], 8080),
                backend("192.0.2.13", 8080),
            ],
        );
        web.session_affinity = Some(pb::SessionAffinity {
            r#type: pb::SessionAffinityType::ClientIp as i32,
            timeout: None,
        });
        let created = create(&r, web.clone()).await.expect("created");
        assert_eq!(created.namespace, "default");
        assert_eq!(ids(&created), [1, 2]);
        assert!(created.revision > 0);
        assert_eq!(
            created
                .backends
                .iter()
                .map(|b| b.node_name.as_str())
                .collect::<Vec<_>>(),
            ["n1", "n2", "n3"],
            "each backend's node, from IPAM's allocation or the Node record"
        );
        let affinity = created.session_affinity.unwrap();
        assert_eq!(
            affinity.timeout.unwrap().seconds,
            10800,
            "the default timeout"
        );
        assert_eq!(get(&r, "web").await.unwrap(), created);
        assert_eq!(
            names(&w, "ServiceFrontend").await,
            BTreeSet::from(["tcp-172.20.0.10-80".into(), "tcp-fd00:ffff::a-80".into()])
        );
        assert_eq!(
            names(&w, "ServiceFrontendId").await,
            BTreeSet::from(["1".into(), "2".into()])
        );

        let mut dns = service(
            "dns",
            vec![frontend(
                pb::FrontendType::ClusterIp,
                "172.20.0.53",
                53,
                pb::Protocol::Udp,
            )],
            vec![backend(&pods[1], 53)],
        );
        dns.namespace = "kube-system".into();
        create(&r, dns).await.expect("dns");
        let all = list(&r, "").await;
        assert_eq!(
            all.iter()
                .map(|s| format!("{}/{}", s.namespace, s.name))
                .collect::<Vec<_>>(),
            ["default/web", "kube-system/dns"],
            "sorted by namespace and name"
        );
        assert_eq!(list(&r, "kube-system").await.len(), 1);
        assert_status(
            create(&r, web.clone()).await,
            Code::AlreadyExists,
            &["service default/web already exists"],
        );

        // Update: a backend drained, one frontend replaced by a NodePort.
        web.r#type = pb::ServiceType::NodePort as i32;
        web.frontends = vec![
            vip("172.20.0.10", 80),
            frontend(pb::FrontendType::NodePort, "", 30080, pb::Protocol::Tcp),
        ];
        web.backends[0].state = pb::BackendState::Terminating as i32;
        assert_status(
            update(&r, web.clone(), created.revision + 1000).await,
            Code::FailedPrecondition,
            &["not the expected revision"],
        );
        let updated = update(&r, web.clone(), created.revision)
            .await
            .expect("updated");
        assert_eq!(ids(&updated)[0], 1, "the kept frontend keeps its id");
        assert_eq!(updated.backends[0].state(), pb::BackendState::Terminating);
        assert_eq!(updated.create_time, created.create_time);
        assert!(updated.revision > created.revision);
        assert_eq!(
            names(&w, "ServiceFrontend").await,
            BTreeSet::from([
                "tcp--30080".into(),
                "tcp-172.20.0.10-80".into(),
                "udp-172.20.0.53-53".into()
            ]),
            "the dropped frontend's claim is given back"
        );
        assert_status(
            update(&r, web.clone(), created.revision).await,
            Code::FailedPrecondition,
            &["changed since you read it"],
        );

        let deleted = delete(&r, "web").await.expect("deleted");
        assert_eq!(deleted.revision, updated.revision);
        assert_status(
            get(&r, "web").await,
            Code::NotFound,
            &["service default/web"],
        );
        assert_status(
            delete(&r, "web").await,
            Code::NotFound,
            &["kino service list"],
        );
        assert_status(
            update(&r, web, 0).await,
            Code::NotFound,
            &["service default/web"],
        );
        assert_eq!(
            names(&w, "ServiceFrontend").await,
            BTreeSet::from(["udp-172.20.0.53-53".into()])
        );
        assert_eq!(names(&w, "Service").await.len(), 1);
        w.finish().await;
    }

    pub async fn refusals_name_the_field_and_leave_nothing(mut w: World) {
        let r = replica(&mut w).await;
        let pods = pods(&r, 1).await;
        let good = || {
            service(
                "web",
                vec![vip("172.20.0.10", 80)],
                vec![backend(&pods[0], 80)],
            )
        };
        let mut cases: Vec<(pb::Service, &str, &str)> = Vec::new();
        let mut s = good();
        s.backends.push(backend("10.0.99.99", 80));
        cases.push((
            s,
            "service.backends[1].address",
            "10.0.99.99 is not a known backend",
        ));
        let mut s = good();
        s.backends.push(backend("198.18.0.1", 80));
        cases.push((s, "service.backends[1].address", "no node has it"));
        let mut s = good();
        s.frontends.push(frontend(
            pb::FrontendType::ExternalIp,
            "10.200.0.1",
            80,
            pb::Protocol::Tcp,
        ));
        cases.push((
            s,
            "service.frontends[1].address",
            "inside 10.0.0.0/8 of pod pool \"default\"",
        ));
        let mut s = good();
        s.frontends[0].address = "10.96.0.10".into();
        cases.push((
            s,
            "service.frontends[0].address",
            "outside the service CIDRs",
        ));
        let mut s = good();
        s.frontends.push(frontend(
            pb::FrontendType::NodePort,
            "",
            30080,
            pb::Protocol::Tcp,
        ));
        cases.push((s, "service.frontends[1].type", "SERVICE_TYPE_NODE_PORT"));
        let mut s = good();
        s.frontends.push(vip("172.20.0.11", 0));
        cases.push((s, "service.frontends[1].port", "outside 1..65535"));
        let mut s = good();
        s.name = "Web".into();
        cases.push((s, "service.name", "lower-case"));
        for (s, field, reason) in cases {
            assert_status(
                create(&r, s).await,
                Code::InvalidArgument,
                &[&format!("invalid {field}: "), reason],
            );
            for kind in ["Service", "ServiceFrontend", "ServiceFrontendId"] {
                assert!(
                    raw(&w, kind).await.is_empty(),
                    "{field}: a {kind} record was left"
                );
            }
        }
        assert_status(
            r.services
                .clone()
                .create_service(pb::CreateServiceRequest { service: None })
                .await,
            Code::InvalidArgument,
            &["service"],
        );
        // The same refusals on update leave the service as it was.
        let created = create(&r, good()).await.expect("created");
        let mut s = good();
        s.frontends.push(vip("172.20.0.12", 80));
        s.backends.push(backend("10.0.99.99", 80));
        assert_status(
            update(&r, s, 0).await,
            Code::InvalidArgument,
            &["service.backends[1].address"],
        );
        assert_eq!(get(&r, "web").await.unwrap(), created);
        assert_eq!(names(&w, "ServiceFrontend").await.len(), 1);
        w.finish().await;
    }

    pub async fn a_frontend_belongs_to_one_service(mut w: World) {
        let r = replica(&mut w).await;
        let pods = pods(&r, 1).await;
        create(
            &r,
            service(
                "a",
                vec![vip("172.20.0.10", 80)],
                vec![backend(&pods[0], 80)],
            ),
        )
        .await
        .expect("a");
        let b = service(
            "b",
            vec![vip("172.20.0.10", 81), vip("172.20.0.10", 80)],
            vec![backend(&pods[0], 80)],
        );
        assert_status(
            create(&r, b.clone()).await,
            Code::InvalidArgument,
            &[
                "service.frontends[1]",
                "172.20.0.10:80/TCP is held by service default/a",
            ],
        );
        assert_eq!(
            names(&w, "ServiceFrontend").await,
            BTreeSet::from(["tcp-172.20.0.10-80".into()]),
            "b's first claim was rolled back"
        );
        // The same port over UDP, or the VIP of another family, is another frontend.
        let mut udp = vip("172.20.0.10", 80);
        udp.protocol = pb::Protocol::Udp as i32;
        create(&r, service("c", vec![udp], vec![backend(&pods[0], 80)]))
            .await
            .expect("UDP on the same port");
        delete(&r, "a").await.expect("a deleted");
        create(&r, b).await.expect("b once a is gone");
        w.finish().await;
    }

    pub async fn concurrent_creates_of_one_frontend_have_one_winner(mut w: World) {
        let replicas = [replica(&mut w).await, replica(&mut w).await];
        let pods = pods(&replicas[0], 1).await;
        for round in 0..4 {
            let vip_address = format!("172.20.1.{}", round + 1);
            let attempts = (0..8).map(|i| {
                let r = &replicas[i % 2];
                let s = service(
                    &format!("race-{round}-{i}"),
                    vec![
                        vip(&format!("172.20.2.{}", i + 1), 1000 + round),
                        vip(&vip_address, 80),
                    ],
                    vec![backend(&pods[0], 80)],
                );
                create(r, s)
            });
            let outcomes = join_all(attempts).await;
            let winners: Vec<&pb::Service> =
                outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
            assert_eq!(winners.len(), 1, "round {round}: {outcomes:?}");
            for outcome in &outcomes {
                if let Err(status) = outcome {
                    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
                    assert!(
                        status
                            .message()
                            .contains(&format!("is held by service default/{}", winners[0].name)),
                        "{status:?}"
                    );
                }
            }
            let claims = names(&w, "ServiceFrontend").await;
            assert_eq!(
                claims.len(),
                2 * (round as usize + 1),
                "only the winners' claims: {claims:?}"
            );
            let services = list(&replicas[1], "").await;
            let ids: Vec<u32> = services.iter().flat_map(ids).collect();
            let distinct: BTreeSet<u32> = ids.iter().copied().collect();
            assert_eq!(distinct.len(), ids.len(), "ids are unique: {ids:?}");
            assert_eq!(
                names(&w, "ServiceFrontendId").await.len(),
                ids.len(),
                "no id claim left over"
            );
        }
        w.finish().await;
    }

    pub async fn ids_are_kept_across_updates_and_reused_after_delete(mut w: World) {
        let r = replica(&mut w).await;
        let other = replica(&mut w).await;
        let pods = pods(&r, 1).await;
        let b = || vec![backend(&pods[0], 80)];
        let a = create(
            &r,
            service(
                "a",
                vec![vip("172.20.0.1", 80), vip("172.20.0.1", 443)],
                b(),
            ),
        )
        .await
        .unwrap();
        let c = create(&r, service("c", vec![vip("172.20.0.3", 80)], b()))
            .await
            .unwrap();
        assert_eq!((ids(&a), ids(&c)), (vec![1, 2], vec![3]));
        // Reordered and one added: each kept frontend keeps its id.
        let a2 = update(
            &r,
            service(
                "a",
                vec![
                    vip("172.20.0.1", 443),
                    vip("172.20.0.1", 8443),
                    vip("172.20.0.1", 80),
                ],
                b(),
            ),
            0,
        )
        .await
        .unwrap();
        assert_eq!(ids(&a2), [2, 4, 1]);
        delete(&r, "c").await.unwrap();
        // Another replica (its id cache loaded now) takes the freed id 3; this one, whose
        // cache believes 3 free again, finds it held and takes the next.
        let d = create(&other, service("d", vec![vip("172.20.0.4", 80)], b()))
            .await
            .unwrap();
        let e = create(&r, service("e", vec![vip("172.20.0.5", 80)], b()))
            .await
            .unwrap();
        let mut reused = vec![ids(&d)[0], ids(&e)[0]];
        reused.sort();
        assert_eq!(reused, [3, 5], "the freed id is handed out again");
        w.finish().await;
    }

    pub async fn claims_left_half_way_are_collected_or_taken_over(mut w: World) {
        let r = replica(&mut w).await;
        let pods = pods(&r, 1).await;
        let ghost = ServiceName {
            namespace: "default".into(),
            name: "ghost".into(),
        };
        let old = Claim {
            holder: ghost.clone(),
            claim_time: SystemTime::now() - 2 * TAKEOVER,
        };
        let store = r.ipam.store();
        // A kino-ipam that stopped between its claims and its record left these.
        store
            .create("", "tcp-172.20.0.10-80", &FrontendClaim(old.clone()), 0)
            .await
            .unwrap();
        store
            .create("", "1", &IdClaim(old.clone()), 0)
            .await
            .unwrap();
        store
            .create("", "tcp-172.20.0.11-80", &FrontendClaim(old.clone()), 0)
            .await
            .unwrap();
        // One still being written (young): it binds.
        store
            .create(
                "",
                "tcp-172.20.0.12-80",
                &FrontendClaim(Claim::now(&ghost)),
                0,
            )
            .await
            .unwrap();
        // A live service's claims bind however old they are.
        let live = create(
            &r,
            service(
                "live",
                vec![vip("172.20.0.20", 80)],
                vec![backend(&pods[0], 80)],
            ),
        )
        .await
        .unwrap();
        assert_eq!(
            ids(&live),
            [2],
            "id 1 is claimed (not yet known to be left)"
        );

        // A request that needs a left claim takes it over.
        let taken = create(
            &r,
            service(
                "web",
                vec![vip("172.20.0.10", 80)],
                vec![backend(&pods[0], 80)],
            ),
        )
        .await
        .expect("the left claim is taken over");
        let claim = store
            .get::<FrontendClaim>("", "tcp-172.20.0.10-80")
            .await
            .unwrap()
            .expect("claimed");
        assert_eq!(claim.value.0.holder.to_string(), "default/web");
        assert_eq!(ids(&taken), [3]);
        // A young one is not.
        assert_status(
            create(
                &r,
                service(
                    "late",
                    vec![vip("172.20.0.12", 80)],
                    vec![backend(&pods[0], 80)],
                ),
            )
            .await,
            Code::InvalidArgument,
            &["held by service default/ghost"],
        );

        // Start-up collection removes the old unlisted claims, keeps the rest.
        assert_eq!(r.ipam.collect_service_claims().await.unwrap(), 2);
        assert_eq!(
            names(&w, "ServiceFrontend").await,
            BTreeSet::from([
                "tcp-172.20.0.10-80".into(),
                "tcp-172.20.0.12-80".into(),
                "tcp-172.20.0.20-80".into()
            ])
        );
        assert_eq!(
            names(&w, "ServiceFrontendId").await,
            BTreeSet::from(["2".into(), "3".into()])
        );
        assert_eq!(
            r.ipam.collect_service_claims().await.unwrap(),
            0,
            "nothing more to collect"
        );
        w.finish().await;
    }

    pub async fn the_service_network_is_the_flags_and_no_pool_overlaps_it(mut w: World) {
        let network = ServiceNetwork::parse(&["10.96.0.0/12".into()], "30000-30010").unwrap();
        let r = w
            .replica_with(IpamOptions {
                takeover_after: TAKEOVER,
                service_network: network,
                ..IpamOptions::default()
            })
            .await;
        let answer = r
            .services
            .clone()
            .get_service_network(pb::GetServiceNetworkRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.service_cidrs, ["10.96.0.0/12"]);
        assert_eq!((answer.node_port_min, answer.node_port_max), (30000, 30010));
        let refused = r
            .client
            .clone()
            .create_pool(ipam_pb::CreatePoolRequest {
                pool: Some(ipam_pb::IpPool {
                    name: "blue".into(),
                    ipv4: Some(ipam_pb::PoolFamily {
                        cidrs: vec!["10.0.0.0/8".into()],
                        node_mask_size: 24,
                    }),
                    ..Default::default()
                }),
            })
            .await;
        assert_status(
            refused,
            Code::InvalidArgument,
            &["pool.ipv4.cidrs[0]", "overlaps service CIDR 10.96.0.0/12"],
        );
        assert!(names(&w, "IPPool").await.is_empty(), "nothing stored");
        assert_eq!(r.ipam.pool_overlapping_services().await.unwrap(), None);
        // A pool stored before --service-cidr changed: kino-ipam refuses to start over it.
        r.ipam
            .store()
            .create(
                "",
                "default",
                &kino_ipam::records::Pool {
                    config: default_pool(),
                    phase: kino_ipam::pool::PoolPhase::Ready,
                    create_time: SystemTime::now(),
                },
                0,
            )
            .await
            .unwrap();
        let overlap = r
            .ipam
            .pool_overlapping_services()
            .await
            .unwrap()
            .expect("an overlap");
        assert!(
            overlap.contains("service CIDR 10.96.0.0/12 overlaps 10.0.0.0/8 of pool \"default\""),
            "{overlap}"
        );
        let mut s = service("web", vec![vip("10.96.0.10", 80)], vec![]);
        s.r#type = pb::ServiceType::NodePort as i32;
        s.frontends.push(frontend(
            pb::FrontendType::NodePort,
            "",
            30080,
            pb::Protocol::Tcp,
        ));
        assert_status(
            create(&r, s).await,
            Code::InvalidArgument,
            &[
                "service.frontends[1].port",
                "outside the NodePort range 30000-30010",
            ],
        );
        w.finish().await;
    }
}

kino_datastore_gateway::testing::suite!("ipam-services", |backend| crate::World::new(backend).await;
    services_are_created_read_listed_updated_and_deleted,
    refusals_name_the_field_and_leave_nothing,
    a_frontend_belongs_to_one_service,
    concurrent_creates_of_one_frontend_have_one_winner,
    ids_are_kept_across_updates_and_reused_after_delete,
    claims_left_half_way_are_collected_or_taken_over,
    the_service_network_is_the_flags_and_no_pool_overlaps_it,
);
