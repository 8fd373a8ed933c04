//! CPU seconds of processes, from `/proc/PID/stat`, for the peers' CPU-per-vote figures.
//!
//! A process's `utime + stime` covers all of its threads (a JVM broker, librdkafka's threads).
//! A server that forks a process per connection (PostgreSQL) is measured as a tree: the
//! postmaster's own time, the time of its children that already exited and were reaped
//! (`cutime + cstime`), and the time of its live children.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("cannot read /proc/{pid}/stat: {source}")]
    Read {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("/proc/{pid}/stat is not in the expected format")]
    Format { pid: u32 },
    #[error("sysconf(_SC_CLK_TCK) failed")]
    ClockTicks,
}

/// The fields of `/proc/PID/stat` the peers need, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub ppid: u32,
    pub utime: u64,
    pub stime: u64,
    pub cutime: u64,
    pub cstime: u64,
}

impl ProcStat {
    /// Parses a stat line. The command name may hold spaces and parentheses, so fields are
    /// counted after its last `)`: state is field 3, ppid 4, utime 14 … cstime 17.
    pub fn parse(stat: &str) -> Option<Self> {
        let rest = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().take(15).collect();
        // f[0] = state (field 3), so field k is f[k - 3].
        let num = |k: usize| f.get(k - 3)?.parse::<u64>().ok();
        Some(Self {
            ppid: u32::try_from(num(4)?).ok()?,
            utime: num(14)?,
            stime: num(15)?,
            // cutime and cstime are signed in the kernel's format, never negative in practice.
            cutime: f.get(16 - 3)?.parse::<i64>().ok()?.max(0).unsigned_abs(),
            cstime: f.get(17 - 3)?.parse::<i64>().ok()?.max(0).unsigned_abs(),
        })
    }

    pub fn read(pid: u32) -> Result<Self, CpuError> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_err(|source| CpuError::Read { pid, source })?;
        Self::parse(&s).ok_or(CpuError::Format { pid })
    }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn clk_tck() -> Result<f64, CpuError> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        Ok(hz as f64)
    } else {
        Err(CpuError::ClockTicks)
    }
}

/// `utime + stime` of `pid` in seconds; with `reaped_children`, also `cutime + cstime`.
pub fn cpu_seconds(pid: u32, reaped_children: bool) -> Result<f64, CpuError> {
    let s = ProcStat::read(pid)?;
    let mut ticks = s.utime + s.stime;
    if reaped_children {
        ticks += s.cutime + s.cstime;
    }
    Ok(ticks as f64 / clk_tck()?)
}

/// This process's CPU seconds (all threads).
pub fn self_cpu_seconds() -> Result<f64, CpuError> {
    cpu_seconds(std::process::id(), false)
}

/// A forking server's CPU seconds: `pid`'s `utime + stime + cutime + cstime` plus
/// `utime + stime` of each live process whose parent is `pid`. A child that exits between two
/// readings moves from the live sum to `cutime + cstime` once reaped, so differences of two
/// readings stay right.
pub fn tree_cpu_seconds(pid: u32) -> Result<f64, CpuError> {
    let own = ProcStat::read(pid)?;
    let mut ticks = own.utime + own.stime + own.cutime + own.cstime;
    let dir = std::fs::read_dir("/proc").map_err(|source| CpuError::Read { pid, source })?;
    for entry in dir.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit while we scan: skip what cannot be read.
        if let Ok(s) = ProcStat::read(child)
            && s.ppid == pid
        {
            ticks += s.utime + s.stime;
        }
    }
    Ok(ticks as f64 / clk_tck()?)
}

/// The sum of [`cpu_seconds`] over `pids` (without reaped children).
pub fn sum_cpu_seconds(pids: &[u32]) -> Result<f64, CpuError> {
    pids.iter().map(|&p| cpu_seconds(p, false)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines() {
        let stat = "42 (a (b) c) S 7 42 42 0 -1 4194560 100 0 0 0 250 50 3 4 20 0 1 0 1 1 1";
        assert_eq!(
            ProcStat::parse(stat),
            Some(ProcStat {
                ppid: 7,
                utime: 250,
                stime: 50,
                cutime: 3,
                cstime: 4
            })
        );
        assert_eq!(ProcStat::parse("42 (x) S 1"), None);
        assert_eq!(ProcStat::parse("garbage"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = self_cpu_seconds().unwrap();
        assert!(me >= 0.0);
        let tree = tree_cpu_seconds(std::process::id()).unwrap();
        assert!(tree >= me);
        assert!(cpu_seconds(u32::MAX, false).is_err());
    }
}
