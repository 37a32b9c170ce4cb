//! The `kino.policy.v1` API over real gRPC, against a real datastore gateway (in-process,
//! embedded backend; etcd too when one answers): policy import all-or-nothing with field
//! paths, get / list / delete, identities allocated once by racing compilers and garbage
//! collected, WatchEndpointPolicy deltas and resume, GetEndpointPolicy and TracePolicy.

mod backends;

use std::time::Duration;

use backends::{Replica, World};
use kino_api::datastore::{CreateRequest, DeleteRequest, Resource, ResourceKey};
use kino_api::policy as pb;
use kino_api::types as pbt;
use kino_policy_compiler::service::ServiceOptions;
use prost::Message;
use tokio_stream::StreamExt;
use tonic::{Code, Streaming};

const WEB_LABELS: &str = "container:namespace=shop,container:app=web";
const LB_LABELS: &str = "container:namespace=shop,container:app=lb";

const BAD_DOCS: &str = r#"
apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: fine, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: [{}]
---
apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: broken, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - toPorts:
    - ports:
      - {port: "80"}
      - {port: "99999"}
"#;

const WEB_POLICY: &str = r#"
apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  description: lb may reach web on 80
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: lb}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;

const K8S_POLICY: &str = r#"{
  "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
  "metadata": {"name": "dns", "namespace": "shop"},
  "spec": {"podSelector": {}, "policyTypes": ["Egress"],
           "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}
}"#;

fn labels(text: &str) -> pbt::Labels {
    pbt::Labels {
        labels: text
            .split(',')
            .map(|l| {
                let (sk, value) = l.split_once('=').unwrap();
                let (source, key) = sk.split_once(':').unwrap();
                pbt::Label {
                    key: key.into(),
                    value: value.into(),
                    source: source.into(),
                }
            })
            .collect(),
    }
}

fn policy_ref(ns: &str, name: &str) -> Option<pb::PolicyRef> {
    Some(pb::PolicyRef {
        namespace: ns.into(),
        name: name.into(),
    })
}

async fn import(
    replica: &Replica,
    docs: &str,
) -> Result<pb::ImportPoliciesResponse, tonic::Status> {
    replica
        .client
        .clone()
        .import_policies(pb::ImportPoliciesRequest {
            documents: docs.into(),
            default_namespace: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn allocate(replica: &Replica, text: &str) -> pb::AllocateIdentityResponse {
    replica
        .client
        .clone()
        .allocate_identity(pb::AllocateIdentityRequest {
            labels: Some(labels(text)),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Writes an Endpoint record as an agent does (namespace = node, name = endpoint id).
async fn put_endpoint(world: &World, node: &str, id: u32, identity: u32, ip: &str) {
    let endpoint = kino_api::agent::Endpoint {
        id,
        node_name: node.into(),
        identity,
        networking: Some(kino_api::agent::EndpointNetworking {
            addressing: Some(kino_api::agent::EndpointAddressing {
                ipv4: ip.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    world
        .datastore
        .clone()
        .create(CreateRequest {
            resource: Some(Resource {
                kind: "Endpoint".into(),
                namespace: node.into(),
                name: id.to_string(),
                spec: Some(prost_types::Any {
                    type_url: "type.googleapis.com/kino.agent.v1.Endpoint".into(),
                    value: endpoint.encode_to_vec(),
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
}

async fn next(
    stream: &mut Streaming<pb::WatchEndpointPolicyResponse>,
) -> pb::WatchEndpointPolicyResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a stream message within 10 s")
        .expect("the stream is open")
        .expect("a message, not an error")
}

/// Reads messages until one with synced = true; returns them all.
async fn next_synced(
    stream: &mut Streaming<pb::WatchEndpointPolicyResponse>,
) -> Vec<pb::WatchEndpointPolicyResponse> {
    let mut out = Vec::new();
    loop {
        let m = next(stream).await;
        let synced = m.synced;
        out.push(m);
        if synced {
            return out;
        }
    }
}

/// Reads synced steps until one carries a policy update (skipping progress messages).
async fn next_update(
    stream: &mut Streaming<pb::WatchEndpointPolicyResponse>,
) -> Vec<pb::WatchEndpointPolicyResponse> {
    for _ in 0..20 {
        let step = next_synced(stream).await;
        if step.iter().any(|m| !m.policy_updates.is_empty()) {
            return step;
        }
    }
    panic!("no policy update in 20 steps");
}

async fn policies_and_errors(world: &mut World) {
    let replica = world.replica().await;
    let mut client = replica.client.clone();

    // One bad document: INVALID_ARGUMENT naming the path, nothing stored.
    let err = import(&replica, BAD_DOCS).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(
            "document 1, spec.ingress[0].toPorts[0].ports[1].port: \"99999\" is not a port (1-65535)"
        ),
        "{}",
        err.message()
    );
    let list = client
        .list_policies(pb::ListPoliciesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        list.policies.is_empty(),
        "nothing may be stored: {:?}",
        list.policies
    );

    // ValidatePolicies gives the same error as data.
    let validated = client
        .validate_policies(pb::ValidatePoliciesRequest {
            documents: BAD_DOCS.into(),
            default_namespace: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(validated.errors.len(), 1);
    assert_eq!(validated.errors[0].document_index, 1);
    assert_eq!(
        validated.errors[0].path,
        "spec.ingress[0].toPorts[0].ports[1].port"
    );
    assert_eq!(validated.policies.len(), 1);

    // Valid documents: created, then unchanged, then updated.
    let docs = format!("{WEB_POLICY}\n---\n{}", K8S_POLICY.replace('\n', " "));
    let first = import(&replica, &docs).await.unwrap();
    assert_eq!(first.policies.len(), 2);
    assert!(
        first
            .policies
            .iter()
            .all(|p| p.action == pb::ImportAction::Created as i32)
    );
    assert!(first.revision > 0);
    let again = import(&replica, &docs).await.unwrap();
    assert!(
        again
            .policies
            .iter()
            .all(|p| p.action == pb::ImportAction::Unchanged as i32)
    );
    let changed = import(&replica, &WEB_POLICY.replace("on 80", "on port 80"))
        .await
        .unwrap();
    assert_eq!(changed.policies[0].action, pb::ImportAction::Updated as i32);

    let got = client
        .get_policy(pb::GetPolicyRequest {
            policy: policy_ref("shop", "web"),
        })
        .await
        .unwrap()
        .into_inner();
    let policy = got.policy.unwrap();
    assert_eq!(policy.kind, pb::PolicyKind::KinoNetworkPolicy as i32);
    assert!(policy.source.contains("on port 80"));
    assert!(policy.import_time.is_some());
    let Some(pb::policy::Spec::KinoNetworkPolicy(k)) = policy.spec else {
        panic!("parsed form missing")
    };
    assert_eq!(k.rules[0].ingress[0].ports[0].port, 80);

    // List pages.
    let page1 = client
        .list_policies(pb::ListPoliciesRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page1.policies.len(), 1);
    assert_eq!(page1.policies[0].name, "dns");
    let page2 = client
        .list_policies(pb::ListPoliciesRequest {
            page_size: 1,
            page_token: page1.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page2.policies[0].name, "web");
    assert!(page2.next_page_token.is_empty());
    let k8s_only = client
        .list_policies(pb::ListPoliciesRequest {
            kind: pb::PolicyKind::K8sNetworkPolicy as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(k8s_only.policies.len(), 1);

    // Delete.
    let deleted = client
        .delete_policy(pb::DeletePolicyRequest {
            policy: policy_ref("shop", "web"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.policy.unwrap().name, "web");
    assert!(deleted.revision > changed.revision);
    for result in [
        client
            .get_policy(pb::GetPolicyRequest {
                policy: policy_ref("shop", "web"),
            })
            .await
            .map(|_| ()),
        client
            .delete_policy(pb::DeletePolicyRequest {
                policy: policy_ref("shop", "web"),
            })
            .await
            .map(|_| ()),
    ] {
        assert_eq!(result.unwrap_err().code(), Code::NotFound);
    }
    let bad_name = client
        .get_policy(pb::GetPolicyRequest {
            policy: policy_ref("shop", "no/such"),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_name.code(), Code::InvalidArgument);
    assert!(
        bad_name.message().contains("policy.name"),
        "{}",
        bad_name.message()
    );
}

async fn racing_identities(world: &mut World) {
    let a = world.replica().await;
    let b = world.replica().await;
    let mut calls = Vec::new();
    for i in 0..16 {
        let mut client = if i % 2 == 0 {
            a.client.clone()
        } else {
            b.client.clone()
        };
        calls.push(tokio::spawn(async move {
            client
                .allocate_identity(pb::AllocateIdentityRequest {
                    labels: Some(labels(WEB_LABELS)),
                })
                .await
                .unwrap()
                .into_inner()
        }));
    }
    let mut ids = Vec::new();
    let mut created = 0;
    for call in calls {
        let response = call.await.unwrap();
        ids.push(response.identity.unwrap().id);
        created += response.created as usize;
    }
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one id for one label set: {ids:?}"
    );
    assert_eq!(created, 1, "exactly one call allocated it");
    assert!(ids[0] >= 256);
    // Other labels get another id; reserved labels their reserved id.
    let lb = allocate(&b, LB_LABELS).await;
    assert_ne!(lb.identity.unwrap().id, ids[0]);
    let host = allocate(&a, "reserved:host=").await;
    assert_eq!(host.identity.unwrap().id, 1);
    // Exactly one id record and one index record per label set in the datastore.
    let list = a
        .client
        .clone()
        .list_identities(pb::ListIdentitiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let stored: Vec<u32> = list
        .identities
        .iter()
        .map(|i| i.id)
        .filter(|id| *id >= 256)
        .collect();
    assert_eq!(stored.len(), 2, "{:?}", list.identities);
    assert!(list.identities.iter().any(|i| i.id == 2 && i.reserved));
    let by_labels = b
        .client
        .clone()
        .get_identity(pb::GetIdentityRequest {
            lookup: Some(pb::get_identity_request::Lookup::Labels(labels(WEB_LABELS))),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_labels.identity.unwrap().id, ids[0]);
    let selected = a
        .client
        .clone()
        .list_identities(pb::ListIdentitiesRequest {
            selector: Some(pb::LabelSelector {
                match_labels: [("app".to_owned(), "lb".to_owned())].into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(selected.identities.len(), 1);
    let bad = a
        .client
        .clone()
        .allocate_identity(pb::AllocateIdentityRequest { labels: None })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

async fn watch_and_resume(world: &mut World) {
    let replica = world.replica().await;
    let mut client = replica.client.clone();
    let web = allocate(&replica, WEB_LABELS).await.identity.unwrap().id;
    let lb = allocate(&replica, LB_LABELS).await.identity.unwrap().id;
    put_endpoint(world, "n1", 1, web, "10.0.1.1").await;
    put_endpoint(world, "n2", 1, lb, "10.0.2.1").await;

    let mut stream = client
        .watch_endpoint_policy(pb::WatchEndpointPolicyRequest {
            node_name: "n1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // The snapshot may come before the compiler saw the endpoint; wait for the identity.
    let mut step = next_synced(&mut stream).await;
    assert!(step[0].reset);
    while !step
        .iter()
        .any(|m| m.policy_updates.iter().any(|u| u.identity == web))
    {
        step = next_synced(&mut stream).await;
    }
    let epoch = step[0].epoch.clone();
    assert_eq!(epoch, replica.service.epoch());
    let update = step
        .iter()
        .flat_map(|m| &m.policy_updates)
        .find(|u| u.identity == web)
        .unwrap();
    assert!(update.replace);
    assert_eq!(
        update.enforcement,
        Some(pbt::PolicyEnforcement {
            ingress: false,
            egress: false
        })
    );

    // A policy selecting web: enforcement on, an entry allowing lb on 80/TCP.
    let imported = import(&replica, WEB_POLICY).await.unwrap();
    let step = next_update(&mut stream).await;
    let last = step.last().unwrap();
    assert!(
        last.revision >= imported.revision,
        "{} < {}",
        last.revision,
        imported.revision
    );
    let update = &step[0].policy_updates[0];
    assert_eq!(update.identity, web);
    assert!(!update.replace && !update.removed);
    assert_eq!(
        update.enforcement,
        Some(pbt::PolicyEnforcement {
            ingress: true,
            egress: false
        })
    );
    let keys: Vec<(u32, i32, u32)> = update
        .upserts
        .iter()
        .map(|e| {
            let k = e.key.as_ref().unwrap();
            let Some(pb::policy_map_key::Remote::RemoteIdentity(r)) = k.remote else {
                panic!()
            };
            (r, k.protocol, k.port)
        })
        .collect();
    assert!(keys.contains(&(lb, 6, 80)), "{keys:?}");
    assert!(keys.contains(&(1, 0, 0)), "allow-localhost: {keys:?}");
    let synced_at = last.revision;

    // GetEndpointPolicy and TracePolicy see the same.
    let full = client
        .get_endpoint_policy(pb::GetEndpointPolicyRequest { identity: web })
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(full.entries.len(), update.upserts.len());
    assert_eq!(
        full.selected_by,
        vec![pb::PolicyRef {
            namespace: "shop".into(),
            name: "web".into()
        }]
    );
    let trace = |port: u32| pb::TracePolicyRequest {
        source: Some(pb::TracePeer {
            peer: Some(pb::trace_peer::Peer::Labels(labels(LB_LABELS))),
        }),
        destination: Some(pb::TracePeer {
            peer: Some(pb::trace_peer::Peer::Ip("10.0.1.1".into())),
        }),
        destination_port: port,
        protocol: pbt::Protocol::Tcp as i32,
    };
    let allowed = client.trace_policy(trace(80)).await.unwrap().into_inner();
    assert_eq!(
        allowed.verdict,
        pbt::PolicyVerdict::Allow as i32,
        "{:?}",
        allowed.explanation
    );
    let ingress = allowed.ingress.unwrap();
    assert_eq!(ingress.reason, pb::TraceReason::AllowedByRule as i32);
    assert_eq!(ingress.allowed_by[0].path, "spec.ingress[0]");
    let denied = client.trace_policy(trace(81)).await.unwrap().into_inner();
    assert_eq!(denied.verdict, pbt::PolicyVerdict::Deny as i32);
    assert_eq!(
        denied.ingress.unwrap().reason,
        pb::TraceReason::DefaultDeny as i32
    );
    let reserved = client
        .get_endpoint_policy(pb::GetEndpointPolicyRequest { identity: 2 })
        .await
        .unwrap_err();
    assert_eq!(reserved.code(), Code::NotFound);

    // Removing the policy: enforcement off, entries deleted.
    client
        .delete_policy(pb::DeletePolicyRequest {
            policy: policy_ref("shop", "web"),
        })
        .await
        .unwrap();
    let step = next_update(&mut stream).await;
    let update = &step[0].policy_updates[0];
    assert_eq!(
        update.enforcement,
        Some(pbt::PolicyEnforcement {
            ingress: false,
            egress: false
        })
    );
    assert_eq!(update.deletes.len(), keys.len());
    let resume_revision = step.last().unwrap().revision;
    drop(stream);

    // While disconnected: the policy comes back. A resume gets only the delta.
    import(&replica, WEB_POLICY).await.unwrap();
    let mut resumed = client
        .watch_endpoint_policy(pb::WatchEndpointPolicyRequest {
            node_name: "n1".into(),
            resume_revision,
            resume_epoch: epoch.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let step = next_update(&mut resumed).await;
    assert!(!step[0].reset, "a resume within history is not a reset");
    let update = &step[0].policy_updates[0];
    assert!(!update.replace);
    assert_eq!(update.upserts.len(), keys.len());
    assert!(step.last().unwrap().revision > synced_at);

    // Another epoch (another compiler process) gets a snapshot.
    let mut other = client
        .watch_endpoint_policy(pb::WatchEndpointPolicyRequest {
            node_name: "n1".into(),
            resume_revision,
            resume_epoch: "not-this-one".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(next(&mut other).await.reset);
    let err = client
        .watch_endpoint_policy(pb::WatchEndpointPolicyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

async fn identity_gc(world: &mut World) {
    let replica = world
        .replica_with(ServiceOptions {
            identity_grace: Duration::from_millis(600),
            gc_interval: Duration::from_millis(100),
            ..ServiceOptions::default()
        })
        .await;
    let mut client = replica.client.clone();
    let unused = allocate(&replica, "container:app=gone")
        .await
        .identity
        .unwrap()
        .id;
    let used = allocate(&replica, "container:app=kept")
        .await
        .identity
        .unwrap()
        .id;
    put_endpoint(world, "n1", 7, used, "10.0.1.7").await;
    let release = client
        .release_identity(pb::ReleaseIdentityRequest { id: used })
        .await
        .unwrap()
        .into_inner();
    // The endpoint may not be seen yet; either way the identity must survive.
    let _ = release;
    let mut gone = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = client
            .get_identity(pb::GetIdentityRequest {
                lookup: Some(pb::get_identity_request::Lookup::Id(unused)),
            })
            .await;
        if r.as_ref().is_err_and(|s| s.code() == Code::NotFound) {
            gone = true;
            break;
        }
    }
    assert!(gone, "identity {unused} was not collected");
    let kept = client
        .get_identity(pb::GetIdentityRequest {
            lookup: Some(pb::get_identity_request::Lookup::Id(used)),
        })
        .await
        .unwrap()
        .into_inner()
        .identity
        .unwrap();
    assert!(
        kept.unused_since.is_none(),
        "an identity in use is not marked: {kept:?}"
    );
    // Allocating the collected labels again works (a new record, maybe a new number).
    let again = allocate(&replica, "container:app=gone").await;
    assert!(again.created);
    // Once the endpoint is gone, the kept identity is collected too.
    world
        .datastore
        .clone()
        .delete(DeleteRequest {
            key: Some(ResourceKey {
                kind: "Endpoint".into(),
                namespace: "n1".into(),
                name: "7".into(),
            }),
            expected_revision: 0,
        })
        .await
        .unwrap();
    let mut collected = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if client
            .get_identity(pb::GetIdentityRequest {
                lookup: Some(pb::get_identity_request::Lookup::Id(used)),
            })
            .await
            .is_err_and(|s| s.code() == Code::NotFound)
        {
            collected = true;
            break;
        }
    }
    assert!(collected, "identity {used} outlived its endpoint");
}

#[tokio::test]
async fn embedded_policies_import_get_list_delete() {
    let mut world = World::new(backends::embedded().await).await;
    policies_and_errors(&mut world).await;
    world.finish().await;
}

#[tokio::test]
async fn embedded_racing_compilers_allocate_one_identity() {
    let mut world = World::new(backends::embedded().await).await;
    racing_identities(&mut world).await;
    world.finish().await;
}

#[tokio::test]
async fn embedded_watch_endpoint_policy_deltas_and_resume() {
    let mut world = World::new(backends::embedded().await).await;
    watch_and_resume(&mut world).await;
    world.finish().await;
}

#[tokio::test]
async fn embedded_unused_identities_are_collected() {
    let mut world = World::new(backends::embedded().await).await;
    identity_gc(&mut world).await;
    world.finish().await;
}

#[tokio::test]
async fn etcd_policies_identities_and_streams() {
    for scenario in 0..3 {
        let Some(backend) = backends::etcd().await else {
            return;
        };
        let mut world = World::new(backend).await;
        match scenario {
            0 => policies_and_errors(&mut world).await,
            1 => racing_identities(&mut world).await,
            _ => watch_and_resume(&mut world).await,
        }
        world.finish().await;
    }
}

/// A policy too big for one datastore record (its text and its parsed rules, here a long
/// description twice) is refused as INVALID_ARGUMENT naming the gateway's limit, before
/// anything of the import is written — also the policies before it in the same import.
#[tokio::test]
async fn embedded_a_policy_past_the_datastore_value_limit_is_refused_before_writing() {
    let mut world = World::new(backends::embedded().await).await;
    let replica = world.replica().await;
    // Under the limit as text (about 0.6 MiB), over it once stored with its parsed form.
    let description = "d".repeat(600 * 1024);
    let docs = format!(
        "{WEB_POLICY}---\napiVersion: kino.io/v1\nkind: KinoNetworkPolicy\nmetadata: {{name: big, namespace: shop}}\nspec:\n  description: {description}\n  endpointSelector: {{matchLabels: {{app: web}}}}\n  ingress: [{{}}]\n"
    );
    let status = import(&replica, &docs).await.expect_err("too big to store");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let limit = kino_api::limits::DEFAULT_MAX_VALUE_BYTES.to_string();
    assert!(
        status.message().contains("shop/big")
            && status.message().contains(&limit)
            && status.message().contains("--max-value-bytes"),
        "{}",
        status.message()
    );
    // All or nothing: the small policy before it was not stored either.
    let missing = replica
        .client
        .clone()
        .get_policy(pb::GetPolicyRequest {
            policy: policy_ref("shop", "web"),
        })
        .await
        .expect_err("nothing stored");
    assert_eq!(missing.code(), Code::NotFound);
    world.finish().await;
}

/// A stored policy that cannot be decoded (written by something that is not kino) is
/// DATA_LOSS naming the record — not INTERNAL, which is for kino's own bugs.
#[tokio::test]
async fn embedded_an_unreadable_stored_policy_is_data_loss() {
    let mut world = World::new(backends::embedded().await).await;
    let replica = world.replica().await;
    world
        .datastore
        .clone()
        .create(CreateRequest {
            resource: Some(Resource {
                kind: "Policy".into(),
                namespace: "shop".into(),
                name: "garbled".into(),
                spec: Some(prost_types::Any {
                    type_url: "type.googleapis.com/kino.policy.v1.Policy".into(),
                    value: vec![0xff, 0xff, 0xff],
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let status = replica
        .client
        .clone()
        .get_policy(pb::GetPolicyRequest {
            policy: policy_ref("shop", "garbled"),
        })
        .await
        .expect_err("unreadable");
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(status.message().contains("shop/garbled"), "{status:?}");
    world.finish().await;
}
