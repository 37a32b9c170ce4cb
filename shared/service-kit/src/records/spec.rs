//! Typing of record specs: a [`Spec`] is a value stored as a record's spec — which kind of
//! record holds it, which protobuf message it is stored as (the `Any` type URL) and the
//! conversion both ways — and [`Stored`] is one read back with its datastore metadata. The
//! API messages that several services store (Node, NodeHealth, Endpoint, Policy, Identity,
//! PolicyRealization, Service) are specs here, once; a service's own domain types implement `Spec`
//! beside their definition.

use kino_api::datastore::Resource;
use prost::Message;

use super::error::RecordError;

/// A value stored as the spec of a datastore record.
pub trait Spec: Sized + Clone {
    /// Datastore kind of the records holding it.
    const KIND: &'static str;
    /// Fully-qualified protobuf message name; the spec's type URL is
    /// `type.googleapis.com/<MESSAGE>`.
    const MESSAGE: &'static str;
    /// The protobuf message.
    type Proto: Message + Default;
    /// Value → protobuf.
    fn to_proto(&self) -> Self::Proto;
    /// Protobuf → value; the error says what is wrong.
    fn from_proto(proto: Self::Proto) -> Result<Self, String>;
    /// The encoded message (a value that is its own message encodes without a copy).
    fn encode_spec(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }
}

/// A record read back (or just written), with its datastore metadata.
#[derive(Clone, Debug)]
pub struct Stored<T> {
    /// The spec.
    pub value: T,
    /// Its namespace ("" for cluster-wide records).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Revision of its last change (what a compare-and-swap expects).
    pub revision: i64,
    /// Revision at which it was created.
    pub create_revision: i64,
    /// Lease it hangs on (0 for none).
    pub lease: i64,
}

impl<T> Stored<T> {
    /// The metadata of `resource` around `value`.
    pub(super) fn of(resource: &Resource, value: T) -> Self {
        Stored {
            value,
            namespace: resource.namespace.clone(),
            name: resource.name.clone(),
            revision: resource.revision,
            create_revision: resource.create_revision,
            lease: resource.lease_id,
        }
    }
}

/// The resource that stores `value` as `T::KIND namespace/name`, on `lease` (0 for none).
pub fn to_resource<T: Spec>(namespace: &str, name: &str, value: &T, lease: i64) -> Resource {
    Resource {
        kind: T::KIND.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        spec: Some(prost_types::Any {
            type_url: format!("type.googleapis.com/{}", T::MESSAGE),
            value: value.encode_spec(),
        }),
        lease_id: lease,
        ..Resource::default()
    }
}

/// The encoded spec of a stored record, checked to be a `message`; the error says why it
/// is unreadable, naming the record.
pub fn spec_bytes<'a>(resource: &'a Resource, message: &str) -> Result<&'a [u8], String> {
    let spec = resource
        .spec
        .as_ref()
        .ok_or_else(|| unreadable(resource, "it has no spec"))?;
    let found = spec.type_url.rsplit('/').next().unwrap_or_default();
    if found != message {
        return Err(unreadable(
            resource,
            &format!("its spec is a {found}, expected a {message}"),
        ));
    }
    Ok(spec.value.as_slice())
}

/// Reads a stored resource as `T`: checks its message type, decodes and converts it; the
/// error names the record and what is wrong.
pub fn decode<T: Spec>(resource: &Resource) -> Result<Stored<T>, RecordError> {
    let bytes = spec_bytes(resource, T::MESSAGE).map_err(RecordError::Unreadable)?;
    let proto = T::Proto::decode(bytes)
        .map_err(|e| RecordError::Unreadable(unreadable(resource, &e.to_string())))?;
    let value =
        T::from_proto(proto).map_err(|why| RecordError::Unreadable(unreadable(resource, &why)))?;
    Ok(Stored::of(resource, value))
}

fn unreadable(resource: &Resource, why: &str) -> String {
    format!(
        "stored {} {}/{} is unreadable: {why}",
        resource.kind, resource.namespace, resource.name
    )
}

/// API messages stored as they are, each in the kind of record the services agree on.
macro_rules! api_specs {
    ($($message:ty => $kind:literal as $name:literal;)*) => {
        $(
            impl Spec for $message {
                const KIND: &'static str = $kind;
                const MESSAGE: &'static str = $name;
                type Proto = Self;

                fn to_proto(&self) -> Self {
                    self.clone()
                }

                fn from_proto(proto: Self) -> Result<Self, String> {
                    Ok(proto)
                }

                fn encode_spec(&self) -> Vec<u8> {
                    self.encode_to_vec()
                }
            }
        )*
    };
}

api_specs! {
    kino_api::types::Node => "Node" as "kino.types.v1.Node";
    kino_api::types::NodeHealth => "NodeHealth" as "kino.types.v1.NodeHealth";
    kino_api::agent::Endpoint => "Endpoint" as "kino.agent.v1.Endpoint";
    kino_api::policy::Policy => "Policy" as "kino.policy.v1.Policy";
    kino_api::policy::Identity => "Identity" as "kino.policy.v1.Identity";
    kino_api::policy::PolicyRealization => "PolicyRealization" as "kino.policy.v1.PolicyRealization";
    kino_api::service::Service => "Service" as "kino.service.v1.Service";
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use kino_api::policy::{Identity, Policy};

    use super::*;

    #[test]
    fn specs_are_checked_by_message() {
        let identity = Identity {
            id: 256,
            ..Identity::default()
        };
        let resource = to_resource("", "256", &identity, 0);
        assert_eq!(resource.kind, "Identity");
        assert_eq!(
            resource.spec.as_ref().unwrap().type_url,
            "type.googleapis.com/kino.policy.v1.Identity"
        );
        assert_eq!(decode::<Identity>(&resource).unwrap().value, identity);
        let err = spec_bytes(&resource, "kino.policy.v1.Policy").unwrap_err();
        assert_eq!(
            err,
            "stored Identity /256 is unreadable: its spec is a kino.policy.v1.Identity, expected a kino.policy.v1.Policy"
        );
        assert_eq!(
            decode::<Policy>(&resource).unwrap_err().to_string(),
            err,
            "decoding as another message names the record and both messages"
        );
        let empty = Resource::default();
        assert!(
            spec_bytes(&empty, "x")
                .unwrap_err()
                .contains("it has no spec")
        );
    }

    #[test]
    fn undecodable_specs_name_the_record() {
        let mut resource = to_resource("a", "b", &Identity::default(), 0);
        resource.spec.as_mut().unwrap().value = vec![0xff];
        let err = decode::<Identity>(&resource).unwrap_err().to_string();
        assert!(
            err.starts_with("stored Identity a/b is unreadable: "),
            "{err}"
        );
    }

    #[test]
    fn api_specs_name_messages_of_the_api() {
        let set = prost_types::FileDescriptorSet::decode(kino_api::FILE_DESCRIPTOR_SET)
            .expect("the API's descriptor set decodes");
        let messages: BTreeSet<String> = set
            .file
            .iter()
            .flat_map(|f| {
                f.message_type
                    .iter()
                    .map(move |m| format!("{}.{}", f.package(), m.name()))
            })
            .collect();
        // Each Rust type is the message it names: prost generates `kino.x.v1.M` as
        // `kino_api::kino::x::v1::M`.
        fn check<T: Spec>(messages: &BTreeSet<String>) {
            let rust = std::any::type_name::<T>()
                .trim_start_matches("kino_api::")
                .replace("::", ".");
            assert_eq!(rust, T::MESSAGE, "{} records", T::KIND);
            assert!(
                messages.contains(T::MESSAGE),
                "{} records hold {}, which the API does not define",
                T::KIND,
                T::MESSAGE
            );
        }
        check::<kino_api::types::Node>(&messages);
        check::<kino_api::types::NodeHealth>(&messages);
        check::<kino_api::agent::Endpoint>(&messages);
        check::<Policy>(&messages);
        check::<Identity>(&messages);
        check::<kino_api::policy::PolicyRealization>(&messages);
        check::<kino_api::service::Service>(&messages);
    }
}
