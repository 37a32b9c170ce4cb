//! Compiles the eBPF programs in `bpf/` with Debian's clang-19 (flags from ../shared/STACK.md)
//! into `$OUT_DIR/<name>.bpf.o`; `datapath::abi` embeds them with `include_bytes_aligned!`.

use std::path::{Path, PathBuf};
use std::process::Command;

const CLANG: &str = "clang-19";

fn main() {
    let bpf_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("bpf");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    println!("cargo:rerun-if-env-changed=KINO_CLANG");
    let clang = std::env::var("KINO_CLANG").unwrap_or_else(|_| CLANG.to_owned());

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&bpf_dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", bpf_dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    sources.sort();
    for path in &sources {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    for source in sources.iter().filter(|p| is_bpf_source(p)) {
        let name = source
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name");
        let object = out_dir.join(name.replace(".bpf.c", ".bpf.o"));
        let status = Command::new(&clang)
            .args([
                "-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-mcpu=v3",
            ])
            .arg("-I/usr/include/x86_64-linux-gnu")
            .arg("-I")
            .arg(&bpf_dir)
            .arg("-c")
            .arg(source)
            .arg("-o")
            .arg(&object)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {clang} to compile {}: {e}; install clang-19 and libbpf-dev \
                     (deploy/local/install-deps.sh does)",
                    source.display()
                )
            });
        assert!(
            status.success(),
            "{clang} failed to compile {} ({status})",
            source.display()
        );
    }
}

fn is_bpf_source(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".bpf.c"))
}
