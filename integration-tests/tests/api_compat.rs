//! The API compatibility check against the released v1 (`integration-tests/api-compat.sh`,
//! run by run.sh), on a scratch git repository holding a copy of proto/: a field removed in
//! one commit and followed by a harmless one passes `buf breaking` against HEAD~1 (what
//! run.sh checked before) but fails against the release commit; a v1 package missing from
//! proto/released-v1.txt fails by name; and this repository itself passes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kino_integration_tests::in_ci;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The buf that install-deps.sh installs; `None` (skip) outside CI when it is missing.
fn buf() -> Option<PathBuf> {
    let buf = repo_root().join(".tools/node_modules/.bin/buf");
    if buf.exists() {
        return Some(buf);
    }
    assert!(
        !in_ci(),
        "{} is required in CI; ./integration-tests/run.sh installs it",
        buf.display()
    );
    eprintln!(
        "SKIPPED: no {} (./integration-tests/run.sh installs it)",
        buf.display()
    );
    None
}

fn run(dir: &Path, program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, "git", args);
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn commit(dir: &Path, message: &str) -> String {
    git(dir, &["add", "-A"]);
    git(
        dir,
        &[
            "-c",
            "user.name=kino-test",
            "-c",
            "user.email=kino-test@example.invalid",
            "commit",
            "-q",
            "-m",
            message,
        ],
    );
    git(dir, &["rev-parse", "HEAD"])
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn api_compat(repo: &Path, buf: &Path) -> Output {
    let script = repo_root().join("integration-tests/api-compat.sh");
    Command::new("bash")
        .arg(&script)
        .arg("--repo")
        .arg(repo)
        .arg("--buf")
        .arg(buf)
        .output()
        .expect("api-compat.sh")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every v1 package under `repo`'s proto/kino, each released at `commit`.
fn released_list(repo: &Path, commit: &str) -> String {
    let mut packages: Vec<String> = std::fs::read_dir(repo.join("proto/kino"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|dir| dir.join("v1").is_dir())
        .map(|dir| dir.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    packages.sort();
    assert!(packages.len() > 5, "proto/kino holds {packages:?}");
    packages
        .iter()
        .map(|p| format!("kino.{p}.v1 {commit}\n"))
        .collect()
}

#[test]
fn a_break_spread_over_commits_fails_against_the_release() {
    let Some(buf) = buf() else { return };
    let scratch = tempfile::Builder::new()
        .prefix("kino-api-compat-")
        .tempdir()
        .unwrap();
    let repo = scratch.path();
    git(repo, &["init", "-q"]);
    copy_dir(&repo_root().join("proto"), &repo.join("proto"));
    std::fs::remove_file(repo.join("proto/released-v1.txt")).ok();
    let release = commit(repo, "v1 released");
    std::fs::write(
        repo.join("proto/released-v1.txt"),
        released_list(repo, &release),
    )
    .unwrap();
    commit(repo, "record the release");
    // A field is removed, then an unrelated commit follows.
    let ipam = repo.join("proto/kino/ipam/v1/ipam.proto");
    let source = std::fs::read_to_string(&ipam).unwrap();
    let field = "  string pool = 2;\n";
    assert!(
        source.contains(field),
        "ipam.proto has no `{}`",
        field.trim()
    );
    std::fs::write(&ipam, source.replacen(field, "", 1)).unwrap();
    commit(repo, "drop a field");
    let readme = repo.join("proto/NOTES");
    std::fs::write(&readme, "notes\n").unwrap();
    commit(repo, "something else");

    // What run.sh checked before: HEAD~1 only. It passes.
    let previous = run(
        &repo.join("proto"),
        buf.to_str().unwrap(),
        &["breaking", "--against", "../.git#ref=HEAD~1,subdir=proto"],
    );
    assert!(
        previous.status.success(),
        "HEAD~1 check: {}",
        text(&previous)
    );

    // Against the release: the removal is found, with the field and the way out.
    let out = api_compat(repo, &buf);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("\"pool\""),
        "the removed field is not named:\n{said}"
    );
    assert!(said.contains("needs a v2 package"), "{said}");

    // Put back: compatible again.
    std::fs::write(&ipam, &source).unwrap();
    commit(repo, "restore the field");
    let out = api_compat(repo, &buf);
    assert!(out.status.success(), "{}", text(&out));

    // A new v1 package nobody recorded a release for.
    let extra = repo.join("proto/kino/extra/v1");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(
        extra.join("extra.proto"),
        "syntax = \"proto3\";\n\n// kino.extra.v1 is new.\npackage kino.extra.v1;\n",
    )
    .unwrap();
    let out = api_compat(repo, &buf);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("kino.extra.v1 has no release commit in proto/released-v1.txt"),
        "{said}"
    );
}

#[test]
fn this_repository_keeps_its_released_v1() {
    let Some(buf) = buf() else { return };
    let out = api_compat(&repo_root(), &buf);
    assert!(out.status.success(), "{}", text(&out));
}
