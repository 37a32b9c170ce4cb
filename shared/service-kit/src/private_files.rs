//! Files a service creates are its own: state (the datastore file, checkpoints), sockets and
//! anything a library writes are not readable by other local users, whatever umask the
//! service was started with.

/// Sets the process umask to 077, so every file and directory created from now on is
/// private to its owner (explicit modes, e.g. a socket's 0600, still apply). Call first
/// thing in `main`.
pub fn make_new_files_private() {
    // SAFETY: umask(2) only swaps the process's file-creation mask; it cannot fail and
    // touches no memory of ours.
    unsafe {
        libc::umask(0o077);
    }
}
