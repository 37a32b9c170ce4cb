//! Endpoints as JSON shaped like the proto (the canonical proto3 JSON mapping, every field
//! present): lowerCamelCase names, enums by name, 64-bit integers as strings, timestamps in
//! RFC 3339, absent messages as `null`. `buf curl` and protojson read it back.

use kino_api::agent::{
    DropCounter, Endpoint, EndpointAddressing, EndpointCounters, EndpointNetworking,
    EndpointPolicyStatus, EndpointState,
};
use kino_api::types::{
    Direction, DropReason, Labels, PodRef, PolicyEnforcement, PolicyEnforcementMode,
};
use serde_json::{Value, json};

/// `ListEndpointsResponse` as JSON, pretty-printed, with a final newline.
pub fn list_json(endpoints: &[Endpoint]) -> String {
    let value = json!({ "endpoints": endpoints.iter().map(endpoint_json).collect::<Vec<_>>() });
    serde_json::to_string_pretty(&value).expect("JSON values serialise") + "\n"
}

/// One `Endpoint`.
pub fn endpoint_json(e: &Endpoint) -> Value {
    json!({
        "id": e.id,
        "nodeName": e.node_name,
        "containerId": e.container_id,
        "pod": e.pod.as_ref().map(pod_json),
        "state": enum_name(e.state, |v| EndpointState::try_from(v).ok().map(|s| s.as_str_name())),
        "stateReason": e.state_reason,
        "labels": e.labels.as_ref().map(labels_json),
        "identity": e.identity,
        "networking": e.networking.as_ref().map(networking_json),
        "policy": e.policy.as_ref().map(policy_json),
        "counters": e.counters.as_ref().map(counters_json),
        "createTime": e.create_time.as_ref().map(|t| timestamp_rfc3339(t.seconds, t.nanos)),
        "cniNetworkName": e.cni_network_name,
    })
}

/// An enum by its proto name; a number the API does not know stays a number (as protojson).
fn enum_name(value: i32, name: impl Fn(i32) -> Option<&'static str>) -> Value {
    name(value).map_or_else(|| json!(value), |name| json!(name))
}

fn int64(value: impl ToString) -> Value {
    Value::String(value.to_string())
}

fn pod_json(pod: &PodRef) -> Value {
    json!({ "namespace": pod.namespace, "name": pod.name })
}

fn labels_json(labels: &Labels) -> Value {
    json!({
        "labels": labels.labels.iter().map(|l| json!({
            "key": l.key, "value": l.value, "source": l.source,
        })).collect::<Vec<_>>()
    })
}

fn addressing_json(a: &EndpointAddressing) -> Value {
    json!({
        "ipv4": a.ipv4,
        "ipv6": a.ipv6,
        "ipv4Gateway": a.ipv4_gateway,
        "ipv6Gateway": a.ipv6_gateway,
        "ipamPool": a.ipam_pool,
    })
}

fn networking_json(n: &EndpointNetworking) -> Value {
    json!({
        "interfaceName": n.interface_name,
        "interfaceIndex": n.interface_index,
        "mac": n.mac,
        "hostMac": n.host_mac,
        "addressing": n.addressing.as_ref().map(addressing_json),
        "containerInterfaceName": n.container_interface_name,
        "containerInterfaceIndex": n.container_interface_index,
        "netnsPath": n.netns_path,
        "mtu": n.mtu,
    })
}

fn enforcement_json(e: &PolicyEnforcement) -> Value {
    json!({ "ingress": e.ingress, "egress": e.egress })
}

fn policy_json(p: &EndpointPolicyStatus) -> Value {
    json!({
        "enforcement": p.enforcement.as_ref().map(enforcement_json),
        "realizedRevision": int64(p.realized_revision),
        "desiredRevision": int64(p.desired_revision),
        "mode": enum_name(p.mode, |v| PolicyEnforcementMode::try_from(v).ok().map(|m| m.as_str_name())),
        "auditMode": p.audit_mode,
        "ingressEntries": p.ingress_entries,
        "egressEntries": p.egress_entries,
    })
}

fn drop_json(d: &DropCounter) -> Value {
    json!({
        "reason": enum_name(d.reason, |v| DropReason::try_from(v).ok().map(|r| r.as_str_name())),
        "direction": enum_name(d.direction, |v| Direction::try_from(v).ok().map(|r| r.as_str_name())),
        "packets": int64(d.packets),
        "bytes": int64(d.bytes),
    })
}

fn counters_json(c: &EndpointCounters) -> Value {
    json!({
        "ingressPackets": int64(c.ingress_packets),
        "ingressBytes": int64(c.ingress_bytes),
        "egressPackets": int64(c.egress_packets),
        "egressBytes": int64(c.egress_bytes),
        "drops": c.drops.iter().map(drop_json).collect::<Vec<_>>(),
    })
}

/// A protobuf Timestamp as RFC 3339 in UTC, with 0, 3, 6 or 9 fractional digits (as
/// protojson writes it), e.g. `2024-05-01T12:00:00.250Z`.
pub fn timestamp_rfc3339(seconds: i64, nanos: i32) -> String {
    let days = seconds.div_euclid(86_400);
    let secs_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (h, m, s) = (
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60,
    );
    let nanos = nanos.clamp(0, 999_999_999);
    let fraction = if nanos == 0 {
        String::new()
    } else if nanos % 1_000_000 == 0 {
        format!(".{:03}", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!(".{:06}", nanos / 1_000)
    } else {
        format!(".{nanos:09}")
    };
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}{fraction}Z")
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::tests::sample_endpoint;

    #[test]
    fn endpoint_json_is_shaped_like_the_proto() {
        let mut endpoint = sample_endpoint();
        let mut created = endpoint.create_time.take().unwrap_or_default();
        (created.seconds, created.nanos) = (1_714_564_800, 250_000_000);
        endpoint.create_time = Some(created);
        let json = endpoint_json(&endpoint);
        assert_eq!(json["id"], 1234);
        assert_eq!(json["containerId"], "3f6940ab5ab4");
        assert_eq!(json["pod"], json!({"namespace": "default", "name": "web"}));
        assert_eq!(json["state"], "ENDPOINT_STATE_READY");
        assert_eq!(json["identity"], 4321);
        assert_eq!(
            json["labels"]["labels"][0],
            json!({"key": "app", "value": "web", "source": "container"})
        );
        let networking = &json["networking"];
        assert_eq!(networking["interfaceName"], "lxc5f3a9c2e1b7d");
        assert_eq!(networking["interfaceIndex"], 17);
        assert_eq!(networking["mac"], "0a:58:0a:00:01:17");
        assert_eq!(networking["hostMac"], "5e:3a:10:00:00:01");
        assert_eq!(networking["addressing"]["ipv4"], "10.0.1.23");
        assert_eq!(networking["addressing"]["ipv4Gateway"], "10.0.1.1");
        assert_eq!(networking["containerInterfaceName"], "eth0");
        assert_eq!(
            json["policy"]["enforcement"],
            json!({"ingress": true, "egress": false})
        );
        assert_eq!(json["policy"]["realizedRevision"], "7");
        assert_eq!(json["policy"]["mode"], "POLICY_ENFORCEMENT_MODE_DEFAULT");
        assert_eq!(json["counters"]["ingressPackets"], "12");
        assert_eq!(
            json["counters"]["drops"][0],
            json!({"reason": "DROP_REASON_POLICY_DENIED", "direction": "DIRECTION_INGRESS", "packets": "2", "bytes": "196"})
        );
        assert_eq!(json["createTime"], "2024-05-01T12:00:00.250Z");
    }

    #[test]
    fn absent_messages_are_null_and_unknown_enums_numbers() {
        let endpoint = Endpoint {
            state: 42,
            ..Endpoint::default()
        };
        let json = endpoint_json(&endpoint);
        assert_eq!(json["state"], 42);
        for field in [
            "pod",
            "labels",
            "networking",
            "policy",
            "counters",
            "createTime",
        ] {
            assert_eq!(json[field], Value::Null, "{field}");
        }
        let list: Value = serde_json::from_str(&list_json(&[endpoint])).expect("JSON");
        assert_eq!(list["endpoints"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(timestamp_rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp_rfc3339(951_782_400, 0), "2000-02-29T00:00:00Z");
        assert_eq!(
            timestamp_rfc3339(1_709_251_199, 5_000),
            "2024-02-29T23:59:59.000005Z"
        );
        assert_eq!(timestamp_rfc3339(-1, 1), "1969-12-31T23:59:59.000000001Z");
        assert_eq!(
            timestamp_rfc3339(253_402_300_799, 0),
            "9999-12-31T23:59:59Z"
        );
    }
}
