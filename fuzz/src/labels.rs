//! Label text: `source:key=value` and lists of them as the CLI and the compiler read them,
//! and the label limits every API applies.

use kino_api::limits;
use kino_policy_compiler::labels::{Label, Labels};

use crate::Work;

/// Parses `data` as one label, as a list, and checks each label against the limits.
pub fn text(data: &[u8]) -> Work {
    let text = String::from_utf8_lossy(data);
    if let Ok(label) = Label::parse(&text) {
        let _ = limits::check_label("label", &label.source, &label.key, &label.value);
        let _ = label.to_string();
    }
    let mut steps = 0;
    if let Ok(labels) = Labels::parse_list(&text) {
        for label in labels.iter() {
            steps += 1;
            let _ = limits::check_label("labels", &label.source, &label.key, &label.value);
        }
        let _ = limits::check_label_count("labels", labels.len());
        let _ = labels.canonical();
        let _ = labels.namespace_labels();
    }
    let _ = limits::check_pod_name("pod", &text);
    let _ = limits::check_namespace("namespace", &text);
    let _ = kino_api::quote::quote(&text).to_string();
    // A list holds at most one label per separated item.
    Work {
        steps,
        bound: text.len() + 1,
    }
}
