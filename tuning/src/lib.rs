//! `votes-tuning`: what `votes tune check` reports, and the CPU placement `serve` applies.
//!
//! Each finding is a [`Finding`] with the value read from the host and, when the value is below
//! what a TV-peak node needs, the recommendation. The judgement ([`judge`]) is pure so it is
//! tested without a particular host; only [`probe`] reads `/proc` and asks the kernel.

use std::fmt;

pub mod host;

pub use host::{HostFacts, probe};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Warn,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub name: &'static str,
    pub verdict: Verdict,
    pub value: String,
    pub advice: Option<String>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "WARN",
        };
        write!(f, "{tag} {:<22} {}", self.name, self.value)?;
        if let Some(advice) = &self.advice {
            write!(f, "  -> {advice}")?;
        }
        Ok(())
    }
}

/// Thresholds a node that takes a national TV peak should meet.
pub mod wanted {
    /// io_uring registers buffers that count against memlock (glommio's reactors need it).
    pub const MEMLOCK_BYTES: u64 = 512 * 1024 * 1024;
    /// QUIC and bursty TCP need large socket buffers to ride out a 250k votes/s spike.
    pub const SOCKET_BUFFER_BYTES: u64 = 7 * 1024 * 1024;
    pub const SOMAXCONN: u64 = 4096;
    pub const TCP_MAX_SYN_BACKLOG: u64 = 8192;
    /// Every voter connection is a descriptor; hundreds of thousands are normal at peak.
    pub const NOFILE: u64 = 1_000_000;
}

/// CPU placement: reactor core k runs on the k-th CPU of `cpus` (the `--cpus` list, or every
/// CPU the process may use), taking the first `cores` of them.
pub fn placement(allowed: &[usize], cores: Option<usize>) -> Vec<usize> {
    let n = cores.unwrap_or(allowed.len()).min(allowed.len());
    allowed[..n].to_vec()
}

fn at_least(
    name: &'static str,
    have: Option<u64>,
    want: u64,
    how: &str,
    unit: fn(u64) -> String,
) -> Finding {
    match have {
        Some(v) if v >= want => Finding {
            name,
            verdict: Verdict::Ok,
            value: unit(v),
            advice: None,
        },
        Some(v) => Finding {
            name,
            verdict: Verdict::Warn,
            value: unit(v),
            advice: Some(format!("{how} {}", unit(want))),
        },
        None => Finding {
            name,
            verdict: Verdict::Warn,
            value: "unknown".into(),
            advice: Some(format!("could not read it; want {}", unit(want))),
        },
    }
}

fn bytes(v: u64) -> String {
    if v == u64::MAX {
        "unlimited".into()
    } else if v >= 1 << 20 {
        format!("{} MiB", v >> 20)
    } else {
        format!("{} KiB", v >> 10)
    }
}

fn count(v: u64) -> String {
    if v == u64::MAX {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

/// Turns what the host told us into findings, in the order `tune check` prints them.
///
/// Long because it is the list of findings itself, one block per fact.
pub fn judge(facts: &HostFacts, cores: Option<usize>) -> Vec<Finding> {
    let mut out = Vec::new();
    let placed = placement(&facts.allowed_cpus, cores);
    out.push(Finding {
        name: "cores",
        verdict: if facts.allowed_cpus.is_empty() {
            Verdict::Warn
        } else {
            Verdict::Ok
        },
        value: format!(
            "{} online, {} allowed to this process",
            facts.online_cpus,
            facts.allowed_cpus.len()
        ),
        advice: None,
    });
    out.push(Finding {
        name: "placement",
        verdict: Verdict::Ok,
        value: placed
            .iter()
            .enumerate()
            .map(|(core, cpu)| format!("core {core}->cpu {cpu}"))
            .collect::<Vec<_>>()
            .join(", "),
        advice: None,
    });
    out.push(at_least(
        "memlock",
        facts.memlock_bytes,
        wanted::MEMLOCK_BYTES,
        "LimitMEMLOCK= or ulimit -l to at least",
        bytes,
    ));
    out.push(match &facts.io_uring {
        Ok(()) => Finding {
            name: "io_uring",
            verdict: Verdict::Ok,
            value: "available".into(),
            advice: None,
        },
        Err(why) => Finding {
            name: "io_uring",
            verdict: Verdict::Warn,
            value: format!("unavailable ({why})"),
            advice: Some(
                "the reactors need io_uring: kernel >= 5.8 and sysctl kernel.io_uring_disabled=0"
                    .into(),
            ),
        },
    });
    out.push(at_least(
        "net.core.rmem_max",
        facts.rmem_max,
        wanted::SOCKET_BUFFER_BYTES,
        "sysctl -w net.core.rmem_max=",
        |v| v.to_string(),
    ));
    out.push(at_least(
        "net.core.wmem_max",
        facts.wmem_max,
        wanted::SOCKET_BUFFER_BYTES,
        "sysctl -w net.core.wmem_max=",
        |v| v.to_string(),
    ));
    out.push(at_least(
        "net.core.somaxconn",
        facts.somaxconn,
        wanted::SOMAXCONN,
        "sysctl -w net.core.somaxconn=",
        count,
    ));
    out.push(at_least(
        "tcp_max_syn_backlog",
        facts.tcp_max_syn_backlog,
        wanted::TCP_MAX_SYN_BACKLOG,
        "sysctl -w net.ipv4.tcp_max_syn_backlog=",
        count,
    ));
    out.push(at_least(
        "nofile",
        facts.nofile,
        wanted::NOFILE,
        "LimitNOFILE= or ulimit -n to at least",
        count,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roomy() -> HostFacts {
        HostFacts {
            online_cpus: 4,
            allowed_cpus: vec![0, 1, 2, 3],
            memlock_bytes: Some(u64::MAX),
            io_uring: Ok(()),
            rmem_max: Some(8 << 20),
            wmem_max: Some(8 << 20),
            somaxconn: Some(4096),
            tcp_max_syn_backlog: Some(8192),
            nofile: Some(1 << 20),
        }
    }

    #[test]
    fn a_roomy_host_passes_every_check() {
        let findings = judge(&roomy(), Some(2));
        assert!(
            findings.iter().all(|f| f.verdict == Verdict::Ok),
            "{findings:#?}"
        );
        assert_eq!(findings[1].value, "core 0->cpu 0, core 1->cpu 1");
    }

    #[test]
    fn low_limits_are_named_with_the_fix() {
        let mut facts = roomy();
        facts.memlock_bytes = Some(64 * 1024);
        facts.io_uring = Err("kernel.io_uring_disabled=2".into());
        facts.rmem_max = None;
        let findings = judge(&facts, None);
        let warned: Vec<&str> = findings
            .iter()
            .filter(|f| f.verdict == Verdict::Warn)
            .map(|f| f.name)
            .collect();
        assert_eq!(warned, ["memlock", "io_uring", "net.core.rmem_max"]);
        assert_eq!(
            findings[2].to_string(),
            "WARN memlock                64 KiB  -> LimitMEMLOCK= or ulimit -l to at least 512 MiB"
        );
    }

    #[test]
    fn placement_takes_the_first_allowed_cpus() {
        assert_eq!(placement(&[2, 3, 6, 7], Some(2)), vec![2, 3]);
        assert_eq!(placement(&[2, 3], Some(8)), vec![2, 3]);
        assert_eq!(placement(&[5], None), vec![5]);
    }
}
