//! The size limits of what enters the agent's API (issue 11): pod names, namespaces and
//! labels within Kubernetes' limits ([`kino_api::limits`]), checked before the endpoint
//! manager sees a request, so an oversized name never reaches IPAM, the compiler, the
//! datastore or the kernel, and errors are INVALID_ARGUMENT naming the field and the limit.

use kino_api::agent::{CreateEndpointRequest, UpdateEndpointLabelsRequest};
use kino_api::limits::{self, LimitError};
use tonic::Status;

fn invalid(error: LimitError) -> Status {
    Status::invalid_argument(error.to_string())
}

/// CreateEndpoint: the pod's name and namespace, and the labels given.
pub fn check_create(request: &CreateEndpointRequest) -> Result<(), Status> {
    if let Some(pod) = &request.pod {
        limits::check_pod_name("pod.name", &pod.name).map_err(invalid)?;
        limits::check_namespace("pod.namespace", &pod.namespace).map_err(invalid)?;
    }
    if let Some(labels) = &request.labels {
        limits::check_labels("labels", labels).map_err(invalid)?;
    }
    Ok(())
}

/// UpdateEndpointLabels: the labels added and the keys deleted (`KEY` or `SOURCE:KEY`).
pub fn check_update_labels(request: &UpdateEndpointLabelsRequest) -> Result<(), Status> {
    if let Some(add) = &request.add {
        limits::check_labels("add", add).map_err(invalid)?;
    }
    limits::check_label_count("delete", request.delete.len()).map_err(invalid)?;
    for (i, name) in request.delete.iter().enumerate() {
        let key = name.split_once(':').map_or(name.as_str(), |(_, key)| key);
        limits::check_label_key(&format!("delete[{i}]"), key).map_err(invalid)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use kino_api::types::{Label, Labels, PodRef};

    use super::*;

    fn create(pod: &str, namespace: &str, labels: Vec<Label>) -> CreateEndpointRequest {
        CreateEndpointRequest {
            container_id: "c1".into(),
            pod: Some(PodRef {
                name: pod.into(),
                namespace: namespace.into(),
            }),
            labels: Some(Labels { labels }),
            ..Default::default()
        }
    }

    fn label(key: &str, value: &str) -> Label {
        Label {
            key: key.into(),
            value: value.into(),
            source: String::new(),
        }
    }

    #[test]
    fn oversized_names_and_labels_are_refused_naming_the_field() {
        let cases = [
            (
                create(&"p".repeat(300), "shop", vec![]),
                "pod.name",
                "at most 253",
            ),
            (
                create("web", &"n".repeat(64), vec![]),
                "pod.namespace",
                "at most 63",
            ),
            (
                create("web", "shop", vec![label(&"k".repeat(100_000), "v")]),
                "labels[0].key",
                "at most 63",
            ),
            (
                create("web", "shop", vec![label("app", &"v".repeat(64))]),
                "labels[0].value",
                "at most 63",
            ),
            (
                create(
                    "web",
                    "shop",
                    (0..20_000).map(|i| label(&format!("k{i}"), "")).collect(),
                ),
                "labels",
                "at most 256",
            ),
        ];
        for (request, field, limit) in cases {
            let status = check_create(&request).expect_err(field);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(
                status.message().starts_with(&format!("{field}: ")),
                "{field}: {}",
                status.message()
            );
            assert!(status.message().contains(limit), "{}", status.message());
            assert!(status.message().len() < 400, "{}", status.message().len());
        }
        assert!(check_create(&create(&"p".repeat(253), &"n".repeat(63), vec![])).is_ok());
    }

    #[test]
    fn label_updates_are_bounded() {
        let request = UpdateEndpointLabelsRequest {
            id: 1,
            add: Some(Labels {
                labels: vec![label("app", &"v".repeat(1000))],
            }),
            delete: vec![],
        };
        let status = check_update_labels(&request).unwrap_err();
        assert!(status.message().starts_with("add[0].value: "), "{status:?}");
        let request = UpdateEndpointLabelsRequest {
            id: 1,
            add: None,
            delete: vec![format!("k8s:{}", "k".repeat(64))],
        };
        let status = check_update_labels(&request).unwrap_err();
        assert!(status.message().starts_with("delete[0]: "), "{status:?}");
    }
}
