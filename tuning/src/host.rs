//! Reads the host: the facts [`crate::judge`] needs for `votes tune check`, and those the
//! reactors' preflight (`votes_net::preflight`) checks before glommio starts. Every read of
//! the host's limits, CPUs and io_uring is here.

use std::fs;

#[derive(Clone, Debug)]
pub struct HostFacts {
    pub online_cpus: usize,
    pub allowed_cpus: Vec<usize>,
    pub memlock_bytes: Option<u64>,
    pub io_uring: Result<(), String>,
    pub rmem_max: Option<u64>,
    pub wmem_max: Option<u64>,
    pub somaxconn: Option<u64>,
    pub tcp_max_syn_backlog: Option<u64>,
    pub nofile: Option<u64>,
}

fn sysctl(path: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn soft_limit(resource: libc::__rlimit_resource_t) -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and reports failure by return value.
    let rc = unsafe { libc::getrlimit(resource, &mut lim) };
    let value = if lim.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        lim.rlim_cur
    };
    (rc == 0).then_some(value)
}

/// Raises the soft limit of open files to the hard limit (each voter connection and each results
/// subscriber is a socket); returns the soft limit now in force.
pub fn raise_nofile() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim.rlim_cur)
}

/// The CPUs this process may run on (its affinity mask), in ascending order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Whether io_uring can be used here: the kernel's answer to setting a ring up (seccomp filters
/// and `kernel.io_uring_disabled` both say no only at that call).
fn io_uring_available() -> Result<(), String> {
    uring_supported_ops().map(|_| ()).map_err(|errno| {
        let err = std::io::Error::from_raw_os_error(errno);
        let disabled = sysctl("/proc/sys/kernel/io_uring_disabled")
            .map(|v| format!("; kernel.io_uring_disabled={v}"))
            .unwrap_or_default();
        format!("{err}{disabled}")
    })
}

// rlim_t is u64 on this target but not on every libc target.
#[allow(clippy::unnecessary_cast)]
/// The soft and hard RLIMIT_MEMLOCK (0, 0 when they cannot be read).
pub fn memlock_limits() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscall writing into a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return (0, 0);
    }
    (lim.rlim_cur as u64, lim.rlim_max as u64)
}

/// `struct io_uring_params` (uapi): 120 bytes, all zero on input except what we set.
#[repr(C, align(8))]
struct UringParams([u32; 30]);

/// `struct io_uring_probe` with room for 256 `struct io_uring_probe_op` (8 bytes each).
#[repr(C, align(8))]
struct UringProbe {
    last_op: u8,
    ops_len: u8,
    resv: u16,
    resv2: [u32; 3],
    ops: [[u8; 8]; 256],
}

const IORING_REGISTER_PROBE: libc::c_long = 8;
const IO_URING_OP_SUPPORTED: u16 = 1;

/// Sets up a 4-entry ring and asks the kernel which opcodes it supports (what liburing's
/// `io_uring_get_probe` does, without liburing's panic path in glommio).
pub fn uring_supported_ops() -> Result<Vec<u8>, i32> {
    let mut params = UringParams([0; 30]);
    // SAFETY: io_uring_setup reads and writes a correctly sized, zeroed io_uring_params.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            4 as libc::c_long,
            &mut params as *mut UringParams,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL));
    }
    let fd = fd as libc::c_int;
    let mut probe = UringProbe {
        last_op: 0,
        ops_len: 0,
        resv: 0,
        resv2: [0; 3],
        ops: [[0; 8]; 256],
    };
    // SAFETY: the probe buffer holds 256 ops as nr_args says; fd is the ring we just created.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            fd as libc::c_long,
            IORING_REGISTER_PROBE,
            &mut probe as *mut UringProbe,
            256 as libc::c_long,
        )
    };
    let err = std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EINVAL);
    // SAFETY: closing the fd we own.
    unsafe { libc::close(fd) };
    if rc < 0 {
        // Kernels before 5.6 have io_uring but no probe: too old for glommio anyway.
        return if err == libc::EINVAL {
            Ok(Vec::new())
        } else {
            Err(err)
        };
    }
    let n = usize::from(probe.ops_len).min(256);
    Ok(probe.ops[..n]
        .iter()
        .filter(|op| u16::from_ne_bytes([op[2], op[3]]) & IO_URING_OP_SUPPORTED != 0)
        .map(|op| op[0])
        .collect())
}

pub fn probe() -> HostFacts {
    HostFacts {
        // SAFETY: sysconf only reads a system constant.
        online_cpus: usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) })
            .unwrap_or(0),
        allowed_cpus: allowed_cpus(),
        memlock_bytes: soft_limit(libc::RLIMIT_MEMLOCK),
        io_uring: io_uring_available(),
        rmem_max: sysctl("/proc/sys/net/core/rmem_max"),
        wmem_max: sysctl("/proc/sys/net/core/wmem_max"),
        somaxconn: sysctl("/proc/sys/net/core/somaxconn"),
        tcp_max_syn_backlog: sysctl("/proc/sys/net/ipv4/tcp_max_syn_backlog"),
        nofile: soft_limit(libc::RLIMIT_NOFILE),
    }
}
