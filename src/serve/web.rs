//! The web pages (docs/design.md §4.2 users: voters, viewers, operators), embedded at build time from
//! `src/serve/web/` by `build.rs`: one binary, nothing to deploy beside it, no CDN.

use votes_net::BoxBody;
use votes_net::bytes::Bytes;
use votes_net::http::{Response, StatusCode, header};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/web_files.rs"));
}

/// Scripts and styles come only from this origin; no inline code, so an injected string in a
/// page can never run.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
                   script-src 'self'; worker-src 'self'; connect-src 'self'; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    }
}

fn find(name: &str) -> Option<&'static [u8]> {
    embedded::FILES
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| embedded::FILES[i].1)
}

/// The embedded file `name` (as under `/static/`), or `None`.
pub fn file(name: &str) -> Option<Response<BoxBody>> {
    let bytes = find(name)?;
    let html = name.ends_with(".html");
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type(name))
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        // Pages and assets change only with the binary; a short cache keeps upgrades visible.
        .header(
            header::CACHE_CONTROL,
            if html {
                "no-cache"
            } else {
                "public, max-age=300"
            },
        );
    if html {
        builder = builder
            .header("content-security-policy", CSP)
            .header("x-frame-options", "DENY");
    }
    Some(
        builder
            .body(BoxBody::full(Bytes::from_static(bytes)))
            .expect("static headers are valid"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_for_lookup() {
        assert!(embedded::FILES.windows(2).all(|w| w[0].0 < w[1].0));
        for (name, _) in embedded::FILES {
            assert!(file(name).is_some(), "{name}");
        }
        assert!(file("../Cargo.toml").is_none());
        assert!(file("nope.html").is_none());
    }

    #[test]
    fn pages_are_embedded_with_their_policy() {
        for page in ["index.html", "results.html", "admin.html"] {
            let resp = file(page).unwrap_or_else(|| panic!("{page} is embedded"));
            assert!(resp.headers().contains_key("content-security-policy"));
        }
    }
}
