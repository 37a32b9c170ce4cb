//! API messages as `-o json` prints them: the canonical proto3 JSON mapping (lowerCamelCase
//! names, enums by name, 64-bit integers as strings, timestamps in RFC 3339), every field
//! present, read from the APIs' own descriptors so the JSON is exactly the proto's shape.
//! `buf curl` and any protojson reader read it back.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;

/// An API message that `-o json` can print.
pub trait ProtoMessage: prost::Message + Sized {
    /// Its fully-qualified protobuf name, e.g. `kino.policy.v1.GetPolicyResponse`.
    const NAME: &'static str;
}

macro_rules! proto_messages {
    ($($ty:path => $name:literal),* $(,)?) => {
        $(impl ProtoMessage for $ty { const NAME: &'static str = $name; })*
        /// Every message name given to [`ProtoMessage`] (checked against the descriptors).
        #[cfg(test)]
        const NAMES: &[&str] = &[$($name),*];
    };
}

proto_messages! {
    kino_api::policy::ImportPoliciesResponse => "kino.policy.v1.ImportPoliciesResponse",
    kino_api::policy::ValidatePoliciesResponse => "kino.policy.v1.ValidatePoliciesResponse",
    kino_api::policy::GetPolicyResponse => "kino.policy.v1.GetPolicyResponse",
    kino_api::policy::ListPoliciesResponse => "kino.policy.v1.ListPoliciesResponse",
    kino_api::policy::DeletePolicyResponse => "kino.policy.v1.DeletePolicyResponse",
    kino_api::policy::TracePolicyResponse => "kino.policy.v1.TracePolicyResponse",
    kino_api::policy::GetIdentityResponse => "kino.policy.v1.GetIdentityResponse",
    kino_api::policy::ListIdentitiesResponse => "kino.policy.v1.ListIdentitiesResponse",
    kino_api::agent::ListBpfEndpointsResponse => "kino.agent.v1.ListBpfEndpointsResponse",
    kino_api::agent::ListBpfIpcacheResponse => "kino.agent.v1.ListBpfIpcacheResponse",
    kino_api::agent::ListBpfPolicyResponse => "kino.agent.v1.ListBpfPolicyResponse",
    kino_api::agent::ListBpfConntrackResponse => "kino.agent.v1.ListBpfConntrackResponse",
    kino_api::agent::ListBpfLoadBalancerResponse => "kino.agent.v1.ListBpfLoadBalancerResponse",
    kino_api::flow::Flow => "kino.flow.v1.Flow",
    kino_api::flow::GetFlowsResponse => "kino.flow.v1.GetFlowsResponse",
    kino_api::node::ListNodesResponse => "kino.node.v1.ListNodesResponse",
    kino_api::node::GetNodeResponse => "kino.node.v1.GetNodeResponse",
    kino_api::node::DeleteNodeResponse => "kino.node.v1.DeleteNodeResponse",
    kino_api::service::CreateServiceResponse => "kino.service.v1.CreateServiceResponse",
    kino_api::service::UpdateServiceResponse => "kino.service.v1.UpdateServiceResponse",
    kino_api::service::DeleteServiceResponse => "kino.service.v1.DeleteServiceResponse",
    kino_api::service::GetServiceResponse => "kino.service.v1.GetServiceResponse",
    kino_api::service::ListServicesResponse => "kino.service.v1.ListServicesResponse",
}

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(kino_api::FILE_DESCRIPTOR_SET)
            .expect("kino-api embeds a valid descriptor set")
    })
}

fn dynamic<M: ProtoMessage>(message: &M) -> DynamicMessage {
    let descriptor = pool()
        .get_message_by_name(M::NAME)
        .unwrap_or_else(|| panic!("{} is not in kino-api's descriptors", M::NAME));
    DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .expect("a message re-decodes with its own descriptor")
}

fn options() -> SerializeOptions {
    SerializeOptions::new().skip_default_fields(false)
}

/// `message` as a JSON value shaped like its proto.
pub fn to_value<M: ProtoMessage>(message: &M) -> Value {
    dynamic(message)
        .serialize_with_options(serde_json::value::Serializer, &options())
        .expect("protobuf messages serialise to JSON")
}

/// `message` as pretty JSON with a final newline, fields in the proto's order.
pub fn to_string<M: ProtoMessage>(message: &M) -> String {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::pretty(&mut out);
    dynamic(message)
        .serialize_with_options(&mut serializer, &options())
        .expect("protobuf messages serialise to JSON");
    String::from_utf8(out).expect("JSON is UTF-8") + "\n"
}

#[cfg(test)]
mod tests {
    use kino_api::policy as pb;
    use kino_api::types as pbt;

    use super::*;

    #[test]
    fn every_printed_message_is_in_the_descriptors() {
        for name in NAMES {
            assert!(pool().get_message_by_name(name).is_some(), "{name}");
        }
    }

    #[test]
    fn json_is_canonical_proto3() {
        let response = pb::GetIdentityResponse {
            identity: Some(pb::Identity {
                id: 256,
                labels: Some(pbt::Labels {
                    labels: vec![pbt::Label {
                        key: "app".into(),
                        value: "web".into(),
                        source: "k8s".into(),
                    }],
                }),
                reserved: false,
                create_time: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                unused_since: None,
            }),
        };
        let json = to_value(&response);
        assert_eq!(json["identity"]["id"], 256);
        assert_eq!(json["identity"]["labels"]["labels"][0]["source"], "k8s");
        assert_eq!(json["identity"]["reserved"], false, "defaults are present");
        assert_eq!(json["identity"]["createTime"], "2023-11-14T22:13:20Z");
        let list = pb::ListPoliciesResponse {
            revision: 42,
            ..Default::default()
        };
        let json = to_value(&list);
        assert_eq!(json["revision"], "42", "int64 is a string");
        assert_eq!(json["policies"], serde_json::json!([]));
        let trace = pb::TracePolicyResponse {
            verdict: pbt::PolicyVerdict::Allow as i32,
            ..Default::default()
        };
        assert_eq!(to_value(&trace)["verdict"], "POLICY_VERDICT_ALLOW");
        let text = to_string(&response);
        assert!(
            text.find("\"id\"") < text.find("\"labels\""),
            "fields in proto order: {text}"
        );
        assert_eq!(
            serde_json::from_str::<Value>(&text).expect("valid JSON"),
            to_value(&response)
        );
    }
}
