//! Listener sockets: one per core and address, in one SO_REUSEPORT group, built on the calling
//! thread so that bind errors surface from `start_reactors` instead of inside a reactor.
//!
//! SO_REUSEPORT facts that shape this code:
//! * the kernel hashes each new connection (4-tuple) to one socket of the group, so each core
//!   accepts its own share with no shared accept queue and no thundering herd;
//! * any socket of the same effective uid may join a group: a second `votes serve` on the same
//!   port would silently take half the traffic. We first bind a probe socket *without*
//!   SO_REUSEPORT; if that fails with EADDRINUSE someone listens there already and we refuse;
//! * with port 0 every socket would get its own port: the probe picks the port, the group
//!   binds to it;
//! * connections queued on a socket that closes are reset, not moved to the other sockets
//!   (unless `net.ipv4.tcp_migrate_req=1`): cores therefore stop accepting together.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::NetError;
use crate::httpd::{ListenerKind, ListenerSpec};

/// A listener spec with its resolved address and one socket per core that serves it.
pub(crate) struct BoundSpec {
    pub(crate) spec: ListenerSpec,
    pub(crate) addr: SocketAddr,
    /// (core index, listening socket).
    pub(crate) sockets: Vec<(usize, Socket)>,
    /// (core index, UDP socket) for HTTP/3 on the same address: public TLS listeners only.
    pub(crate) udp: Vec<(usize, Socket)>,
}

fn new_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Lets a restarted server bind while old connections sit in TIME_WAIT. On Linux it does
    // not allow binding over a live listener.
    s.set_reuse_address(true)?;
    Ok(s)
}

fn bind_err(addr: SocketAddr, e: std::io::Error) -> NetError {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        NetError::AddrInUse { addr }
    } else {
        NetError::Bind { addr, source: e }
    }
}

/// UDP sockets for HTTP/3 on `addr`, one per core in one SO_REUSEPORT group (the kernel keeps
/// each client's 4-tuple on one core), after a probe without SO_REUSEPORT like the TCP one.
fn bind_udp(addr: SocketAddr, cores: usize) -> Result<Vec<(usize, Socket)>, NetError> {
    let udp = |reuse: bool| -> std::io::Result<Socket> {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if reuse {
            s.set_reuse_port(true)?;
        }
        s.bind(&addr.into())?;
        Ok(s)
    };
    drop(udp(false).map_err(|e| bind_err(addr, e))?);
    (0..cores)
        .map(|core| Ok((core, udp(true).map_err(|e| bind_err(addr, e))?)))
        .collect()
}

/// Binds every spec: Public on all `cores`, Admin on core 0 only; public TLS listeners also
/// on UDP for HTTP/3 when `http3`.
pub(crate) fn bind_all(
    specs: &[ListenerSpec],
    cores: usize,
    backlog: i32,
    http3: bool,
) -> Result<Vec<BoundSpec>, NetError> {
    assert!(cores > 0);
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let probe = new_socket(spec.addr).map_err(|e| bind_err(spec.addr, e))?;
        probe
            .bind(&spec.addr.into())
            .map_err(|e| bind_err(spec.addr, e))?;
        let addr = probe
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| {
                NetError::Config(format!("cannot read the bound address of {}", spec.addr))
            })?;
        drop(probe);
        let serving: Vec<usize> = match spec.kind {
            ListenerKind::Public | ListenerKind::Internal => (0..cores).collect(),
            ListenerKind::Admin => vec![0],
        };
        let mut sockets = Vec::with_capacity(serving.len());
        for core in serving {
            let s = new_socket(addr).map_err(|e| bind_err(addr, e))?;
            s.set_reuse_port(true).map_err(|e| bind_err(addr, e))?;
            s.bind(&addr.into()).map_err(|e| bind_err(addr, e))?;
            s.listen(backlog).map_err(|e| bind_err(addr, e))?;
            sockets.push((core, s));
        }
        // Not behind a proxy: QUIC carries no PROXY header, so its clients would all have the
        // balancer's address (or reach the node around it); no UDP side, hence no Alt-Svc.
        let udp = if http3
            && spec.tls.is_some()
            && spec.kind == ListenerKind::Public
            && !spec.proxy_protocol
        {
            bind_udp(addr, cores)?
        } else {
            Vec::new()
        };
        out.push(BoundSpec {
            spec: spec.clone(),
            addr,
            sockets,
            udp,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_resolves_once_and_every_core_shares_it() {
        let spec = ListenerSpec::plain("127.0.0.1:0".parse().unwrap(), ListenerKind::Public);
        let admin = ListenerSpec::plain("127.0.0.1:0".parse().unwrap(), ListenerKind::Admin);
        let bound = bind_all(&[spec, admin], 3, 128, true).unwrap();
        assert_ne!(bound[0].addr.port(), 0);
        assert_eq!(bound[0].sockets.len(), 3);
        for (_, s) in &bound[0].sockets {
            assert_eq!(s.local_addr().unwrap().as_socket().unwrap(), bound[0].addr);
        }
        assert_eq!(bound[1].sockets.len(), 1);
        assert_eq!(bound[1].sockets[0].0, 0);
    }

    #[test]
    fn http3_rides_on_public_tls_listeners_not_behind_a_proxy() {
        let (cert, key) = crate::self_signed_dev_cert(&["localhost"]).unwrap();
        let dir = std::env::temp_dir().join(format!("votes-listener-h3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        let tls = crate::tls_server_config(dir.join("cert.pem"), dir.join("key.pem")).unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let direct = ListenerSpec::tls(any, ListenerKind::Public, tls.clone());
        let proxied = ListenerSpec::tls(any, ListenerKind::Public, tls.clone()).behind_proxy();
        let admin = ListenerSpec::tls(any, ListenerKind::Admin, tls);
        let bound = bind_all(&[direct, proxied, admin], 2, 16, true).unwrap();
        assert_eq!(bound[0].udp.len(), 2, "a public TLS listener offers HTTP/3");
        assert!(bound[1].udp.is_empty(), "not behind a proxy");
        assert!(bound[2].udp.is_empty(), "not on the admin listener");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_address_with_a_live_listener_is_refused() {
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let spec = ListenerSpec::plain(other.local_addr().unwrap(), ListenerKind::Public);
        assert!(matches!(
            bind_all(&[spec], 2, 128, true),
            Err(NetError::AddrInUse { .. })
        ));

        // Even when the stranger itself used SO_REUSEPORT (it could otherwise be joined).
        let bound = bind_all(
            &[ListenerSpec::plain(
                "127.0.0.1:0".parse().unwrap(),
                ListenerKind::Public,
            )],
            1,
            16,
            true,
        )
        .unwrap();
        let spec = ListenerSpec::plain(bound[0].addr, ListenerKind::Public);
        assert!(matches!(
            bind_all(&[spec], 1, 16, true),
            Err(NetError::AddrInUse { .. })
        ));
    }
}
