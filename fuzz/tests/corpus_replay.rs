//! Feeds every file of `fuzz/corpus/<target>/` to its target (deterministic, in CI): no
//! input may panic, and each one's work must stay within its target's bound (counted, not
//! timed). Findings of the long fuzzing runs (`fuzz/run.sh`) are kept here as corpus files.

use std::path::PathBuf;

use kino_fuzz::{Target, run};

fn corpus(target: Target) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target.name());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_file_runs_without_panic_within_its_bound() {
    for target in Target::ALL {
        let files = corpus(target);
        assert!(!files.is_empty(), "fuzz/corpus/{target}/ is empty");
        for path in files {
            let data = std::fs::read(&path).expect("a readable corpus file");
            let outcome = std::panic::catch_unwind(|| run(target, &data));
            let work =
                outcome.unwrap_or_else(|_| panic!("{target} panicked on {}", path.display()));
            assert!(
                work.steps <= work.bound,
                "{target} took {} steps on {} (bound {})",
                work.steps,
                path.display(),
                work.bound
            );
        }
    }
}

#[test]
fn targets_are_named_as_their_folders() {
    for target in Target::ALL {
        assert_eq!(Target::from_name(target.name()), Some(target));
    }
    assert_eq!(Target::from_name("nope"), None);
}
