//! The programs of the loaded object: finding each hook's program in it, loading them, and
//! what identifies a program, so that adoption can tell a previous agent's program that does
//! what ours does (same instructions over the same pinned maps) from one that does not.

use aya::Ebpf;
use aya::programs::{ProgramError, SchedClassifier};

use super::Datapath;
use super::error::DatapathError;
use super::hook::Hook;
use crate::datapath::abi::ALL_MAPS;

/// What identifies a loaded program for adoption: two programs with the same tag over the
/// same pinned maps behave the same. (Maps that are not pinned — per-CPU scratch space — are
/// each load's own and hold nothing the agent writes, so they do not count.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ProgramIdentity {
    /// The program's id in the kernel.
    pub(super) id: u32,
    tag: [u8; 8],
    /// The ids of the pinned maps it uses, sorted.
    pinned_maps: Vec<u32>,
}

/// Of the maps `ids`, those that are one of the node's pinned maps (by name, as the kernel
/// keeps it: at most 15 bytes), sorted.
fn pinned_maps(ids: &[u32]) -> Vec<u32> {
    let pinned = |name: &str| {
        ALL_MAPS
            .iter()
            .any(|m| m.as_bytes()[..m.len().min(15)] == *name.as_bytes())
    };
    let mut ids: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|id| {
            aya::maps::MapInfo::from_id(*id)
                .ok()
                .is_some_and(|info| info.name_as_str().is_some_and(pinned))
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// Loads each hook's program of `ebpf` into the kernel; returns what identifies each.
pub(super) fn load_programs(
    ebpf: &mut Ebpf,
) -> Result<Vec<(Hook, ProgramIdentity)>, DatapathError> {
    let mut identities = Vec::new();
    for hook in Hook::ALL {
        let program = program_mut(ebpf, hook)?;
        let program_error = program_error(hook);
        program.load().map_err(program_error)?;
        let info = program.info().map_err(program_error)?;
        identities.push((
            hook,
            ProgramIdentity {
                id: info.id(),
                tag: info.tag().to_be_bytes(),
                pinned_maps: pinned_maps(
                    &info.map_ids().map_err(program_error)?.unwrap_or_default(),
                ),
            },
        ));
    }
    Ok(identities)
}

/// The error of an operation on the program of `hook`, for `map_err`.
pub(super) fn program_error(hook: Hook) -> impl Fn(ProgramError) -> DatapathError + Copy {
    move |source| DatapathError::Program {
        program: hook.program(),
        source: Box::new(source),
    }
}

/// The program of `hook` in the object (missing, or not a classifier: an error).
pub(super) fn program(ebpf: &Ebpf, hook: Hook) -> Result<&SchedClassifier, DatapathError> {
    let program = ebpf
        .program(hook.program())
        .ok_or(ProgramError::UnexpectedProgramType)
        .map_err(program_error(hook))?;
    program.try_into().map_err(program_error(hook))
}

/// The program of `hook` in the object, to load or attach it.
pub(super) fn program_mut(
    ebpf: &mut Ebpf,
    hook: Hook,
) -> Result<&mut SchedClassifier, DatapathError> {
    let program = ebpf
        .program_mut(hook.program())
        .ok_or(ProgramError::UnexpectedProgramType)
        .map_err(program_error(hook))?;
    program.try_into().map_err(program_error(hook))
}

impl Datapath {
    /// What identifies the loaded program of `hook`.
    pub(super) fn identity(&self, hook: Hook) -> &ProgramIdentity {
        &self
            .identities
            .iter()
            .find(|(h, _)| *h == hook)
            .expect("load records every hook's program")
            .1
    }

    /// Whether the program `id` (tag `tag`) does what ours of `hook` does: it is ours, or the
    /// same instructions over the same pinned maps (a previous agent of this build with the
    /// pins it left). Another build, or maps created anew, differ.
    pub(super) fn same_program(&self, hook: Hook, id: u32, tag: &[u8; 8]) -> bool {
        let ours = self.identity(hook);
        if id == ours.id {
            return true;
        }
        if *tag != ours.tag {
            return false;
        }
        let mut seen = self
            .same_program_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *seen.entry((hook, id)).or_insert_with(|| {
            aya::programs::loaded_programs()
                .flatten()
                .find(|p| p.id() == id)
                .and_then(|p| p.map_ids().ok().flatten())
                .is_some_and(|maps| pinned_maps(&maps) == ours.pinned_maps)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::abi::DATAPATH_OBJECT;

    #[test]
    fn the_object_has_both_programs_and_all_maps() {
        let object = aya_obj_names();
        for hook in Hook::ALL {
            assert!(
                object.contains(&hook.program().to_owned()),
                "{}",
                hook.program()
            );
        }
        for map in ALL_MAPS {
            assert!(object.contains(&map.to_owned()), "{map}");
        }
    }

    fn aya_obj_names() -> Vec<String> {
        use object::{Object, ObjectSymbol};
        let file = object::File::parse(DATAPATH_OBJECT).expect("ELF");
        file.symbols()
            .filter_map(|s| s.name().ok().map(str::to_owned))
            .collect()
    }
}
