//! A fake of the suite's services for the endpoint manager's tests: IPAM, identities,
//! compiled policy and Endpoint records in memory, answering in the APIs' own messages as
//! the real services do, and failing on demand at any [`Step`] — so a test can break one
//! step of an ADD and then ask the fake what is still held (addresses, records).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::BoxFuture;
use kino_agent::endpoint::peers::{
    Addresses, CompiledPolicies, EndpointRecords, Identities, PeerError, Peers,
};
use kino_api::agent::Endpoint;
use kino_api::ipam::{AllocateRequest, AllocateResponse, GcRequest, IpAllocation, Owner};
use kino_api::policy::{EndpointPolicy, PolicyMapEntry, PolicyMapKey, policy_map_key::Remote};
use kino_api::types::{Direction, IpFamily, Labels, PolicyEnforcement, PolicyVerdict, Protocol};

use super::{GATEWAY, GATEWAY_V6};

/// A call the fake can be told to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// IPAM Allocate of an IPv4 address.
    AllocateIpv4,
    /// IPAM Allocate of an IPv6 address.
    AllocateIpv6,
    /// IPAM Release.
    ReleaseAddresses,
    /// AllocateIdentity.
    AllocateIdentity,
    /// GetEndpointPolicy.
    FetchPolicy,
    /// Writing an Endpoint record.
    PublishRecord,
    /// Deleting an Endpoint record.
    UnpublishRecord,
}

/// How a step fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The service cannot be reached (UNAVAILABLE).
    Unavailable,
    /// The service answers something its API rules out (an allocation whose address is not
    /// an IP address). Only for the allocation steps.
    Garbage,
    /// The service does the work, then its answer is lost (UNAVAILABLE, as when IPAM is
    /// killed between its commit and its reply). Only for the allocation steps.
    LostAnswer,
}

/// First IPv4 address the fake IPAM hands out (10.244.0.100 and up; test pods of
/// `support::Pod` use .10 and up).
const FIRST_HOST: u8 = 100;
/// First identity the fake allocates (cluster identities start at 256).
const FIRST_IDENTITY: u32 = 256;
/// The remote identity the fake policy allows in on TCP port 80.
pub const ALLOWED_PEER: u32 = 300;

#[derive(Default)]
struct State {
    faults: BTreeMap<Step, Fault>,
    /// Held addresses by (container id, ifname, family).
    held: BTreeMap<(String, String, i32), String>,
    next_host: u8,
    identities: BTreeMap<Vec<(String, String, String)>, u32>,
    records: BTreeMap<u32, Endpoint>,
}

/// The fake suite.
#[derive(Default)]
pub struct FakePeers {
    state: Mutex<State>,
}

impl FakePeers {
    /// A fake where every call succeeds.
    pub fn new() -> Arc<Self> {
        Arc::new(FakePeers::default())
    }

    /// The fake as the manager's peers.
    pub fn peers(self: &Arc<Self>) -> Peers {
        Peers::all(self.clone())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on `step` fails with `fault`.
    pub fn fail(&self, step: Step, fault: Fault) {
        self.state().faults.insert(step, fault);
    }

    /// From now on `step` succeeds again.
    pub fn heal(&self, step: Step) {
        self.state().faults.remove(&step);
    }

    /// The addresses IPAM holds now.
    pub fn held_addresses(&self) -> Vec<String> {
        self.state().held.values().cloned().collect()
    }

    /// The ids of the Endpoint records in the datastore.
    pub fn records(&self) -> Vec<u32> {
        self.state().records.keys().copied().collect()
    }

    fn fault(&self, step: Step) -> Option<Fault> {
        self.state().faults.get(&step).copied()
    }

    /// The status `step` fails with, if it is told to.
    fn refusal(&self, step: Step) -> Result<(), tonic::Status> {
        match self.fault(step) {
            None => Ok(()),
            Some(_) => Err(tonic::Status::unavailable(format!(
                "fake: {step:?} fails on demand"
            ))),
        }
    }
}

fn ipam(status: tonic::Status) -> PeerError {
    PeerError::Ipam {
        target: "fake IPAM".into(),
        status,
    }
}

fn compiler(status: tonic::Status) -> PeerError {
    PeerError::Policy {
        target: "fake policy-compiler".into(),
        status,
    }
}

fn datastore(status: tonic::Status) -> PeerError {
    PeerError::Datastore {
        target: "fake datastore".into(),
        status,
    }
}

impl Addresses for FakePeers {
    fn allocate(
        &self,
        request: AllocateRequest,
    ) -> BoxFuture<'_, Result<AllocateResponse, PeerError>> {
        Box::pin(async move {
            let ipv6 = request.family == IpFamily::Ipv6 as i32;
            let step = if ipv6 {
                Step::AllocateIpv6
            } else {
                Step::AllocateIpv4
            };
            let fault = self.fault(step);
            let garbage = fault == Some(Fault::Garbage);
            let lost = fault == Some(Fault::LostAnswer);
            if !garbage && !lost {
                self.refusal(step).map_err(ipam)?;
            }
            let owner = request.owner.unwrap_or_default();
            let key = (owner.container_id, owner.ifname, request.family);
            let mut state = self.state();
            let existing = state.held.get(&key).cloned();
            let address = match (&existing, request.requested_address.as_str()) {
                (Some(held), _) => held.clone(),
                (None, "") => {
                    let host = FIRST_HOST + state.next_host;
                    state.next_host += 1;
                    if ipv6 {
                        Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, u16::from(host)).to_string()
                    } else {
                        Ipv4Addr::new(10, 244, 0, host).to_string()
                    }
                }
                (None, requested) => requested.to_owned(),
            };
            state.held.insert(key, address.clone());
            if lost {
                return Err(ipam(tonic::Status::unavailable(format!(
                    "fake: the answer to {step:?} was lost"
                ))));
            }
            let gateway = if ipv6 {
                GATEWAY_V6.to_string()
            } else {
                GATEWAY.to_string()
            };
            Ok(AllocateResponse {
                allocation: Some(IpAllocation {
                    address: if garbage {
                        "not-an-address".into()
                    } else {
                        address
                    },
                    family: request.family,
                    gateway,
                    pool: request.pool,
                    node: request.node,
                    ..Default::default()
                }),
                existing: existing.is_some(),
            })
        })
    }

    fn release(&self, owner: Owner) -> BoxFuture<'_, Result<Vec<String>, PeerError>> {
        Box::pin(async move {
            self.refusal(Step::ReleaseAddresses).map_err(ipam)?;
            let mut state = self.state();
            let mut released = Vec::new();
            state.held.retain(|(container, ifname, _), address| {
                let mine = *container == owner.container_id && *ifname == owner.ifname;
                if mine {
                    released.push(address.clone());
                }
                !mine
            });
            Ok(released)
        })
    }

    fn gc(&self, _request: GcRequest) -> BoxFuture<'_, Result<Vec<String>, PeerError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

impl Identities for FakePeers {
    fn allocate(&self, labels: Labels) -> BoxFuture<'_, Result<u32, PeerError>> {
        Box::pin(async move {
            self.refusal(Step::AllocateIdentity).map_err(compiler)?;
            let key = labels
                .labels
                .into_iter()
                .map(|l| (l.source, l.key, l.value))
                .collect();
            let mut state = self.state();
            let next = FIRST_IDENTITY + state.identities.len() as u32;
            Ok(*state.identities.entry(key).or_insert(next))
        })
    }

    fn release(&self, _identity: u32) -> BoxFuture<'_, Result<(), PeerError>> {
        Box::pin(async { Ok(()) })
    }
}

impl CompiledPolicies for FakePeers {
    /// Every identity's policy: ingress enforced, [`ALLOWED_PEER`] allowed in on TCP 80 (so
    /// an endpoint created with it has entries in the policy map).
    fn endpoint_policy(&self, identity: u32) -> BoxFuture<'_, Result<EndpointPolicy, PeerError>> {
        Box::pin(async move {
            self.refusal(Step::FetchPolicy).map_err(compiler)?;
            Ok(EndpointPolicy {
                identity,
                enforcement: Some(PolicyEnforcement {
                    ingress: true,
                    egress: false,
                }),
                entries: vec![PolicyMapEntry {
                    key: Some(PolicyMapKey {
                        direction: Direction::Ingress as i32,
                        remote: Some(Remote::RemoteIdentity(ALLOWED_PEER)),
                        protocol: Protocol::Tcp as i32,
                        port: 80,
                        end_port: 0,
                    }),
                    verdict: PolicyVerdict::Allow as i32,
                    derived_from: Vec::new(),
                }],
                revision: 1,
                ..Default::default()
            })
        })
    }
}

impl EndpointRecords for FakePeers {
    fn publish<'a>(&'a self, endpoint: &'a Endpoint) -> BoxFuture<'a, Result<(), PeerError>> {
        Box::pin(async move {
            self.refusal(Step::PublishRecord).map_err(datastore)?;
            self.state().records.insert(endpoint.id, endpoint.clone());
            Ok(())
        })
    }

    fn unpublish(&self, id: u32) -> BoxFuture<'_, Result<(), PeerError>> {
        Box::pin(async move {
            self.refusal(Step::UnpublishRecord).map_err(datastore)?;
            self.state().records.remove(&id);
            Ok(())
        })
    }
}
