//! Ground shared by the harness's integration tests (`mod common;` in each): the in-process
//! servers they drive listen the same way.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

/// Listens on a free port of 127.0.0.1 until the runtime ends and hands each connection, with
/// its peer, to `serve`, whose future runs as a task of its own; the port's address.
pub async fn accept_each<F, C>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream, SocketAddr) -> C + Send + 'static,
    C: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            tokio::spawn(serve(stream, peer));
        }
    });
    addr
}
