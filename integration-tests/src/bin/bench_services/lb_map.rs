//! Reads one key of an agent's pinned frontend map (`kino_lb_frontends`, the layout of
//! services/agent/src/datapath/abi/lb.rs `LbFrontendKeyRaw`/`LbFrontendRaw`) straight from
//! the kernel with the bpf(2) syscall: whether a service's frontend is in the load balancer
//! the node's socket programs consult — the moment a change is realized. A lookup costs a few
//! microseconds, so polling it does not slow what it measures (the agent has no API that
//! lists frontends; `bpftool` would add a process start per poll).

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::Context;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_OBJ_GET: libc::c_long = 7;
/// `KINO_FAMILY_IPV4` (bpf/kino_maps.h).
const FAMILY_IPV4: u8 = 1;
const IPPROTO_TCP: u8 = 6;

/// The frontend map pinned by one agent.
pub struct FrontendMap {
    fd: OwnedFd,
}

/// `struct lb_frontend` (24 bytes): id, count, total_weight, affinity_timeout, maglev_size,
/// flags, type, pad.
#[repr(C)]
#[derive(Default)]
struct FrontendValue {
    id: u32,
    count: u32,
    rest: [u32; 4],
}

impl FrontendMap {
    /// Opens `<pin_dir>/kino_lb_frontends`.
    pub fn open(pin_dir: &Path) -> anyhow::Result<FrontendMap> {
        let path = pin_dir.join("kino_lb_frontends");
        let name = CString::new(path.as_os_str().as_encoded_bytes())?;
        // union bpf_attr for BPF_OBJ_GET: pathname, bpf_fd, file_flags, path_fd.
        let attr = [name.as_ptr() as u64, 0, 0];
        // SAFETY: BPF_OBJ_GET reads only the NUL-terminated path `name` holds.
        let fd = unsafe { bpf(BPF_OBJ_GET, &attr) }
            .with_context(|| format!("opening the pinned map {}", path.display()))?;
        // SAFETY: the syscall returned a new file descriptor that nothing else owns.
        Ok(FrontendMap {
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }

    /// How many active backends the TCP frontend `vip:port` has; `None` when it is absent.
    pub fn backends(&self, vip: Ipv4Addr, port: u16) -> anyhow::Result<Option<u32>> {
        let mut key = [0u8; 20];
        key[..4].copy_from_slice(&vip.octets());
        key[16..18].copy_from_slice(&port.to_be_bytes());
        key[18] = IPPROTO_TCP;
        key[19] = FAMILY_IPV4;
        let mut value = FrontendValue::default();
        // union bpf_attr for BPF_MAP_LOOKUP_ELEM: map_fd (u32, padded), key, value, flags.
        let attr: [u64; 4] = [
            self.fd.as_raw_fd() as u64,
            key.as_ptr() as u64,
            (&mut value as *mut FrontendValue) as u64,
            0,
        ];
        // SAFETY: the kernel reads the map's key size (20 bytes, `key`) and writes its value
        // size (24 bytes, `FrontendValue`; the agent's ABI test checks both against BTF).
        match unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &attr) } {
            Ok(_) => Ok(Some(value.count)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e).context("looking up a frontend"),
        }
    }
}

/// bpf(2) with `attr`, the leading words of a `union bpf_attr`: its result, or the error.
///
/// # Safety
/// The pointers in `attr` must be valid for what `cmd` reads and writes through them.
unsafe fn bpf(cmd: libc::c_long, attr: &[u64]) -> std::io::Result<libc::c_long> {
    // SAFETY: the caller vouches for the pointers; the kernel reads `attr` up to its size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
