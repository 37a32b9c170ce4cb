//! AFL++ harness: `KINO_FUZZ_TARGET=<name> cargo afl fuzz … kino-fuzz-afl` feeds each input
//! AFL makes to that target of [`kino_fuzz`]; a panic is a crash AFL records.

fn main() {
    let name = std::env::var("KINO_FUZZ_TARGET").unwrap_or_default();
    let Some(target) = kino_fuzz::Target::from_name(&name) else {
        let names: Vec<&str> = kino_fuzz::Target::ALL.iter().map(|t| t.name()).collect();
        eprintln!(
            "set KINO_FUZZ_TARGET to one of {} (got {name:?})",
            names.join(", ")
        );
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| {
        let work = kino_fuzz::run(target, data);
        assert!(
            work.steps <= work.bound,
            "{target}: {} steps, bound {}",
            work.steps,
            work.bound
        );
    });
}
