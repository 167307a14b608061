//! Extra io_uring setup flags for glommio's rings, without forking glommio.
//!
//! glommio creates its rings through its bundled, statically linked
//! liburing, whose `io_uring_queue_init_params` calls
//! `__sys_io_uring_setup`. The `ekilibri` binary is linked with GNU ld's
//! `--wrap=__sys_io_uring_setup` (see `build.rs`), so that call lands in a
//! small shim in `src/main.rs`, which calls [`setup`] here: it adds the
//! flags asked for with [`request`] and retries without them when the
//! kernel refuses (`EINVAL` before Linux 5.19 / 6.0).
//!
//! - `IORING_SETUP_COOP_TASKRUN` (5.19): completions that arrive while a
//!   worker runs are no longer pushed by an inter-processor interrupt; the
//!   kernel runs their task work at the worker's next `io_uring_enter`,
//!   which glommio makes on every pass of its loop. What changes for
//!   glommio: a completion becomes visible in the completion queue only
//!   after the next enter. Its preemption timer (a timeout on the latency
//!   ring that it checks by reading that ring's tail) therefore fires at
//!   the next enter rather than on time, and `spin_before_park`, which
//!   spins on the completion queues without entering, would spin blind:
//!   with `spin_before_park` set, COOP_TASKRUN is left off.
//! - `IORING_SETUP_SINGLE_ISSUER` (6.0): only the thread that created a
//!   ring submits to it, which is how glommio works (each executor builds
//!   its rings in its own thread); the kernel skips locking for it.
//!
//! `IORING_SETUP_DEFER_TASKRUN` is never used: glommio reaps completions
//! without asking the kernel to wait, so deferred work would never run.

use std::sync::atomic::{AtomicU32, Ordering};

/// `IORING_SETUP_COOP_TASKRUN`.
pub const COOP_TASKRUN: u32 = 1 << 8;
/// `IORING_SETUP_SINGLE_ISSUER`.
pub const SINGLE_ISSUER: u32 = 1 << 12;

/// The flags [`setup`] adds (set before any executor starts).
static REQUESTED: AtomicU32 = AtomicU32::new(0);
/// Rings created with every requested flag.
static RINGS_WITH: AtomicU32 = AtomicU32::new(0);
/// Rings the kernel refused some requested flag for.
static RINGS_WITHOUT: AtomicU32 = AtomicU32::new(0);

/// The flag names, in `ring_setup_flags` spelling.
pub const NAMES: [(&str, u32); 2] = [
    ("COOP_TASKRUN", COOP_TASKRUN),
    ("SINGLE_ISSUER", SINGLE_ISSUER),
];

/// Flags by name (`None` for an unknown name).
pub fn flag_of(name: &str) -> Option<u32> {
    NAMES.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// `COOP_TASKRUN|SINGLE_ISSUER`, or `none`.
pub fn describe(flags: u32) -> String {
    let names: Vec<&str> = NAMES
        .iter()
        .filter(|(_, f)| flags & f != 0)
        .map(|(n, _)| *n)
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join("|")
    }
}

/// Asks for `flags` on every ring created from now on.
pub fn request(flags: u32) {
    REQUESTED.store(flags, Ordering::Relaxed);
}

/// The flags asked for.
pub fn requested() -> u32 {
    REQUESTED.load(Ordering::Relaxed)
}

/// Rings created so far with all requested flags, and without some.
pub fn rings() -> (u32, u32) {
    (
        RINGS_WITH.load(Ordering::Relaxed),
        RINGS_WITHOUT.load(Ordering::Relaxed),
    )
}

/// The first three members of `struct io_uring_params`; only `flags` is
/// touched.
#[repr(C)]
struct ParamsPrefix {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
}

/// Signature of liburing's `__sys_io_uring_setup`: the raw syscall's
/// result (a descriptor, or -1 with `errno` set).
pub type RawSetup = unsafe extern "C" fn(u32, *mut std::ffi::c_void) -> i32;

/// Creates a ring through `real` with the requested flags added, falling
/// back to fewer flags (COOP_TASKRUN alone, then none) when the kernel
/// answers `EINVAL`.
///
/// # Safety
/// `params` must be null or point to a valid `struct io_uring_params`, as
/// liburing's caller guarantees; `real` must be liburing's setup call.
pub unsafe fn setup(entries: u32, params: *mut std::ffi::c_void, real: RawSetup) -> i32 {
    let extra = requested();
    if extra == 0 || params.is_null() {
        // SAFETY: the caller's arguments, passed through unchanged.
        return unsafe { real(entries, params) };
    }
    let prefix = params.cast::<ParamsPrefix>();
    // SAFETY: `params` points to a valid io_uring_params (caller contract),
    // whose layout starts with three u32s.
    let original = unsafe { (*prefix).flags };
    for attempt in [extra, extra & COOP_TASKRUN] {
        if attempt == 0 {
            continue;
        }
        // SAFETY: as above; the kernel reads `flags` and writes the struct
        // back only on success.
        unsafe { (*prefix).flags = original | attempt };
        let fd = unsafe { real(entries, params) };
        if fd >= 0 {
            let counter = if attempt == extra {
                &RINGS_WITH
            } else {
                &RINGS_WITHOUT
            };
            counter.fetch_add(1, Ordering::Relaxed);
            return fd;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            // Not about the flags (ENOMEM, EPERM...): report it as it is.
            unsafe { (*prefix).flags = original };
            return fd;
        }
    }
    // SAFETY: as above.
    unsafe { (*prefix).flags = original };
    RINGS_WITHOUT.fetch_add(1, Ordering::Relaxed);
    unsafe { real(entries, params) }
}

/// Which of `flags` this kernel accepts on a small ring (for `--check`).
pub fn supported(flags: u32) -> u32 {
    NAMES
        .iter()
        .map(|(_, f)| *f)
        .filter(|f| flags & f != 0 && probe(*f))
        .fold(0, |acc, f| acc | f)
}

fn probe(flag: u32) -> bool {
    // struct io_uring_params is 120 bytes.
    let mut params = [0u64; 15];
    let prefix = params.as_mut_ptr().cast::<ParamsPrefix>();
    // SAFETY: `params` is a zeroed, 8-byte aligned, 120-byte buffer, the
    // size of io_uring_params, which io_uring_setup reads and writes.
    let fd = unsafe {
        (*prefix).flags = flag;
        libc::syscall(
            libc::SYS_io_uring_setup,
            1 as libc::c_uint,
            params.as_mut_ptr(),
        )
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: `fd` is the ring descriptor just returned.
    unsafe { libc::close(fd as libc::c_int) };
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" fn refuse_coop(_entries: u32, p: *mut std::ffi::c_void) -> i32 {
        let flags = unsafe { (*p.cast::<ParamsPrefix>()).flags };
        if flags & SINGLE_ISSUER != 0 {
            // SAFETY: setting errno for the caller, as the syscall would.
            unsafe { *libc::__errno_location() = libc::EINVAL };
            -1
        } else {
            7
        }
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(flag_of("COOP_TASKRUN"), Some(COOP_TASKRUN));
        assert_eq!(flag_of("DEFER_TASKRUN"), None);
        assert_eq!(
            describe(COOP_TASKRUN | SINGLE_ISSUER),
            "COOP_TASKRUN|SINGLE_ISSUER"
        );
        assert_eq!(describe(0), "none");
    }

    #[test]
    fn falls_back_to_fewer_flags_on_einval() {
        request(COOP_TASKRUN | SINGLE_ISSUER);
        let mut params = [0u64; 15];
        let p = params.as_mut_ptr().cast::<std::ffi::c_void>();
        // SAFETY: a valid, zeroed params buffer and a fake setup call.
        let fd = unsafe { setup(8, p, refuse_coop) };
        assert_eq!(fd, 7);
        let flags = unsafe { (*p.cast::<ParamsPrefix>()).flags };
        assert_eq!(flags, COOP_TASKRUN, "retried with COOP_TASKRUN alone");
        request(0);
    }

    #[test]
    fn this_kernel_accepts_the_flags_or_says_no() {
        // Either answer is fine; the probe must not fail otherwise.
        let s = supported(COOP_TASKRUN | SINGLE_ISSUER);
        assert_eq!(s & !(COOP_TASKRUN | SINGLE_ISSUER), 0);
    }
}
