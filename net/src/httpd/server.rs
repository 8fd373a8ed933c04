//! One core's accept loops: each listener's connections admitted (`per_core`) and handed to
//! their own task (`conn`).

use std::rc::Rc;
use std::time::Duration;

use futures_rustls::TlsAcceptor;
use glommio::net::TcpListener;
use glommio::timer::Timer;

use super::conn;
use super::per_core::CoreHttp;
use super::{App, ListenerKind};

/// What one listening socket serves.
pub(crate) struct Listening {
    pub(crate) kind: ListenerKind,
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) proxy_protocol: bool,
}

/// Accepts on one listener until shutdown; the listener is closed when this returns. With
/// `tls`, every connection starts with a TLS handshake (in its own task, so a slow handshake
/// never holds the accept loop); behind a proxy, with its PROXY header before that.
pub(crate) async fn accept_loop<A: App>(
    core: Rc<CoreHttp>,
    app: Rc<A>,
    listener: TcpListener,
    from: Listening,
) {
    let Listening {
        kind,
        tls,
        proxy_protocol,
    } = from;
    loop {
        let shutdown = core.shutdown_signal();
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shutdown.await;
            None
        })
        .await;
        let Some(accepted) = accepted else { break };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                let e = std::io::Error::from(e);
                // EMFILE/ENFILE/ENOBUFS/ENOMEM persist until something closes: back off
                // instead of spinning. Per-connection errors (ECONNABORTED...) just continue.
                let resource = matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                );
                tracing::warn!(error = %e, "accept failed");
                if resource {
                    Timer::new(Duration::from_millis(50)).await;
                }
                continue;
            }
        };
        let admin = kind == ListenerKind::Admin;
        // Behind a balancer every connection comes from the balancer's few addresses: the
        // per-address cap counts the client its PROXY header names instead (`conn::serve`).
        let per_addr = !admin && !proxy_protocol;
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        let Some((slot, state)) = core.admit_tcp(admin, per_addr, peer.ip()) else {
            // Over a cap: close at once. The client sees a reset/EOF and may retry on
            // another connection (which the kernel may hash to a less loaded core).
            drop(stream);
            continue;
        };
        // Small responses must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let (core2, app2, tls2) = (core.clone(), app.clone(), tls.clone());
        glommio::spawn_local(async move {
            let _slot = slot;
            let how = conn::Accepted {
                kind,
                tls: tls2,
                proxy_protocol,
                peer,
            };
            conn::serve(core2, app2, state, stream, how).await;
        })
        .detach();
    }
    tracing::debug!(?kind, tls = tls.is_some(), "accept loop stopped");
}
