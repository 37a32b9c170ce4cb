//! Generated-input property tests beside the corpus replay (deterministic: a fixed seed, so
//! CI runs the same cases every time):
//!
//! - the policy bounds pre-scan never under-estimates: any YAML-ish text it lets through
//!   parses (when it parses at all) to collections nested at most 64 deep — what passes the
//!   scan cannot make the parser slow;
//! - every target survives generated input of its own alphabet.

use kino_fuzz::{Target, run};
use kino_policy_compiler::policy::bounds::{self, MAX_NESTING_DEPTH};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

fn runner(cases: u32) -> TestRunner {
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
}

/// Tokens YAML structure is made of, plus scalars, quotes, comments and indentation.
fn yamlish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("["),
        Just("]"),
        Just("{"),
        Just("}"),
        Just(", "),
        Just(","),
        Just(": "),
        Just(":"),
        Just("- "),
        Just("? "),
        Just("'"),
        Just("''"),
        Just("\""),
        Just("\\"),
        Just("# "),
        Just("\n"),
        Just("\n  "),
        Just("\n    "),
        Just("  "),
        Just("a"),
        Just("k: "),
        Just("| "),
        Just("|\n"),
        Just(">-\n"),
        Just("&x "),
        Just("!t "),
        Just("---\n"),
        Just("\t"),
    ];
    proptest::collection::vec(token, 0..400).prop_map(|tokens| tokens.concat())
}

fn depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[test]
fn the_bounds_scan_never_lets_a_deeper_document_through() {
    runner(512)
        .run(&yamlish(), |text| {
            if bounds::check(&text, false).is_err() {
                return Ok(());
            }
            for chunk in text.split("---\n") {
                if let Ok(value) = serde_yaml_ng::from_str::<serde_json::Value>(chunk) {
                    prop_assert!(
                        depth(&value) <= MAX_NESTING_DEPTH,
                        "the scan passed a document {} deep: {text:?}",
                        depth(&value)
                    );
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn deep_generated_nesting_is_refused() {
    // Nesting built from the same tokens, always past the limit: the scan must refuse it.
    let opener = prop_oneof![Just("["), Just("{a: "), Just("- "), Just("[\n")];
    let strategy = proptest::collection::vec(opener, MAX_NESTING_DEPTH + 1..300);
    runner(128)
        .run(&strategy, |openers| {
            // `- ` nests only at the start of a node: keep it leading, flow after it.
            let mut text = String::new();
            let mut flow = false;
            for o in &openers {
                if *o == "- " && flow {
                    text.push('[');
                } else {
                    flow |= *o != "- ";
                    text.push_str(o);
                }
            }
            text.push('1');
            prop_assert!(
                bounds::check(&text, false).is_err(),
                "{} openers passed: {text:?}",
                openers.len()
            );
            Ok(())
        })
        .unwrap();
}

#[test]
fn every_target_survives_generated_input() {
    let bytes = proptest::collection::vec(any::<u8>(), 0..512);
    for target in Target::ALL {
        runner(64)
            .run(&bytes, |data| {
                let work = run(target, &data);
                prop_assert!(work.steps <= work.bound, "{target}: {work:?}");
                Ok(())
            })
            .unwrap();
        runner(64)
            .run(&yamlish(), |text| {
                let work = run(target, text.as_bytes());
                prop_assert!(work.steps <= work.bound, "{target}: {work:?}");
                Ok(())
            })
            .unwrap();
    }
}
