//! Policy documents as ImportPolicies reads them: the bounds pre-scan, then YAML or JSON,
//! then validation. Work is counted in parse steps (one per document parsed and validated).

use kino_policy_compiler::policy::bounds::MAX_DOCUMENT_BYTES;
use kino_policy_compiler::policy::parse_documents_until;

use crate::Work;

/// Parses `data` (lossy UTF-8, as a request's string field would hold) with "shop" as the
/// default namespace.
pub fn documents(data: &[u8]) -> Work {
    let text = String::from_utf8_lossy(data);
    let mut steps = 0usize;
    let outcome = parse_documents_until(&text, "shop", &mut |_| {
        steps += 1;
        true
    });
    assert!(
        outcome.is_ok(),
        "a parse that always keeps going was cancelled"
    );
    // Every document takes at least a byte, and is parsed then validated: two steps; a text
    // over the size limit takes none.
    let bound = if text.len() > MAX_DOCUMENT_BYTES {
        0
    } else {
        2 * text.len() + 2
    };
    Work { steps, bound }
}
