//! The reference HTTP/1.1 server the appliance's h1 path is measured against (issue #16): hyper
//! on tokio, a task per connection, keep-alive, answering `POST /v1/elections/{id}/votes` with
//! `202` and the same fixed receipt body as [`h3_reference`](super::h3_reference), after reading
//! the request body; every other request gets a `404` JSON error. It does no work per vote, so
//! its CPU per request is what HTTP/1.1 over TCP costs on this machine with the same HTTP
//! library the appliance uses, and the appliance's CPU per vote over it is the edge's overhead.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::h3_reference::{ACCEPTED_BODY, is_vote};

const NOT_FOUND_BODY: &str = r#"{"error":"not_found","message":"no such route"}"#;
const TOO_LARGE_BODY: &str = r#"{"error":"payload_too_large","message":"body over 64 KiB"}"#;
/// Bodies beyond this are refused (the appliance's vote body limit is 1 KiB).
const BODY_MAX: usize = 64 * 1024;

/// Binds the listener (inside a tokio runtime).
pub async fn bind(listen: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen).await
}

/// Accepts connections until the listener fails: a task per connection.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        // Replies are small and each is the last write of its turn: no Nagle delay.
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer))
                .await;
            if let Err(e) = served
                && !e.is_incomplete_message()
            {
                eprintln!("votes-peer h1-reference: connection: {e}");
            }
        });
    }
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let vote = is_vote(req.method(), req.uri().path());
    let read = Limited::new(req.into_body(), BODY_MAX).collect().await;
    let (status, body) = match read {
        Err(_) => (StatusCode::PAYLOAD_TOO_LARGE, TOO_LARGE_BODY),
        Ok(_) if vote => (StatusCode::ACCEPTED, ACCEPTED_BODY),
        Ok(_) => (StatusCode::NOT_FOUND, NOT_FOUND_BODY),
    };
    let resp = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("valid response");
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference answers a vote 202 with the receipt body, anything else 404, over one
    /// keep-alive connection.
    #[tokio::test]
    async fn answers_votes_202_and_the_rest_404_on_one_connection() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(listener));
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        for (method, path, status, body) in [
            ("POST", "/v1/elections/e1/votes", 202, ACCEPTED_BODY),
            ("GET", "/v1/elections/e1/votes", 404, NOT_FOUND_BODY),
            ("POST", "/v1/elections/e1/votes", 202, ACCEPTED_BODY),
        ] {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, "reference")
                .body(Full::new(Bytes::from_static(br#"{"option":"a"}"#)))
                .expect("request");
            let resp = send.send_request(req).await.expect("answer");
            assert_eq!(resp.status().as_u16(), status, "{method} {path}");
            let got = resp.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(got, body.as_bytes(), "{method} {path}");
        }
    }
}
