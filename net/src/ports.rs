//! A loopback port for a listener that a test or a harness starts in another process.
//!
//! Asking the kernel for port 0 and passing the answer on races with every outgoing
//! connection on the machine: the kernel hands the same ephemeral range to `connect`, and a
//! test suite that talks to Kafka opens hundreds of them, so the port is often somebody's
//! source port by the time the child binds it ("already in use"). Ports below the ephemeral
//! range are never handed out implicitly; among those, a port is taken only when a listener
//! holds it, which the probe sees.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

/// Lowest port handed out: above the well-known and most registered service ports.
const FIRST: u16 = 20_000;
/// The kernel's usual `ip_local_port_range` starts here; used when it cannot be read.
const EPHEMERAL_DEFAULT_LOW: u16 = 32_768;
/// Candidates probed before giving up: the range is small enough that a full one means
/// something else is wrong.
const MAX_PROBES: u32 = 4_096;

/// Next candidate offset; starts from the process id so two harnesses running at once
/// begin far apart.
static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

/// A port on 127.0.0.1 that no TCP or UDP socket holds right now and that the kernel will
/// not give to an outgoing connection, so a child process can bind it (TCP for HTTP/1.1 and
/// h2, UDP for h3). Falls back to a kernel-chosen port when the ephemeral range leaves no
/// room below it.
pub fn loopback_listener_port() -> std::io::Result<u16> {
    let low = ephemeral_low().unwrap_or(EPHEMERAL_DEFAULT_LOW);
    if low <= FIRST + 1_000 {
        return Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port());
    }
    let span = u32::from(low - FIRST);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(2_654_435_761) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..MAX_PROBES {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = FIRST + offset as u16;
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        // Both sockets are dropped at once; the port stays ours only by convention, which
        // is all a port below the ephemeral range needs.
        if TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free loopback port in {FIRST}..{low} after {MAX_PROBES} probes"),
    ))
}

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
fn ephemeral_low() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_below_the_ephemeral_range_and_bindable() {
        let low = ephemeral_low().unwrap_or(EPHEMERAL_DEFAULT_LOW);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..64 {
            let port = loopback_listener_port().unwrap();
            assert!(seen.insert(port), "port {port} handed out twice");
            if low > FIRST + 1_000 {
                assert!((FIRST..low).contains(&port), "{port} not in {FIRST}..{low}");
            }
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        }
    }
}
