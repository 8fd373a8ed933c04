//! Building answers: JSON bodies, the error envelope of docs/design.md §4.2, `Retry-After`.

use votes_core::ErrorCode;
use votes_net::BoxBody;
use votes_net::http::{Response, StatusCode, header};

/// Seconds a client should wait before retrying a `503`/`429`.
pub const RETRY_AFTER_S: u32 = 1;

pub fn json<T: serde::Serialize>(status: u16, value: &T) -> Response<BoxBody> {
    let body = serde_json::to_vec(value).expect("answers always serialize");
    raw_json(status, body)
}

pub fn raw_json(status: u16, body: Vec<u8>) -> Response<BoxBody> {
    Response::builder()
        .status(StatusCode::from_u16(status).expect("valid status"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(BoxBody::full(body))
        .expect("static headers are valid")
}

/// A JSON body that lives as long as the process (the API descriptions): no copy per answer.
pub fn raw_json_static(status: u16, body: &'static [u8]) -> Response<BoxBody> {
    Response::builder()
        .status(StatusCode::from_u16(status).expect("valid status"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "public, max-age=300")
        .body(BoxBody::full(votes_net::bytes::Bytes::from_static(body)))
        .expect("static headers are valid")
}

/// An error of the public contract, with `Retry-After` where the code calls for it.
pub fn error(code: ErrorCode, message: &str) -> Response<BoxBody> {
    let mut resp = raw_json(code.status(), votes_net::error_body(code, message));
    // Kept with the answer so the metrics can count it by code without parsing the body.
    resp.extensions_mut().insert(code);
    if code.needs_retry_after() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, RETRY_AFTER_S.into());
    }
    resp
}

/// `429 rate_limited` with `Retry-After` in whole seconds (at least 1).
pub fn rate_limited(wait: std::time::Duration) -> Response<BoxBody> {
    let mut resp = error(
        ErrorCode::RateLimited,
        "too many requests from this address or network; retry later",
    );
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, secs.max(1).into());
    resp
}

/// An error whose code is not one of the voter API's (admin API: `conflict`).
pub fn custom_error(status: u16, code: &str, message: &str) -> Response<BoxBody> {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    json(status, &body)
}

/// `405` with `Allow` naming the methods the path answers.
pub fn method_not_allowed(allow: &[votes_net::http::Method]) -> Response<BoxBody> {
    let mut resp = custom_error(405, "invalid_request", "method not allowed on this path");
    let allow: Vec<&str> = allow.iter().map(votes_net::http::Method::as_str).collect();
    let allow = header::HeaderValue::from_str(&allow.join(", ")).expect("method names are tokens");
    resp.headers_mut().insert(header::ALLOW, allow);
    resp
}

pub fn text(status: u16, content_type: &'static str, body: String) -> Response<BoxBody> {
    Response::builder()
        .status(StatusCode::from_u16(status).expect("valid status"))
        .header(header::CONTENT_TYPE, content_type)
        .body(BoxBody::full(body))
        .expect("static headers are valid")
}

/// The bearer token of a request, if it has one.
pub fn bearer<B>(req: &votes_net::http::Request<B>) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether the request says its body is JSON (`application/json`, parameters allowed).
pub fn is_json<B>(req: &votes_net::http::Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}
