//! The claim records of services: a `ServiceFrontend` record per frontend (named after its
//! [`FrontendKey`]) and a `ServiceFrontendId` record per frontend id, each naming the
//! service that holds it and when it was claimed (`kino.service.v1.ServiceClaim`).
//! Creating one is the datastore's create-if-absent, so two services never hold the same
//! frontend or id; whether an existing claim is still held is [`Claim::is_held`].

use std::time::{Duration, SystemTime};

use kino_api::service as pb;
use kino_service_kit::records::Spec;

use super::model::{FrontendKey, ServiceName};
use crate::records::{system_time, timestamp};

/// Largest frontend id (the datapath's reverse-NAT index is 16 bits; 0 means none).
pub const MAX_FRONTEND_ID: u16 = u16::MAX;

/// Who holds a frontend or an id, and since when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The service holding it.
    pub holder: ServiceName,
    /// When it was claimed (or claimed again by the same service).
    pub claim_time: SystemTime,
}

impl Claim {
    /// A claim by `holder`, now.
    pub fn now(holder: &ServiceName) -> Claim {
        Claim {
            holder: holder.clone(),
            claim_time: SystemTime::now(),
        }
    }

    /// Whether the claim still binds: its holder's Service record lists it (`listed`), or
    /// it is younger than `takeover_after` (its request may still be writing that record).
    /// A claim that does not bind was left by a kino-ipam that died between its writes.
    pub fn is_held(&self, listed: bool, takeover_after: Duration, now: SystemTime) -> bool {
        listed
            || now
                .duration_since(self.claim_time)
                .map_or(true, |age| age < takeover_after)
    }

    fn to_proto(&self) -> pb::ServiceClaim {
        pb::ServiceClaim {
            service: Some(self.holder.to_ref()),
            claim_time: Some(timestamp(self.claim_time)),
        }
    }

    fn from_proto(p: pb::ServiceClaim) -> Result<Claim, String> {
        let service = p.service.ok_or("it names no service")?;
        Ok(Claim {
            holder: ServiceName {
                namespace: service.namespace,
                name: service.name,
            },
            claim_time: system_time(p.claim_time),
        })
    }
}

/// A `ServiceFrontend` record: the claim on one frontend (address, port, protocol).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendClaim(pub Claim);

/// A `ServiceFrontendId` record: the claim on one frontend id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdClaim(pub Claim);

/// What both kinds of claim records share, for the protocol that takes and gives them back.
pub trait ClaimRecord: Spec + Send + Sync + 'static {
    /// Wraps a claim.
    fn wrap(claim: Claim) -> Self;
    /// The claim.
    fn claim(&self) -> &Claim;
    /// What is claimed, for messages ("frontend claim tcp-172.20.0.10-80", "frontend id 7").
    fn describe(name: &str) -> String;
    /// Whether a Service record lists what the claim `name` claims.
    fn listed_in(record: &pb::Service, name: &str) -> bool;
    /// Whether these are frontend ids (which a replica also caches).
    const IS_ID: bool;
}

macro_rules! claim_record {
    ($ty:ident, $kind:literal) => {
        impl Spec for $ty {
            const KIND: &'static str = $kind;
            const MESSAGE: &'static str = "kino.service.v1.ServiceClaim";
            type Proto = pb::ServiceClaim;

            fn to_proto(&self) -> pb::ServiceClaim {
                self.0.to_proto()
            }

            fn from_proto(p: pb::ServiceClaim) -> Result<Self, String> {
                Claim::from_proto(p).map($ty)
            }
        }
    };
}

claim_record!(FrontendClaim, "ServiceFrontend");
claim_record!(IdClaim, "ServiceFrontendId");

impl ClaimRecord for FrontendClaim {
    fn wrap(claim: Claim) -> Self {
        FrontendClaim(claim)
    }
    fn claim(&self) -> &Claim {
        &self.0
    }
    fn describe(name: &str) -> String {
        format!("frontend claim {name}")
    }
    fn listed_in(record: &pb::Service, name: &str) -> bool {
        lists_frontend(record, name)
    }
    const IS_ID: bool = false;
}

impl ClaimRecord for IdClaim {
    fn wrap(claim: Claim) -> Self {
        IdClaim(claim)
    }
    fn claim(&self) -> &Claim {
        &self.0
    }
    fn describe(name: &str) -> String {
        format!("frontend id {name}")
    }
    fn listed_in(record: &pb::Service, name: &str) -> bool {
        lists_id(record, name)
    }
    const IS_ID: bool = true;
}

/// Whether `record` (a holder's Service record) lists the frontend of claim `name`.
pub fn lists_frontend(record: &pb::Service, name: &str) -> bool {
    record
        .frontends
        .iter()
        .filter_map(FrontendKey::of_record)
        .any(|key| key.record_name() == name)
}

/// Whether `record` lists a frontend with the id of claim `name`.
pub fn lists_id(record: &pb::Service, name: &str) -> bool {
    record.frontends.iter().any(|f| f.id.to_string() == name)
}

/// The id a `ServiceFrontendId` record is named after, if its name is one.
pub fn id_of_name(name: &str) -> Option<u16> {
    name.parse().ok().filter(|id| *id > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_binds_while_listed_or_young() {
        let holder = ServiceName {
            namespace: "default".into(),
            name: "web".into(),
        };
        let claim = Claim::now(&holder);
        let grace = Duration::from_secs(3);
        let now = claim.claim_time;
        assert!(
            claim.is_held(false, grace, now),
            "young: still being written"
        );
        let later = now + Duration::from_secs(4);
        assert!(
            !claim.is_held(false, grace, later),
            "old and unlisted: left"
        );
        assert!(claim.is_held(true, grace, later), "listed: held forever");
        let earlier = now - Duration::from_secs(1);
        assert!(claim.is_held(false, grace, earlier), "a clock behind: held");
        let record = FrontendClaim(claim.clone());
        let proto = record.to_proto();
        assert_eq!(
            FrontendClaim::from_proto(proto).map(|c| c.0.holder),
            Ok(holder)
        );
        assert!(FrontendClaim::from_proto(pb::ServiceClaim::default()).is_err());
    }

    #[test]
    fn records_list_their_claims() {
        let record = pb::Service {
            frontends: vec![pb::Frontend {
                r#type: pb::FrontendType::NodePort as i32,
                port: 30080,
                protocol: pb::Protocol::Udp as i32,
                id: 12,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(lists_frontend(&record, "udp--30080"));
        assert!(!lists_frontend(&record, "tcp--30080"));
        assert!(lists_id(&record, "12"));
        assert!(!lists_id(&record, "1"));
        assert_eq!(id_of_name("65535"), Some(65535));
        assert_eq!(id_of_name("0"), None);
        assert_eq!(id_of_name("x"), None);
    }
}
