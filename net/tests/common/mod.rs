//! Ground shared by the reactor integration tests (`mod common;` in each): one test at a time
//! on the pinned CPUs, the reactors serving a plaintext public listener, and the tokio + hyper
//! client side that talks to them. Each test binary uses its own subset.
#![allow(dead_code)]

pub mod temp_dir;

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use votes_net::{App, CoreContext, ListenerKind, ListenerSpec, ReactorConfig, Reactors};

/// Reactors pin to the same CPUs; one test at a time keeps the box quiet.
static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the test's turn on the CPUs until dropped; a test that panicked before does not
/// poison the turn of the next.
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The first two CPUs this process may run on: the tests that spread connections over two
/// cores need them.
pub fn two_cpus() -> Vec<usize> {
    let cpus = votes_net::preflight::probe().allowed_cpus;
    assert!(cpus.len() >= 2, "these tests need two CPUs, have {cpus:?}");
    cpus[..2].to_vec()
}

/// Starts the reactors of `cfg` with one more plaintext public listener on an ephemeral
/// loopback port; returns them and that listener's address.
pub fn serve_public<M, A, F>(mut cfg: ReactorConfig, make_app: F) -> (Reactors, SocketAddr)
where
    M: Send + 'static,
    A: App,
    F: Fn(CoreContext<M>) -> A + Send + Sync + 'static,
{
    cfg.listeners.push(ListenerSpec::plain(
        "127.0.0.1:0".parse().unwrap(),
        ListenerKind::Public,
    ));
    let r = votes_net::start_reactors(cfg, make_app).expect("reactors start");
    let addr = r.local_addr(ListenerKind::Public).unwrap();
    (r, addr)
}

/// A two-worker tokio runtime for the clients: enough to keep many connections busy without
/// competing with the reactors for the machine.
pub fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// An HTTP/1.1 client connection over `io` (TCP or TLS), its driver spawned.
pub async fn h1_over<S, B>(io: S) -> hyper::client::conn::http1::SendRequest<B>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

/// An h2 client connection over `io` (h2c prior knowledge on TCP, or h2 on TLS), its driver
/// spawned.
pub async fn h2_over<S, B>(io: S) -> hyper::client::conn::http2::SendRequest<B>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

/// A response's status and its whole body as text.
pub async fn read(resp: Response<Incoming>) -> (StatusCode, String) {
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// Reads until EOF or error; panics if the server keeps the connection beyond `bound`.
/// Returns how long the server took to close it.
pub async fn wait_closed<S: AsyncRead + Unpin>(s: &mut S, bound: Duration) -> Duration {
    let t0 = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(bound, s.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {bound:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return t0.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}
