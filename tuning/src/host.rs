//! Reads the facts [`crate::judge`] needs from this host.

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

/// Asks the kernel for a one-entry io_uring and closes it: the only reliable availability test
/// (seccomp filters and `kernel.io_uring_disabled` both say no only at this call).
fn io_uring_available() -> Result<(), String> {
    let mut params = [0u8; 120]; // struct io_uring_params
    // SAFETY: io_uring_setup reads and writes `params`, which outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        let disabled = sysctl("/proc/sys/kernel/io_uring_disabled")
            .map(|v| format!("; kernel.io_uring_disabled={v}"))
            .unwrap_or_default();
        return Err(format!("{err}{disabled}"));
    }
    // SAFETY: fd was just returned by the kernel and is owned here.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
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
