//! What every typed map of the datapath shares, so each tells the same story: the error of a
//! map operation naming the map and the entry, telling "no such key" (an answer) from a failed
//! syscall, and opening a map pinned in the node's pin directory without loading anything.

use std::path::Path;

use aya::maps::{Map, MapData, MapError};

/// Reading or writing a datapath map failed.
#[derive(Debug, thiserror::Error)]
#[error("BPF map {map}: {op} failed: {source}")]
pub struct MapOpError {
    /// The map's name.
    pub map: &'static str,
    /// What was being done, naming the entry.
    pub op: String,
    /// aya's error.
    #[source]
    pub source: MapError,
}

/// The [`MapOpError`] of `op` on `map`, for `map_err`.
pub(super) fn map_err(
    map: &'static str,
    op: impl Into<String>,
) -> impl FnOnce(MapError) -> MapOpError {
    let op = op.into();
    move |source| MapOpError { map, op, source }
}

/// True when `error` only says the key is not in the map (aya reports it either way,
/// depending on the call).
pub(super) fn is_missing_key(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Opens the map `name` pinned in `pin_dir` (`/sys/fs/bpf/kino/<node>`).
pub(super) fn open_pinned(pin_dir: &Path, name: &'static str) -> Result<Map, MapOpError> {
    let path = pin_dir.join(name);
    let data =
        MapData::from_pin(&path).map_err(map_err(name, format!("open pin {}", path.display())))?;
    Map::from_map_data(data).map_err(map_err(name, "open"))
}

/// `error` and its sources, so aya's terse top-level messages keep their cause (errno).
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
