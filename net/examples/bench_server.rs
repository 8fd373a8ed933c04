//! Trivial server for throughput measurements of the reactor + HTTP layer.
//!
//! `cargo run --release -p votes-net --example bench_server -- CPUS PORT SECONDS [TLS_PORT]`
//! e.g. `-- 0,1 18080 30 18443`; serves `GET /` with a 2-byte body on every core and
//! `POST /route/{n}` through the mesh, then stops by itself after SECONDS. With TLS_PORT it also
//! serves TLS (h2/http1.1 by ALPN) there, with a fresh self-signed certificate for
//! localhost/127.0.0.1 (clients must skip verification: `wrk` and `h2load` do).

use std::net::SocketAddr;
use std::time::Duration;

use http::Response;
use votes_net::{
    App, AppRequest, AppResponse, BoxBody, CoreContext, ListenerKind, ListenerSpec, Mesh,
    ReactorConfig, ReplyTx, reply_channel, start_reactors,
};

struct Bench {
    mesh: Mesh<ReplyTx<usize>>,
}

impl App for Bench {
    fn handle(&self, _: ListenerKind, _: SocketAddr, req: AppRequest) -> AppResponse {
        if let Some(n) = req
            .uri()
            .path()
            .strip_prefix("/route/")
            .and_then(|n| n.parse::<usize>().ok())
        {
            let mesh = self.mesh.clone();
            return Box::pin(async move {
                let (tx, rx) = reply_channel();
                if mesh.try_send(n % mesh.cores(), tx).is_err() {
                    let mut r = Response::new(BoxBody::empty());
                    *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                    return r;
                }
                Response::new(BoxBody::from(
                    rx.await.map(|c| c.to_string()).unwrap_or_default(),
                ))
            });
        }
        Box::pin(async { Response::new(BoxBody::from("ok")) })
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cpus: Vec<usize> = args
        .get(1)
        .map_or("0", String::as_str)
        .split(',')
        .map(|c| c.parse().unwrap())
        .collect();
    let port: u16 = args.get(2).map_or(18080, |p| p.parse().unwrap());
    let secs: u64 = args.get(3).map_or(30, |s| s.parse().unwrap());
    let tls_port: Option<u16> = args.get(4).map(|p| p.parse().unwrap());
    let mut cfg = ReactorConfig::new(cpus);
    if let Some(tls_port) = tls_port {
        let (cert, key) = votes_net::self_signed_dev_cert(&["localhost", "127.0.0.1"]).unwrap();
        let dir = std::env::temp_dir().join(format!("votes-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        let tls = votes_net::tls_server_config(&c, &k).unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::remove_dir_all(&dir);
        cfg.listeners.push(ListenerSpec::tls(
            SocketAddr::from(([127, 0, 0, 1], tls_port)),
            ListenerKind::Public,
            tls,
        ));
    }
    cfg.listeners.push(ListenerSpec::plain(
        SocketAddr::from(([127, 0, 0, 1], port)),
        ListenerKind::Public,
    ));
    let reactors = start_reactors(cfg, |mut ctx: CoreContext<ReplyTx<usize>>| {
        let me = ctx.core_index();
        let mut inbox = ctx.take_inbox().unwrap();
        glommio::spawn_local(async move {
            while let Some((_, reply)) = inbox.recv().await {
                let _ = reply.send(me);
            }
        })
        .detach();
        Bench {
            mesh: ctx.mesh().clone(),
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "serving on {:?} (TLS {:?}) for {secs}s",
        reactors.local_addr(ListenerKind::Public),
        reactors.local_tls_addr(ListenerKind::Public)
    );
    std::thread::sleep(Duration::from_secs(secs));
    reactors.shutdown();
    reactors.join().unwrap();
}
