//! Host checks run before any glommio executor is built.
//!
//! Why: glommio 0.9 reacts badly to an unfit host. A missing io_uring makes its opcode probe
//! `panic!`, a kernel without some opcodes makes it call `std::process::exit(1)`, and a
//! RLIMIT_MEMLOCK below 512 KiB makes every executor fail to build. We probe the same facts
//! first, on the calling thread, and turn them into a [`NetError`] naming what is missing.
//!
//! The judgement ([`judge`]) is pure and unit-tested; only [`probe`] touches the host, through
//! `votes_tuning::host`, which reads every host fact the node checks.

use votes_tuning::host;

use crate::error::NetError;

/// glommio's own floor (`MIN_MEMLOCK_LIMIT` in glommio 0.9 `sys/uring.rs`). It compares the
/// *soft* RLIMIT_MEMLOCK against it, whatever the capabilities: root is not exempt.
pub const GLOMMIO_MIN_MEMLOCK: u64 = 512 * 1024;

/// io_uring opcodes glommio 0.9 checks at start-up (`GLOMMIO_URING_OPS`), by uapi number:
/// NOP READV WRITEV FSYNC READ_FIXED WRITE_FIXED POLL_ADD POLL_REMOVE SENDMSG RECVMSG TIMEOUT
/// TIMEOUT_REMOVE ACCEPT LINK_TIMEOUT CONNECT FALLOCATE OPENAT CLOSE STATX READ WRITE SEND RECV.
pub const GLOMMIO_URING_OPS: &[u8] = &[
    0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 15, 16, 17, 18, 19, 21, 22, 23, 26, 27,
];

/// What [`probe`] found on the host.
#[derive(Debug, Clone)]
pub struct HostFacts {
    pub memlock_soft: u64,
    pub memlock_hard: u64,
    /// Supported io_uring opcodes, or the errno of `io_uring_setup`.
    pub uring: Result<Vec<u8>, i32>,
    /// `/proc/sys/kernel/io_uring_disabled` when the kernel has it.
    pub io_uring_disabled: Option<u8>,
    /// CPUs this process may run on (sched_getaffinity).
    pub allowed_cpus: Vec<usize>,
}

/// Decides whether reactors pinned to `cpus` can start on a host with `facts`.
pub fn judge(facts: &HostFacts, cpus: &[usize]) -> Result<(), NetError> {
    if facts.memlock_soft < GLOMMIO_MIN_MEMLOCK {
        return Err(NetError::MemlockTooLow {
            soft: facts.memlock_soft,
            hard: facts.memlock_hard,
            required: GLOMMIO_MIN_MEMLOCK,
        });
    }
    match &facts.uring {
        Err(errno) => {
            let reason = match (*errno, facts.io_uring_disabled) {
                (libc::ENOSYS, _) => "io_uring_setup returned ENOSYS: the kernel has no io_uring".to_string(),
                (libc::EPERM, Some(d)) if d > 0 => format!(
                    "io_uring_setup returned EPERM: kernel.io_uring_disabled={d} (set it to 0)"
                ),
                (libc::EPERM, _) => {
                    "io_uring_setup returned EPERM: a seccomp profile (container runtime) or LSM forbids io_uring"
                        .to_string()
                }
                (libc::ENOMEM, _) => format!(
                    "io_uring_setup returned ENOMEM: locked memory exhausted (RLIMIT_MEMLOCK soft={})",
                    facts.memlock_soft
                ),
                (e, _) => format!("io_uring_setup failed: {}", std::io::Error::from_raw_os_error(e)),
            };
            return Err(NetError::IoUringUnavailable { reason });
        }
        Ok(supported) => {
            let missing: Vec<u8> = GLOMMIO_URING_OPS
                .iter()
                .copied()
                .filter(|op| !supported.contains(op))
                .collect();
            if !missing.is_empty() {
                return Err(NetError::IoUringTooOld { missing });
            }
        }
    }
    for &cpu in cpus {
        if !facts.allowed_cpus.contains(&cpu) {
            return Err(NetError::CpuNotAllowed {
                cpu,
                allowed: facts.allowed_cpus.clone(),
            });
        }
    }
    Ok(())
}

/// Reads the host facts. Cheap (one throw-away io_uring instance) and free of side effects,
/// except for raising the soft RLIMIT_MEMLOCK up to the hard one when the soft one is below
/// glommio's floor: any process may do that, and it is what an operator would do by hand.
pub fn probe() -> HostFacts {
    let (mut soft, hard) = host::memlock_limits();
    if soft < GLOMMIO_MIN_MEMLOCK && hard >= GLOMMIO_MIN_MEMLOCK {
        let lim = libc::rlimit {
            rlim_cur: hard as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: plain syscall on a valid, initialised struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } == 0 {
            tracing::info!(
                from = soft,
                to = hard,
                "raised soft RLIMIT_MEMLOCK to the hard limit"
            );
            soft = hard;
        }
    }
    HostFacts {
        memlock_soft: soft,
        memlock_hard: hard,
        uring: host::uring_supported_ops(),
        io_uring_disabled: std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
            .ok()
            .and_then(|s| s.trim().parse().ok()),
        allowed_cpus: host::allowed_cpus(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fit_host() -> HostFacts {
        HostFacts {
            memlock_soft: 8 << 20,
            memlock_hard: 8 << 20,
            uring: Ok((0..=27).collect()),
            io_uring_disabled: Some(0),
            allowed_cpus: vec![0, 1],
        }
    }

    #[test]
    fn a_fit_host_passes() {
        judge(&fit_host(), &[0, 1]).unwrap();
    }

    #[test]
    fn low_memlock_is_named() {
        let facts = HostFacts {
            memlock_soft: 64 << 10,
            memlock_hard: 64 << 10,
            ..fit_host()
        };
        let err = judge(&facts, &[0]).unwrap_err();
        assert!(matches!(
            err,
            NetError::MemlockTooLow {
                required: GLOMMIO_MIN_MEMLOCK,
                ..
            }
        ));
        assert!(err.to_string().contains("RLIMIT_MEMLOCK"), "{err}");
    }

    #[test]
    fn disabled_io_uring_names_the_sysctl() {
        for (uring, io_uring_disabled, named) in [
            (libc::EPERM, Some(2), "io_uring_disabled=2"),
            (libc::EPERM, Some(0), "seccomp"),
            (libc::ENOSYS, Some(0), "no io_uring"),
        ] {
            let facts = HostFacts {
                uring: Err(uring),
                io_uring_disabled,
                ..fit_host()
            };
            let err = judge(&facts, &[0]).unwrap_err().to_string();
            assert!(err.contains(named), "{err}");
        }
    }

    #[test]
    fn missing_opcodes_are_listed() {
        let facts = HostFacts {
            uring: Ok((0..=22).collect()),
            ..fit_host()
        };
        match judge(&facts, &[0]).unwrap_err() {
            NetError::IoUringTooOld { missing } => assert_eq!(missing, vec![23, 26, 27]),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn cpu_outside_the_affinity_mask_is_refused() {
        let err = judge(&fit_host(), &[0, 5]).unwrap_err();
        assert!(matches!(err, NetError::CpuNotAllowed { cpu: 5, .. }));
    }

    #[test]
    fn this_host_probe_reports_something_consistent() {
        let facts = probe();
        assert!(facts.memlock_hard >= facts.memlock_soft || facts.memlock_hard == 0);
        assert!(!facts.allowed_cpus.is_empty());
    }
}
