//! The shape of the code, checked (docs/architecture.md): no import loop between the files of a
//! crate, no lower layer importing an upper one, no hand-written source file past the size one
//! can hold in one's head.
//!
//! Reads the sources as text (no compiler needed, so it runs in milliseconds): every `crate::`,
//! `super::` and `self::` path — in `use` trees and in expressions — is resolved to the deepest
//! *file* module it names. An import from file F to module M is an edge between the two
//! children of their nearest common ancestor that contain F and M (a file using its parent's
//! items through `super::` is the parent's own business, as `impl` blocks split over files are;
//! siblings that import each other both ways are a loop). Inline `#[cfg(test)] mod tests`
//! blocks, comments and string literals are not read.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Hand-written source files may be this long (tests/ folders excepted).
const MAX_LINES: usize = 900;
/// The C datapath's entry-point file holds only the programs.
const MAX_C_ENTRY_LINES: usize = 600;
const C_ENTRY: &str = "services/agent/bpf/datapath.bpf.c";

/// The layers of the crates whose shape docs/architecture.md draws, top to bottom. A module
/// may import its own layer and the layers below it, never one above. Every top-level module
/// of such a crate is in exactly one layer, so a new module has to be placed.
const LAYERS: &[(&str, &[&[&str]])] = &[
    (
        "services/agent/src",
        &[
            // The agent's APIs: gRPC on the unix socket and TCP, Prometheus scrapes.
            &["grpc", "metrics"],
            // What runs beside the API: the policy stream, realization reports, node
            // registration, the flow observer, the other nodes (routes, masquerading), the services
            // (Service records into the load balancer, unreachable service routes); the
            // gRPC clients of the peers (they implement the endpoint layer's peer traits).
            &[
                "policy_sync",
                "policy_realization",
                "registration",
                "cluster",
                "services",
                "flows",
                "clients",
            ],
            // Endpoints: CNI ADD/DEL/CHECK/GC, restore, policy application.
            &["endpoint"],
            // The kernel's objects as the agent sees them: eBPF programs and maps, node
            // devices, the node's network.
            &["datapath", "devices", "node"],
            // Kernel interfaces.
            &["netlink", "netns"],
        ],
    ),
    (
        "services/policy-compiler/src",
        &[
            // Adapters: gRPC, the datastore watch that feeds the service, who may call.
            &["grpc", "sync", "authorization"],
            // The service: policies, identities, compilation and streams behind one API.
            &["service"],
            // Views of the compiled state: what a subscriber gets, traces, realization.
            &["view", "stream", "trace", "realization", "reference"],
            // Compilation, identities and their storage.
            &[
                "compile", "ipcache", "identity", "store", "convert", "error",
            ],
            // The policy model.
            &[
                "policy",
                "policy_map",
                "selector",
                "cidr",
                "labels",
                "metrics",
            ],
        ],
    ),
    (
        "services/flow-relay/src",
        &[
            // Adapters: the served API, the client of the nodes, the Node-record watch.
            &["grpc", "upstream", "discovery", "authorization"],
            // A request over the nodes.
            &["relay"],
            // The merge, which nodes a request asks, the peer set, errors.
            &["merge", "selection", "peers", "error"],
        ],
    ),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A module path inside one source tree (`[]` is the crate root).
type ModPath = Vec<String>;

/// One source tree: a library or a binary's root and the files of its modules.
#[derive(Debug, Default)]
struct Tree {
    /// Shown in messages (`services/agent/src`).
    name: String,
    /// Module path → file (relative to the repository).
    files: BTreeMap<ModPath, PathBuf>,
}

/// An import between two sibling modules, with the place that makes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    parent: ModPath,
    from: String,
    to: String,
    at: String,
}

fn main_trees(root: &Path) -> Vec<Tree> {
    let mut crates = Vec::new();
    for group in ["services", "shared"] {
        for entry in std::fs::read_dir(root.join(group)).expect("read the crates") {
            crates.push(entry.expect("dir entry").path());
        }
    }
    crates.push(root.join("integration-tests"));
    crates.push(root.join("fuzz"));
    crates.sort();
    let mut trees = Vec::new();
    for krate in crates {
        let src = krate.join("src");
        if src.is_dir() {
            trees.extend(trees_of(root, &src));
        }
    }
    trees
}

/// The trees under one `src/`: the library/main tree, and one per `src/bin/<name>/` folder
/// (a `src/bin/<name>.rs` file is a tree of one file).
fn trees_of(root: &Path, src: &Path) -> Vec<Tree> {
    let mut main = Tree {
        name: rel(root, src),
        ..Tree::default()
    };
    let mut bins = Vec::new();
    for file in rust_files(src) {
        let relative = file.strip_prefix(src).expect("under src");
        let parts: Vec<String> = relative
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if parts[0] == "bin" && parts.len() > 2 {
            let name = parts[1].clone();
            let tree_root = src.join("bin").join(&name);
            if !bins.iter().any(|t: &Tree| t.name == rel(root, &tree_root)) {
                bins.push(Tree {
                    name: rel(root, &tree_root),
                    ..Tree::default()
                });
            }
            let tree = bins
                .iter_mut()
                .find(|t| t.name == rel(root, &tree_root))
                .expect("just added");
            tree.files
                .insert(module_path(&parts[2..]), rel(root, &file).into());
        } else if parts[0] == "bin" {
            bins.push(Tree {
                name: rel(root, &file),
                files: BTreeMap::from([(Vec::new(), rel(root, &file).into())]),
            });
        } else {
            main.files
                .insert(module_path(&parts), rel(root, &file).into());
        }
    }
    let mut trees = vec![main];
    trees.extend(bins);
    trees
}

/// `a/b.rs` → `[a, b]`, `a/mod.rs` → `[a]`, `lib.rs`/`main.rs` → `[]`.
fn module_path(parts: &[String]) -> ModPath {
    let mut path: ModPath = parts.to_vec();
    let last = path.pop().expect("a file");
    let stem = last.trim_end_matches(".rs");
    let is_root = path.is_empty() && (stem == "lib" || stem == "main");
    if stem != "mod" && !is_root {
        path.push(stem.to_owned());
    }
    path
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn rel(root: &Path, path: &Path) -> String {
    let root = root.canonicalize().expect("repo root");
    let path = path.canonicalize().expect("path");
    path.strip_prefix(&root)
        .expect("inside the repo")
        .to_string_lossy()
        .into_owned()
}

/// The text with comments, string and char literals blanked and inline test modules removed
/// (newlines kept, so line numbers stay right).
fn code_only(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, s: &[u8]| {
        for &b in s {
            out.push(if b == b'\n' { '\n' } else { ' ' });
        }
    };
    while i < bytes.len() {
        let rest = &bytes[i..];
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest.starts_with(b"/*") {
            let mut depth = 0;
            let mut j = 0;
            while j < rest.len() {
                if rest[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &rest[..j]);
            i += j;
        } else if rest[0] == b'r' && (rest.get(1) == Some(&b'"') || rest.get(1) == Some(&b'#')) {
            let hashes = rest[1..].iter().take_while(|&&b| b == b'#').count();
            if rest.get(1 + hashes) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            let body = 2 + hashes;
            let end = rest[body..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(rest.len(), |p| body + p + close.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest[0] == b'\'' {
            // A char literal ('x', '\n', '\u{..}'), not a lifetime ('a).
            let literal = if rest.get(1) == Some(&b'\\') {
                // Skip the escaped character itself ('\'' is a quote).
                rest.get(3..)
                    .and_then(|r| r.iter().position(|&b| b == b'\''))
                    .map(|p| p + 4)
            } else {
                let ch_len = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                (rest.get(1 + ch_len) == Some(&b'\'')).then_some(ch_len + 2)
            };
            match literal {
                Some(end) => {
                    blank(&mut out, &rest[..end]);
                    i += end;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let ch = text[i..].chars().next().expect("a char");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    strip_test_modules(&out)
}

/// Blanks `#[cfg(test)] mod … { … }` blocks (tests import what they exercise from anywhere).
fn strip_test_modules(code: &str) -> String {
    let mut out = code.to_owned();
    let mut from = 0;
    while let Some(at) = out[from..].find("#[cfg(test)]").map(|p| p + from) {
        let after = at + "#[cfg(test)]".len();
        let rest = out[after..].trim_start();
        let start = out.len() - rest.len();
        let is_mod = rest.starts_with("mod ") || rest.starts_with("pub mod ");
        let open = rest.find(['{', ';']);
        match (is_mod, open) {
            (true, Some(o)) if rest.as_bytes()[o] == b'{' => {
                let mut depth = 0;
                let mut end = out.len();
                for (k, b) in out[start + o..].bytes().enumerate() {
                    match b {
                        b'{' => depth += 1,
                        b'}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = start + o + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let blanked: String = out[at..end]
                    .chars()
                    .map(|c| if c == '\n' { '\n' } else { ' ' })
                    .collect();
                out.replace_range(at..end, &blanked);
                from = end;
            }
            _ => from = after,
        }
    }
    out
}

/// A token: an identifier, `::`, or one punctuation character.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Sep,
    Punct(char),
}

fn tokens(code: &str) -> Vec<(Tok, usize)> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut chars = code.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\n' {
            line += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if d.is_alphanumeric() || d == '_' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            out.push((Tok::Ident(code[i..end].to_owned()), line));
        } else if c == ':' && chars.peek().is_some_and(|&(_, d)| d == ':') {
            chars.next();
            out.push((Tok::Sep, line));
        } else if !c.is_whitespace() {
            out.push((Tok::Punct(c), line));
        }
    }
    out
}

/// Every path starting at `crate`, `super` or `self`, use trees expanded, with its line.
fn paths(code: &str) -> Vec<(Vec<String>, usize)> {
    let toks = tokens(code);
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let starts =
            matches!(&toks[i].0, Tok::Ident(w) if w == "crate" || w == "super" || w == "self");
        let after_sep = i > 0 && toks[i - 1].0 == Tok::Sep;
        if starts && !after_sep {
            let mut found = Vec::new();
            i = path_tree(&toks, i, Vec::new(), &mut found);
            out.extend(found);
        } else {
            i += 1;
        }
    }
    out
}

/// Reads a path (and any `{…}` groups) from `toks[i]`, prefixed by `prefix`; returns the index
/// after it.
fn path_tree(
    toks: &[(Tok, usize)],
    mut i: usize,
    mut prefix: Vec<String>,
    found: &mut Vec<(Vec<String>, usize)>,
) -> usize {
    let line = toks[i].1;
    loop {
        match toks.get(i).map(|t| &t.0) {
            Some(Tok::Ident(w)) => {
                prefix.push(w.clone());
                i += 1;
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                loop {
                    match toks.get(i).map(|t| &t.0) {
                        Some(Tok::Punct('}')) => return i + 1,
                        Some(Tok::Punct(',')) => i += 1,
                        Some(Tok::Ident(_)) | Some(Tok::Punct('{')) => {
                            i = path_tree(toks, i, prefix.clone(), found);
                        }
                        None => return i,
                        Some(_) => i += 1,
                    }
                }
            }
            _ => {
                found.push((prefix, line));
                return i;
            }
        }
        match toks.get(i).map(|t| &t.0) {
            Some(Tok::Sep) => i += 1,
            _ => {
                // `a as b`: the alias is not a path segment.
                found.push((prefix, line));
                if matches!(toks.get(i).map(|t| &t.0), Some(Tok::Ident(w)) if w == "as") {
                    i += 2;
                }
                return i;
            }
        }
    }
}

/// The module a path names: its `crate`/`super`/`self` start resolved from `current` (the
/// module of the file; for `a/mod.rs` and `a.rs` alike that is `a`, whose `super` is its
/// parent), then extended while the next segment is a file module of the tree.
fn resolve(tree: &Tree, current: &ModPath, path: &[String]) -> Option<ModPath> {
    let mut at: ModPath;
    let mut segments = path.iter().peekable();
    match segments.next().map(String::as_str) {
        Some("crate") => at = Vec::new(),
        Some("self") => at = current.clone(),
        Some("super") => {
            at = current.clone();
            at.pop()?;
            while segments.peek().is_some_and(|s| *s == "super") {
                segments.next();
                at.pop()?;
            }
        }
        _ => return None,
    }
    for segment in segments {
        let mut next = at.clone();
        next.push(segment.clone());
        if tree.files.contains_key(&next) {
            at = next;
        } else {
            break;
        }
    }
    Some(at)
}

/// The sibling edges of one tree.
fn edges(root: &Path, tree: &Tree) -> Vec<Edge> {
    let mut out = BTreeSet::new();
    for (module, file) in &tree.files {
        let text = std::fs::read_to_string(root.join(file)).expect("read a source file");
        for (path, line) in paths(&code_only(&text)) {
            let Some(target) = resolve(tree, module, &path) else {
                continue;
            };
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == module.len() || common == target.len() {
                continue; // the same module, a parent or a child
            }
            out.insert(Edge {
                parent: module[..common].to_vec(),
                from: module[common].clone(),
                to: target[common].clone(),
                at: format!("{}:{line} ({})", file.display(), path.join("::")),
            });
        }
    }
    out.into_iter().collect()
}

/// Loops between siblings: each strongly connected set of two or more siblings, with the
/// edges inside it.
fn loops(edges: &[Edge]) -> Vec<(ModPath, BTreeSet<String>, Vec<Edge>)> {
    let mut by_parent: BTreeMap<&ModPath, Vec<&Edge>> = BTreeMap::new();
    for edge in edges {
        by_parent.entry(&edge.parent).or_default().push(edge);
    }
    let mut out = Vec::new();
    for (parent, edges) in by_parent {
        let nodes: BTreeSet<&str> = edges
            .iter()
            .flat_map(|e| [e.from.as_str(), e.to.as_str()])
            .collect();
        let reach: BTreeMap<&str, BTreeSet<&str>> =
            nodes.iter().map(|&n| (n, reaches(&edges, n))).collect();
        let mut done: BTreeSet<&str> = BTreeSet::new();
        for &n in &nodes {
            if done.contains(n) {
                continue;
            }
            let component: BTreeSet<String> = nodes
                .iter()
                .filter(|&&m| reach[n].contains(m) && reach[m].contains(n))
                .map(|&m| m.to_owned())
                .collect();
            done.extend(nodes.iter().filter(|&&m| component.contains(m)));
            if component.len() > 1 {
                let inside = edges
                    .iter()
                    .filter(|e| component.contains(&e.from) && component.contains(&e.to))
                    .map(|&e| e.clone())
                    .collect();
                out.push((parent.clone(), component, inside));
            }
        }
    }
    out
}

/// The siblings `from` reaches through `edges` (itself included).
fn reaches<'a>(edges: &[&'a Edge], from: &'a str) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::from([from]);
    let mut stack = vec![from];
    while let Some(n) = stack.pop() {
        for e in edges.iter().filter(|e| e.from == n) {
            if seen.insert(e.to.as_str()) {
                stack.push(e.to.as_str());
            }
        }
    }
    seen
}

fn loop_report(tree: &Tree, found: &[(ModPath, BTreeSet<String>, Vec<Edge>)]) -> String {
    let mut report = String::new();
    for (parent, component, inside) in found {
        let parent = if parent.is_empty() {
            "the crate root".to_owned()
        } else {
            parent.join("::")
        };
        let members: Vec<&str> = component.iter().map(String::as_str).collect();
        let _ = writeln!(
            report,
            "{}: the modules {} of {parent} import each other in a loop:",
            tree.name,
            members.join(", ")
        );
        // One place per direction (the first), and how many more there are.
        let mut by_pair: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
        for edge in inside {
            by_pair
                .entry((edge.from.as_str(), edge.to.as_str()))
                .or_default()
                .push(edge.at.as_str());
        }
        for ((from, to), places) in by_pair {
            let more = match places.len() - 1 {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            let _ = writeln!(report, "    {from} -> {to}   at {}{more}", places[0]);
        }
    }
    report
}

fn layer_report(tree: &Tree, edges: &[Edge], layers: &[&[&str]]) -> String {
    let mut report = String::new();
    let layer_of = |m: &str| layers.iter().position(|l| l.contains(&m));
    for module in tree.files.keys().filter(|m| m.len() == 1) {
        if layer_of(&module[0]).is_none() {
            let _ = writeln!(
                report,
                "{}: module `{}` has no layer: place it in LAYERS (integration-tests/tests/architecture.rs) and in docs/architecture.md",
                tree.name, module[0]
            );
        }
    }
    for edge in edges.iter().filter(|e| e.parent.is_empty()) {
        if let (Some(from), Some(to)) = (layer_of(&edge.from), layer_of(&edge.to))
            && to < from
        {
            let _ = writeln!(
                report,
                "{}: `{}` (layer {from}) imports `{}` (layer {to}, above it) at {}",
                tree.name, edge.from, edge.to, edge.at
            );
        }
    }
    report
}

#[test]
fn no_crate_has_an_import_loop_between_its_files_and_no_layer_imports_one_above() {
    let root = repo();
    let mut report = String::new();
    let trees = main_trees(&root);
    for tree in &trees {
        let edges = edges(&root, tree);
        report.push_str(&loop_report(tree, &loops(&edges)));
        if let Some((_, layers)) = LAYERS.iter().find(|(name, _)| *name == tree.name) {
            report.push_str(&layer_report(tree, &edges, layers));
        }
    }
    for (name, _) in LAYERS {
        assert!(
            trees.iter().any(|t| t.name == *name),
            "LAYERS names {name}, which is not a source tree"
        );
    }
    assert!(report.is_empty(), "\n{report}");
}

/// The `kino-*` crates a manifest's `[dependencies]` (not dev-dependencies) name.
fn kino_dependencies(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_dependencies = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
        } else if in_dependencies && line.starts_with("kino-") {
            let name = line.split(['=', '.', ' ']).next().unwrap_or_default();
            out.push(name.to_owned());
        }
    }
    out
}

/// Services depend on the shared crates only (their tests may run another service
/// in-process: dev-dependencies are free), and the shared crates on nothing above them.
#[test]
fn services_depend_only_on_the_shared_crates() {
    let root = repo();
    let shared = ["kino-api", "kino-telemetry", "kino-service-kit"];
    let mut report = String::new();
    let mut checked = 0;
    for group in ["services", "shared"] {
        for entry in std::fs::read_dir(root.join(group)).expect("read the crates") {
            let manifest = entry.expect("dir entry").path().join("Cargo.toml");
            let Ok(text) = std::fs::read_to_string(&manifest) else {
                continue;
            };
            checked += 1;
            for dependency in kino_dependencies(&text) {
                if !shared.contains(&dependency.as_str()) {
                    let _ = writeln!(
                        report,
                        "{}: depends on {dependency}; a service reaches another only over its API (a dev-dependency is fine for tests)",
                        rel(&root, &manifest)
                    );
                }
            }
        }
    }
    assert!(checked >= 9, "only {checked} manifests found");
    let planted = "[package]\nname = \"x\"\n[dependencies]\nkino-api.workspace = true\nkino-ipam = { path = \"../ipam\" }\n[dev-dependencies]\nkino-datastore-gateway = { path = \"../g\" }\n";
    assert_eq!(kino_dependencies(planted), ["kino-api", "kino-ipam"]);
    assert!(report.is_empty(), "\n{report}");
}

#[test]
fn no_hand_written_source_file_is_too_long_to_hold_in_ones_head() {
    let root = repo();
    let listed = std::process::Command::new("git")
        .args(["ls-files", "-z", "--", "*.rs", "*.c", "*.h"])
        .current_dir(&root)
        .output()
        .expect("git ls-files");
    assert!(listed.status.success(), "git ls-files failed");
    let mut report = String::new();
    let mut seen = 0;
    for file in String::from_utf8_lossy(&listed.stdout).split('\0') {
        if file.is_empty() || file.split('/').any(|part| part == "tests") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(root.join(file)) else {
            continue; // listed but deleted in the working tree
        };
        seen += 1;
        let lines = text.lines().count();
        let max = if file == C_ENTRY {
            MAX_C_ENTRY_LINES
        } else {
            MAX_LINES
        };
        if lines > max {
            let _ = writeln!(
                report,
                "{file}: {lines} lines (at most {max}); split it by concern, big inline test modules into a tests.rs beside it"
            );
        }
    }
    assert!(
        seen > 100,
        "only {seen} source files found under {}",
        root.display()
    );
    assert!(report.is_empty(), "\n{report}");
}

/// The checker itself finds what it must: a planted loop and a planted upward import, and
/// nothing in code that only looks like one (comments, strings, test modules, parents).
#[test]
fn the_checker_finds_a_planted_loop_and_an_upward_import() {
    let dir = std::env::temp_dir().join(format!("kino-arch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("low")).unwrap();
    let write = |path: &str, text: &str| std::fs::write(src.join(path), text).unwrap();
    write("lib.rs", "pub mod high;\npub mod low;\npub mod mid;\n");
    write(
        "high.rs",
        "use crate::low::{a::{A, B as C}, b};\n// crate::mid::X in a comment\n",
    );
    write(
        "mid.rs",
        "const S: &str = \"crate::high::x\";\n#[cfg(test)]\nmod tests {\n    use crate::high::Y;\n}\n",
    );
    write("low.rs", "pub mod a;\npub mod b;\n");
    write("low/a.rs", "use super::b::Thing;\nuse super::Parent;\n");
    write(
        "low/b.rs",
        "fn f() { crate::low::a::g(); let _ = crate::mid::Z; }\n",
    );
    let tree = trees_of(&dir, &src).remove(0);
    let edges = edges(&dir, &tree);
    let found = loops(&edges);
    let _ = std::fs::remove_dir_all(&dir);

    let members: Vec<Vec<String>> = found
        .iter()
        .map(|(_, c, _)| c.iter().cloned().collect())
        .collect();
    assert_eq!(
        members,
        [vec!["a".to_owned(), "b".to_owned()]],
        "exactly the a <-> b loop in low/: {}",
        loop_report(&tree, &found)
    );
    let layers: &[&[&str]] = &[&["high"], &["mid"], &["low"]];
    let report = layer_report(&tree, &edges, layers);
    assert!(
        report.contains("`low` (layer 2) imports `mid` (layer 1"),
        "{report}"
    );
    assert_eq!(report.lines().count(), 1, "only low -> mid: {report}");
    let unplaced = layer_report(&tree, &edges, &[&["high"], &["low"]]);
    assert!(unplaced.contains("module `mid` has no layer"), "{unplaced}");
}
