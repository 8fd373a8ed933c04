//! The route tables of the public and admin listeners: which path names which resource, and
//! which methods each answers. Dispatch matches on a route (`app.rs`), and a method a route
//! does not list gets `405` with those methods in `Allow`, so the two cannot drift apart.
//! `/openapi.json` and `/admin/openapi.json` describe the same routes: a unit test of
//! `openapi.rs` compares every (path, method) of these tables with the documents, and
//! `tests/openapi.rs` checks every path of them against the running server.

use votes_net::http::Method;

const GET: &[Method] = &[Method::GET];
const POST: &[Method] = &[Method::POST];
const PATCH: &[Method] = &[Method::PATCH];
const GET_POST: &[Method] = &[Method::GET, Method::POST];
/// A WebSocket opens with a GET (HTTP/1.1 Upgrade) or a CONNECT (h2, RFC 8441).
const GET_CONNECT: &[Method] = &[Method::GET, Method::CONNECT];

/// Writes a route table's `of` (a `match` on the path's segments, one arm per route) and, for
/// tests, `PATTERNS`: the same arms' segment patterns as written (a quoted literal, or the
/// name a parameter binds; a leading `_` only silences an unused binding). Both come from one
/// list, so a test can hold the API documents to what dispatch really matches: a route added
/// here without its document entry, or documented without a route, fails
/// `openapi::tests::every_route_is_documented_and_every_documented_route_is_routed`.
macro_rules! route_table {
    (
        $(#[$doc:meta])*
        fn of($segments:ident: $segments_ty:ty $(, $arg:ident: $arg_ty:ty)*);
        $( [$($seg:tt),*] $(if $guard:expr)? => $route:expr, )*
    ) => {
        $(#[$doc])*
        pub fn of($segments: $segments_ty $(, $arg: $arg_ty)*) -> Option<Self> {
            Some(match *$segments {
                $( [$($seg),*] $(if $guard)? => $route, )*
                _ => return None,
            })
        }

        /// The segment patterns of `of`'s arms, in order.
        #[cfg(test)]
        pub const PATTERNS: &'static [&'static [&'static str]] =
            &[$( &[$(stringify!($seg)),*], )*];
    };
}

/// A resource of the public listener, with its path parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Public<'a> {
    Healthz,
    Readyz,
    OpenApi,
    /// The voter page.
    Index,
    /// The results page of an election.
    ResultsPage,
    Static {
        name: &'a str,
    },
    /// Development login: only where `--dev-login` is on.
    DevLogin,
    Elections,
    Election {
        id: &'a str,
    },
    Results {
        id: &'a str,
    },
    ResultsStream {
        id: &'a str,
    },
    ResultsWebSocket {
        id: &'a str,
    },
    Receipt {
        id: &'a str,
        receipt: &'a str,
    },
    Challenge {
        id: &'a str,
    },
    MyVote {
        id: &'a str,
    },
    Votes {
        id: &'a str,
    },
}

impl<'a> Public<'a> {
    route_table! {
        /// The resource `segments` (the path split on `/`, empty parts dropped) names.
        fn of(segments: &[&'a str], dev_login: bool);
        ["healthz"] => Self::Healthz,
        ["readyz"] => Self::Readyz,
        ["openapi.json"] => Self::OpenApi,
        [] => Self::Index,
        ["results", _id] => Self::ResultsPage,
        ["static", name] => Self::Static { name },
        ["v1", "dev", "login"] if dev_login => Self::DevLogin,
        ["v1", "elections"] => Self::Elections,
        ["v1", "elections", id] => Self::Election { id },
        ["v1", "elections", id, "results"] => Self::Results { id },
        ["v1", "elections", id, "results", "stream"] => Self::ResultsStream { id },
        ["v1", "elections", id, "results", "ws"] => Self::ResultsWebSocket { id },
        ["v1", "elections", id, "receipts", receipt] => Self::Receipt { id, receipt },
        ["v1", "elections", id, "challenge"] => Self::Challenge { id },
        ["v1", "elections", id, "votes", "me"] => Self::MyVote { id },
        ["v1", "elections", id, "votes"] => Self::Votes { id },
    }

    /// The methods the resource answers; any other gets `405` naming these.
    pub fn methods(self) -> &'static [Method] {
        match self {
            Self::DevLogin => GET_POST,
            Self::ResultsWebSocket { .. } => GET_CONNECT,
            Self::Votes { .. } => POST,
            _ => GET,
        }
    }

    /// Health probes: never rate-limited (a balancer polls them from one address).
    pub fn is_probe(self) -> bool {
        matches!(self, Self::Healthz | Self::Readyz)
    }
}

/// The state an admin transition moves an election to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Open,
    Close,
}

/// A resource of the admin listener, with its path parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admin<'a> {
    Healthz,
    /// The admin page.
    Page,
    Static {
        name: &'a str,
    },
    OpenApi,
    Metrics,
    Elections,
    Stats,
    Fleet,
    Election {
        id: &'a str,
    },
    Transition {
        id: &'a str,
        to: Transition,
    },
}

impl<'a> Admin<'a> {
    route_table! {
        /// The resource `segments` names.
        fn of(segments: &[&'a str]);
        ["healthz"] => Self::Healthz,
        ["admin"] => Self::Page,
        ["static", name] => Self::Static { name },
        ["admin", "openapi.json"] => Self::OpenApi,
        ["metrics"] => Self::Metrics,
        ["admin", "v1", "elections"] => Self::Elections,
        ["admin", "v1", "stats"] => Self::Stats,
        ["admin", "v1", "fleet"] => Self::Fleet,
        ["admin", "v1", "elections", id] => Self::Election { id },
        ["admin", "v1", "elections", id, "open"] => Self::Transition {
            id,
            to: Transition::Open,
        },
        ["admin", "v1", "elections", id, "close"] => Self::Transition {
            id,
            to: Transition::Close,
        },
    }

    /// The methods the resource answers; any other gets `405` naming these.
    pub fn methods(self) -> &'static [Method] {
        match self {
            Self::Elections => GET_POST,
            Self::Election { .. } => PATCH,
            Self::Transition { .. } => POST,
            _ => GET,
        }
    }

    /// Answered without the admin token: a probe, and the page and its description, which
    /// hold no secret (every call the page makes carries the token).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            Self::Healthz | Self::Page | Self::Static { .. } | Self::OpenApi
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(path: &str) -> Vec<&str> {
        path.split('/').filter(|s| !s.is_empty()).collect()
    }

    #[test]
    fn each_path_names_one_resource_with_its_parameters() {
        let public = |p: &'static str| Public::of(&segments(p), false);
        assert_eq!(public("/"), Some(Public::Index));
        assert_eq!(
            public("/v1/elections/e1/receipts/ab"),
            Some(Public::Receipt {
                id: "e1",
                receipt: "ab"
            })
        );
        assert_eq!(
            public("/v1/elections/e1/votes/me"),
            Some(Public::MyVote { id: "e1" })
        );
        assert_eq!(
            public("/v1/elections/e1/votes"),
            Some(Public::Votes { id: "e1" })
        );
        assert_eq!(public("/v1/dev/login"), None, "only with --dev-login");
        assert_eq!(
            Public::of(&segments("/v1/dev/login"), true),
            Some(Public::DevLogin)
        );
        assert_eq!(public("/v2/elections"), None);
        assert_eq!(
            Admin::of(&segments("/admin/v1/elections/e1/close")),
            Some(Admin::Transition {
                id: "e1",
                to: Transition::Close
            })
        );
        assert_eq!(Admin::of(&segments("/admin/v1/elections/e1/pause")), None);
    }

    #[test]
    fn every_resource_answers_a_method_and_only_probes_skip_the_limits() {
        let paths = [
            "/healthz",
            "/readyz",
            "/openapi.json",
            "/",
            "/results/e1",
            "/static/app.js",
            "/v1/dev/login",
            "/v1/elections",
            "/v1/elections/e1",
            "/v1/elections/e1/results",
            "/v1/elections/e1/results/stream",
            "/v1/elections/e1/results/ws",
            "/v1/elections/e1/receipts/ab",
            "/v1/elections/e1/challenge",
            "/v1/elections/e1/votes/me",
            "/v1/elections/e1/votes",
        ];
        for path in paths {
            let route = Public::of(&segments(path), true).expect(path);
            assert!(!route.methods().is_empty(), "{path}");
            assert_eq!(route.is_probe(), path.ends_with("z"), "{path}");
        }
        let open = [
            "/healthz",
            "/admin",
            "/static/app.js",
            "/admin/openapi.json",
        ];
        for path in open {
            assert!(Admin::of(&segments(path)).expect(path).is_open(), "{path}");
        }
        for path in ["/metrics", "/admin/v1/stats", "/admin/v1/elections/e1"] {
            assert!(!Admin::of(&segments(path)).expect(path).is_open(), "{path}");
        }
    }
}
