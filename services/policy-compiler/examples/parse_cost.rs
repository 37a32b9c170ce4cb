//! What one policy text costs the parser (issue 11: bounded work for any input): the
//! pathological documents that used to take seconds (deep flow nesting), the largest text
//! accepted, and the worst nesting accepted. Prints the time of `parse_documents` on each.
//!
//! ```text
//! cargo run --release -p kino-policy-compiler --example parse_cost
//! ```

use std::time::Instant;

use kino_policy_compiler::policy::bounds::{MAX_DOCUMENT_BYTES, MAX_NESTING_DEPTH};
use kino_policy_compiler::policy::parse_documents;

const POLICY: &str = "apiVersion: kino.io/v1\nkind: KinoNetworkPolicy\nmetadata: {name: NAME, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: lb}}]\n    toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n---\n";

fn main() {
    let mut cases = Vec::new();
    for kb in [80usize, 200] {
        let depth = kb * 1024 / 2;
        cases.push((
            format!("{kb} KB of spec: [[[[…]]]]"),
            format!("spec: {}{}", "[".repeat(depth), "]".repeat(depth)),
        ));
    }
    // The worst nesting accepted, repeated up to the size limit.
    let inner = MAX_NESTING_DEPTH - 2;
    let line = format!("  - {}1{}\n", "[".repeat(inner), "]".repeat(inner));
    let lines = (MAX_DOCUMENT_BYTES - 8) / line.len();
    cases.push((
        format!("1 MiB of lines nested {MAX_NESTING_DEPTH} deep"),
        format!("spec:\n{}", line.repeat(lines)),
    ));
    let mut many = String::new();
    let mut n = 0;
    while many.len() + POLICY.len() + 8 < MAX_DOCUMENT_BYTES {
        many.push_str(&POLICY.replace("NAME", &format!("p{n}")));
        n += 1;
    }
    cases.push((format!("1 MiB of {n} valid policies"), many));
    for (name, text) in cases {
        let start = Instant::now();
        let outcome = parse_documents(&text, "");
        let elapsed = start.elapsed();
        println!(
            "{name} ({} bytes): {elapsed:.2?}; {} policies, {} errors{}",
            text.len(),
            outcome.policies.len(),
            outcome.errors.len(),
            outcome
                .errors
                .first()
                .map(|e| format!("; first: {e}"))
                .unwrap_or_default()
        );
    }
}
