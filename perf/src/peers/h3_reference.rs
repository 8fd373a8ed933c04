//! The reference HTTP/3 server the appliance's h3 path is measured against (issue #8): the
//! `h3` crate's example server pattern — a multi-threaded tokio runtime, one quinn endpoint,
//! a task per connection and a task per request — answering `POST /v1/elections/{id}/votes`
//! with `202` and a fixed body shaped like the appliance's receipt, after reading the request
//! body. Every other request gets a `404` JSON error. It does no work per vote: its cost per
//! request is the floor of QUIC + HTTP/3 on tokio, and the appliance's votes/s per core over
//! this server's is the figure.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use http::{Method, Response, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The `202` body: the appliance's shape with a fixed receipt.
pub const ACCEPTED_BODY: &str = concat!(
    r#"{"status":"accepted","receipt":""#,
    "5f2b8e0c3a9d4e7f1b6c0a2d8e4f9b3c7a1d5e0f2c8b4a6d9e3f7c1b5a0d2e8f",
    r#"","partition":0,"offset":0}"#
);
const NOT_FOUND_BODY: &str = r#"{"error":"not_found","message":"no such route"}"#;
/// Bodies beyond this are not read further (the appliance's vote body limit is 1 KiB).
const BODY_MAX: usize = 64 * 1024;
/// Concurrent request streams a client may open per connection.
pub const MAX_STREAMS: u32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum H3RefError {
    #[error("{path}: {why}")]
    Pem { path: String, why: String },
    #[error("tls: {0}")]
    Tls(String),
    #[error("bind {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
    #[error("certificate: {0}")]
    Cert(String),
    #[error("write {0}: {1}")]
    Write(String, #[source] std::io::Error),
}

/// The certificate chain and key of two PEM files.
pub fn load_pem(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), H3RefError> {
    let pem = |p: &Path, why: String| H3RefError::Pem {
        path: p.display().to_string(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem(cert, "no certificate".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e.to_string()))?;
    Ok((certs, key_der))
}

/// A self-signed certificate for `names` (DNS names or IP addresses), as (cert PEM, key PEM).
pub fn self_signed(names: &[String]) -> Result<(String, String), H3RefError> {
    let ck = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| H3RefError::Cert(e.to_string()))?;
    Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
}

/// Writes `cert.pem` and `key.pem` (mode 0600) of a self-signed certificate into `dir`.
pub fn write_self_signed(dir: &Path, names: &[String]) -> Result<(), H3RefError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let (cert, key) = self_signed(names)?;
    let w = |p: &Path, e| H3RefError::Write(p.display().to_string(), e);
    std::fs::create_dir_all(dir).map_err(|e| w(dir, e))?;
    let cert_path = dir.join("cert.pem");
    std::fs::write(&cert_path, cert).map_err(|e| w(&cert_path, e))?;
    let key_path = dir.join("key.pem");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key_path)
        .and_then(|mut f| f.write_all(key.as_bytes()))
        .map_err(|e| w(&key_path, e))?;
    Ok(())
}

/// quinn's server configuration: TLS 1.3, ALPN `h3`.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ServerConfig, H3RefError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| H3RefError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| H3RefError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| H3RefError::Tls(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(MAX_STREAMS.into());
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Binds the endpoint (inside a tokio runtime).
pub fn bind(listen: SocketAddr, cfg: quinn::ServerConfig) -> Result<quinn::Endpoint, H3RefError> {
    quinn::Endpoint::server(cfg, listen).map_err(|e| H3RefError::Bind(listen, e))
}

/// Accepts connections until the endpoint is closed: a task per connection.
pub async fn serve(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            if let Err(e) = connection(incoming).await {
                eprintln!("votes-peer h3-reference: connection: {e}");
            }
        });
    }
}

async fn connection(incoming: quinn::Incoming) -> Result<(), Box<dyn std::error::Error>> {
    let conn = incoming.await?;
    let mut h3c: h3::server::Connection<h3_quinn::Connection, Bytes> =
        h3::server::Connection::new(h3_quinn::Connection::new(conn)).await?;
    loop {
        match h3c.accept().await {
            Ok(Some(resolver)) => {
                tokio::spawn(async move {
                    if let Err(e) = request(resolver).await
                        && !e.is_h3_no_error()
                    {
                        eprintln!("votes-peer h3-reference: request: {e}");
                    }
                });
            }
            Ok(None) => return Ok(()),
            Err(e) if e.is_h3_no_error() => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The route of a request: a vote (`POST /v1/elections/{id}/votes`) or not.
pub fn is_vote(method: &Method, path: &str) -> bool {
    method == Method::POST
        && path
            .strip_prefix("/v1/elections/")
            .and_then(|rest| rest.strip_suffix("/votes"))
            .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

async fn request(
    resolver: h3::server::RequestResolver<h3_quinn::Connection, Bytes>,
) -> Result<(), h3::error::StreamError> {
    let (req, mut stream) = resolver.resolve_request().await?;
    let mut read = 0usize;
    while let Some(mut chunk) = stream.recv_data().await? {
        read += chunk.remaining();
        chunk.advance(chunk.remaining());
        if read > BODY_MAX {
            break;
        }
    }
    let (status, body) = if is_vote(req.method(), req.uri().path()) {
        (StatusCode::ACCEPTED, ACCEPTED_BODY)
    } else {
        (StatusCode::NOT_FOUND, NOT_FOUND_BODY)
    };
    let resp = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(())
        .expect("valid response");
    stream.send_response(resp).await?;
    stream
        .send_data(Bytes::from_static(body.as_bytes()))
        .await?;
    stream.finish().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_body() {
        assert!(is_vote(&Method::POST, "/v1/elections/e1/votes"));
        assert!(!is_vote(&Method::GET, "/v1/elections/e1/votes"));
        assert!(!is_vote(&Method::POST, "/v1/elections//votes"));
        assert!(!is_vote(&Method::POST, "/v1/elections/a/b/votes"));
        assert!(!is_vote(&Method::POST, "/v1/elections/e1"));
        let v: serde_json::Value = serde_json::from_str(ACCEPTED_BODY).unwrap();
        assert_eq!(v["status"], "accepted");
        let r = v["receipt"].as_str().unwrap();
        assert!(r.len() == 64 && r.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
