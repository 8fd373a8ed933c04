//! The API descriptions (`GET /openapi.json`, `GET /admin/openapi.json`, docs/design.md §7) against a
//! real node: every answer the probes provoke is documented, with its status, media type,
//! required headers and a body valid under the documented schema; every documented answer is
//! provoked here or named below with the test that provokes it; every method a documented
//! path does not list answers 405 with the right `Allow`. Then an API fuzzer (schemathesis,
//! PyPI) driven by the same documents runs a bounded number of cases against another node:
//! no 5xx, no undocumented status, no answer that breaks its schema.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::runtime;
use common::serve::{ADMIN_TOKEN, Serve, TestClient, open_election, token, wait_final};
use serde_json::{Value, json};

/// Documented answers no probe here provokes (they need a fault), with where they are shown.
const PROVOKED_ELSEWHERE: &[(&str, &str, u16, &str)] = &[
    (
        "/readyz",
        "get",
        503,
        "tests/write_path.rs: a fenced node reports not ready",
    ),
    (
        "/v1/elections/{id}/votes",
        "post",
        503,
        "tests/write_path.rs: a fenced owner answers 503",
    ),
    (
        "/v1/elections/{id}/votes/me",
        "get",
        503,
        "tests/source_of_truth.rs: DynamoDB throttling every read",
    ),
    (
        "/v1/elections/{id}/receipts/{receipt}",
        "get",
        503,
        "needs Redis down under a node other tests share; the same answer as /votes/me's",
    ),
    (
        "/admin/v1/elections",
        "post",
        503,
        "needs the elections topic to refuse a write (a broker outage)",
    ),
    (
        "/admin/v1/elections/{id}/open",
        "post",
        503,
        "needs the elections topic to refuse a write (a broker outage)",
    ),
    (
        "/admin/v1/elections/{id}/close",
        "post",
        503,
        "needs the elections topic to refuse a write (a broker outage)",
    ),
    (
        "/admin/v1/elections/{id}",
        "patch",
        503,
        "needs the elections topic to refuse a write (a broker outage)",
    ),
];

/// The rate limiter answers before any route (one code path for every public operation):
/// tests/serve_api.rs provokes its 429 (`requests_over_the_rate_limit_get_429_with_retry_after`)
/// and the probes here run with the limits off.
const RATE_LIMITED: u16 = 429;

/// The methods the route check tries on every documented path.
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Listener {
    Public,
    Admin,
}

/// One API description, and checks of answers against it.
struct Description {
    doc: Value,
    listener: Listener,
}

/// An answer as the probes see it.
struct Seen {
    status: u16,
    headers: std::collections::HashMap<String, String>,
    body: Value,
}

impl Description {
    /// The documented path template that `path` instantiates (the one with the most literal
    /// segments when several do).
    fn template(&self, path: &str) -> Option<String> {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        self.doc["paths"]
            .as_object()?
            .keys()
            .filter_map(|t| {
                let tsegs: Vec<&str> = t.split('/').filter(|s| !s.is_empty()).collect();
                let fits = tsegs.len() == segs.len()
                    && tsegs
                        .iter()
                        .zip(&segs)
                        .all(|(t, s)| t == s || (t.starts_with('{') && !s.is_empty()));
                fits.then(|| (tsegs.iter().filter(|t| !t.starts_with('{')).count(), t))
            })
            .max()
            .map(|(_, t)| t.clone())
    }

    fn methods(&self, template: &str) -> BTreeSet<String> {
        self.doc["paths"][template]
            .as_object()
            .map(|item| {
                item.keys()
                    .filter(|k| METHODS.iter().any(|m| m.eq_ignore_ascii_case(k)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every documented (path, method, status).
    fn answers(&self) -> BTreeSet<(String, String, u16)> {
        let mut out = BTreeSet::new();
        for (path, _) in self.doc["paths"].as_object().expect("paths") {
            for method in self.methods(path) {
                let responses = self.doc["paths"][path][&method]["responses"]
                    .as_object()
                    .expect("responses");
                for status in responses.keys() {
                    out.insert((
                        path.clone(),
                        method.clone(),
                        status.parse().expect("status"),
                    ));
                }
            }
        }
        out
    }

    /// Checks one answer to `method path` against the description; returns its
    /// (template, method, status).
    fn check(&self, method: &str, path: &str, seen: &Seen) -> (String, String, u16) {
        let what = format!("{method} {path} → {}: {}", seen.status, seen.body);
        let template = self
            .template(path)
            .unwrap_or_else(|| panic!("undocumented path: {what}"));
        let m = method.to_ascii_lowercase();
        let op = &self.doc["paths"][&template][&m];
        assert!(op.is_object(), "undocumented method: {what}");
        let doc = &op["responses"][seen.status.to_string()];
        assert!(doc.is_object(), "undocumented status: {what}");
        for (name, header) in doc["headers"].as_object().into_iter().flatten() {
            let header = self.resolve(header);
            let value = seen.headers.get(&name.to_ascii_lowercase());
            if header["required"] == true {
                assert!(value.is_some(), "{name} missing: {what}");
            }
            if let Some(v) = value {
                let as_json = v
                    .parse::<u64>()
                    .map(Value::from)
                    .unwrap_or_else(|_| Value::from(v.clone()));
                self.validate(
                    &header["schema"],
                    &as_json,
                    &format!("header {name} of {what}"),
                );
            }
        }
        match doc["content"].as_object() {
            None => assert!(
                seen.body.is_null() || seen.body["raw"] == "",
                "a body where none is documented: {what}"
            ),
            Some(content) => {
                let media = seen
                    .headers
                    .get("content-type")
                    .map(|c| c.split(';').next().unwrap_or("").trim().to_owned())
                    .unwrap_or_else(|| panic!("no content-type: {what}"));
                let entry = content
                    .get(&media)
                    .or_else(|| content.get("*/*"))
                    .unwrap_or_else(|| panic!("undocumented media type {media}: {what}"));
                if media == "application/json" {
                    self.validate(&entry["schema"], &seen.body, &what);
                }
            }
        }
        (template, m, seen.status)
    }

    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v["$ref"].as_str() {
            Some(r) => self
                .doc
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling {r}")),
            None => v,
        }
    }

    /// Validates `value` against `schema` (JSON Schema 2020-12, OpenAPI 3.1's dialect) with the
    /// document's components in reach of its `$ref`s.
    fn validate(&self, schema: &Value, value: &Value, what: &str) {
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "allOf": [schema],
            "components": self.doc["components"],
        });
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&root)
            .unwrap_or_else(|e| panic!("the schema for {what} does not compile: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{what}\nbreaks its schema: {errors:#?}");
    }
}

/// The probes' view of one node: both listeners and their descriptions.
struct Probe<'a> {
    serve: &'a Serve,
    client: TestClient,
    public: Description,
    admin: Description,
    covered: BTreeMap<Listener, BTreeSet<(String, String, u16)>>,
}

impl Probe<'_> {
    fn description(&self, l: Listener) -> &Description {
        match l {
            Listener::Public => &self.public,
            Listener::Admin => &self.admin,
        }
    }

    /// Sends a request, checks its answer is `expect` and documented; returns it.
    async fn send(
        &mut self,
        l: Listener,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
        expect: u16,
    ) -> Seen {
        let url = match l {
            Listener::Public => self.serve.url(path),
            Listener::Admin => self.serve.admin_url(path),
        };
        let (status, headers, body) = self
            .client
            .send(method, &url, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let seen = Seen {
            status,
            headers,
            body,
        };
        assert_eq!(status, expect, "{method} {path}: {}", seen.body);
        let key = self.description(l).check(method, path, &seen);
        self.covered.entry(l).or_default().insert(key);
        seen
    }

    async fn public(&mut self, method: &str, path: &str, expect: u16) -> Seen {
        self.send(Listener::Public, method, path, &[], Bytes::new(), expect)
            .await
    }

    async fn voter(
        &mut self,
        voter: u64,
        method: &str,
        path: &str,
        body: &str,
        expect: u16,
    ) -> Seen {
        let token = token(voter);
        self.json_request(Listener::Public, &token, method, path, &[], body, expect)
            .await
    }

    async fn admin(&mut self, method: &str, path: &str, body: &str, expect: u16) -> Seen {
        self.json_request(
            Listener::Admin,
            ADMIN_TOKEN,
            method,
            path,
            &[],
            body,
            expect,
        )
        .await
    }

    /// An admin write conditioned on the version the caller saw (`If-Match`).
    async fn admin_if_match(
        &mut self,
        method: &str,
        path: &str,
        if_match: &str,
        body: &str,
        expect: u16,
    ) -> Seen {
        let extra = [("if-match", if_match)];
        self.json_request(
            Listener::Admin,
            ADMIN_TOKEN,
            method,
            path,
            &extra,
            body,
            expect,
        )
        .await
    }

    /// A JSON request with `bearer` as its token, and `extra` headers.
    #[allow(clippy::too_many_arguments)]
    async fn json_request(
        &mut self,
        l: Listener,
        bearer: &str,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: &str,
        expect: u16,
    ) -> Seen {
        let auth = format!("Bearer {bearer}");
        let mut headers = vec![
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        headers.extend_from_slice(extra);
        self.send(
            l,
            method,
            path,
            &headers,
            Bytes::from(body.to_owned()),
            expect,
        )
        .await
    }
}

async fn fetch_description(client: &TestClient, url: &str, l: Listener) -> Description {
    let (status, body) = client.get(url).await.expect("the description answers");
    assert_eq!(status, 200, "{url}: {body}");
    assert_eq!(body["openapi"], "3.1.0", "{url}");
    Description {
        doc: body,
        listener: l,
    }
}

#[test]
fn every_answer_is_documented_and_every_documented_answer_is_given() {
    let mut serve = Serve::init_and_start_env("openapi", 2, 1, &[("VOTES_DEV_LOGIN", "true")]);
    let prefix = serve.prefix.clone();
    runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &serve, "plain", &["yes", "no"], 0).await;
        open_election(&client, &serve, "guarded", &["yes", "no"], 4).await;
        let public = fetch_description(&client, &serve.url("/openapi.json"), Listener::Public).await;
        let admin = fetch_description(&client, &serve.admin_url("/admin/openapi.json"), Listener::Admin).await;
        assert_eq!(public.listener, Listener::Public);
        assert_eq!(admin.listener, Listener::Admin);
        let mut p = Probe {
            serve: &serve,
            client,
            public,
            admin,
            covered: BTreeMap::new(),
        };

        // The voter API, before any result is official.
        p.public("GET", "/healthz", 200).await;
        p.public("GET", "/readyz", 200).await;
        p.public("GET", "/openapi.json", 200).await;
        p.public("GET", "/v1/elections", 200).await;
        p.public("GET", "/v1/elections/plain", 200).await;
        p.public("GET", "/v1/elections/nope", 404).await;
        p.voter(1, "GET", "/v1/elections/guarded/challenge", "", 200).await;
        p.public("GET", "/v1/elections/guarded/challenge", 401).await;
        p.voter(1, "GET", "/v1/elections/nope/challenge", "", 404).await;
        let votes = "/v1/elections/plain/votes";
        let accepted = p.voter(1, "POST", votes, r#"{"option":"yes"}"#, 202).await;
        let receipt = accepted.body["receipt"].as_str().expect("a receipt").to_owned();
        p.voter(1, "POST", votes, r#"{"option":"no"}"#, 409).await;
        p.voter(2, "POST", votes, r#"{"option":"#, 400).await;
        p.send(Listener::Public, "POST", votes, &[("content-type", "application/json")], r#"{"option":"yes"}"#, 401)
            .await;
        p.voter(2, "POST", "/v1/elections/guarded/votes", r#"{"option":"yes"}"#, 403)
            .await;
        p.voter(2, "POST", "/v1/elections/nope/votes", r#"{"option":"yes"}"#, 404)
            .await;
        let big = format!(r#"{{"option":"yes","pad":"{}"}}"#, "x".repeat(2048));
        p.voter(2, "POST", votes, &big, 413).await;
        let auth = format!("Bearer {}", token(2));
        p.send(
            Listener::Public,
            "POST",
            votes,
            &[("authorization", &auth), ("content-type", "text/plain")],
            r#"{"option":"yes"}"#,
            415,
        )
        .await;
        p.voter(2, "POST", votes, r#"{"option":"maybe"}"#, 422).await;
        let results = p.public("GET", "/v1/elections/plain/results", 200).await;
        let etag = results.headers["etag"].clone();
        p.send(
            Listener::Public,
            "GET",
            "/v1/elections/plain/results",
            &[("if-none-match", &etag)],
            Bytes::new(),
            304,
        )
        .await;
        p.public("GET", "/v1/elections/nope/results", 404).await;
        p.public("GET", "/v1/elections/nope/results/stream", 404).await;
        let ws = [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        let plain_ws = "/v1/elections/plain/results/ws";
        p.send(Listener::Public, "GET", plain_ws, &ws, Bytes::new(), 101).await;
        p.public("GET", plain_ws, 400).await;
        p.send(Listener::Public, "GET", "/v1/elections/nope/results/ws", &ws, Bytes::new(), 404)
            .await;
        p.voter(2, "GET", "/v1/elections/plain/votes/me", "", 200).await;
        p.public("GET", "/v1/elections/plain/votes/me", 401).await;
        p.voter(2, "GET", "/v1/elections/nope/votes/me", "", 404).await;
        p.public("GET", "/v1/elections/plain/receipts/not-hex", 400).await;
        p.public("GET", &format!("/v1/elections/plain/receipts/{receipt}"), 404)
            .await;
        p.public("GET", "/v1/dev/login", 200).await;
        let login = |body: &str| (body.to_owned(), [("content-type", "application/json")]);
        let (b, h) = login(r#"{"voter":"7"}"#);
        p.send(Listener::Public, "POST", "/v1/dev/login", &h, b, 200).await;
        let (b, h) = login(r#"{"voter":"seven"}"#);
        p.send(Listener::Public, "POST", "/v1/dev/login", &h, b, 400).await;
        let (b, h) = login(&format!(r#"{{"voter":"{}"}}"#, "7".repeat(17 * 1024)));
        p.send(Listener::Public, "POST", "/v1/dev/login", &h, b, 413).await;
        p.send(Listener::Public, "POST", "/v1/dev/login", &[("content-type", "text/plain")], "{}", 415)
            .await;
        p.public("GET", "/", 200).await;
        p.public("GET", "/results/plain", 200).await;
        p.public("GET", "/static/style.css", 200).await;
        p.public("GET", "/static/nope.js", 404).await;

        // The admin API.
        p.admin("GET", "/healthz", "", 200).await;
        p.admin("GET", "/metrics", "", 200).await;
        p.send(Listener::Admin, "GET", "/metrics", &[], Bytes::new(), 401).await;
        p.admin("GET", "/admin", "", 200).await;
        p.admin("GET", "/static/admin.js", "", 200).await;
        p.admin("GET", "/static/nope.js", "", 404).await;
        p.admin("GET", "/admin/openapi.json", "", 200).await;
        p.admin("GET", "/admin/v1/elections", "", 200).await;
        p.send(Listener::Admin, "GET", "/admin/v1/elections", &[], Bytes::new(), 401)
            .await;
        let made = r#"{"id":"later","title":"Later","options":[{"id":"a","label":"A"},{"id":"b","label":"B"}]}"#;
        let created = p.admin("POST", "/admin/v1/elections", made, 201).await;
        assert_eq!(created.body["version"], 1, "{}", created.body);
        p.admin("POST", "/admin/v1/elections", made, 409).await;
        p.admin(
            "POST",
            "/admin/v1/elections",
            r#"{"id":"one","title":"One","options":[{"id":"a","label":"A"}]}"#,
            400,
        )
        .await;
        p.admin("POST", "/admin/v1/elections", &"x".repeat(17 * 1024), 413)
            .await;
        p.send(
            Listener::Admin,
            "POST",
            "/admin/v1/elections",
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}")), ("content-type", "text/plain")],
            made.to_owned(),
            415,
        )
        .await;
        p.send(Listener::Admin, "POST", "/admin/v1/elections", &[("content-type", "application/json")], made.to_owned(), 401)
            .await;
        let patch = "/admin/v1/elections/later";
        p.admin_if_match("PATCH", patch, "1", r#"{"pow_difficulty":2}"#, 200)
            .await;
        p.admin_if_match("PATCH", patch, "1", r#"{"pow_difficulty":3}"#, 409)
            .await;
        p.admin_if_match("PATCH", patch, "one", r#"{"pow_difficulty":3}"#, 400)
            .await;
        p.admin("PATCH", patch, r#"{"pow_difficulty":3,"x":1}"#, 400).await;
        p.admin("PATCH", "/admin/v1/elections/nope", r#"{"pow_difficulty":3}"#, 404)
            .await;
        p.admin("PATCH", patch, &"x".repeat(17 * 1024), 413).await;
        p.send(Listener::Admin, "PATCH", patch, &[("content-type", "application/json")], r#"{"pow_difficulty":3}"#, 401)
            .await;
        p.send(
            Listener::Admin,
            "PATCH",
            patch,
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}")), ("content-type", "text/plain")],
            r#"{"pow_difficulty":3}"#,
            415,
        )
        .await;
        for (action, then) in [("open", "close"), ("close", "open")] {
            let path = format!("/admin/v1/elections/later/{action}");
            p.admin_if_match("POST", &path, "x", "", 400).await;
            p.admin_if_match("POST", &path, "\"1\"", "", 409).await;
            p.send(Listener::Admin, "POST", &path, &[], Bytes::new(), 401).await;
            p.admin("POST", &format!("/admin/v1/elections/nope/{action}"), "", 404)
                .await;
            // open then close: each once, then the way back is refused.
            p.admin("POST", &path, "", 200).await;
            if then == "open" {
                p.admin("POST", &format!("/admin/v1/elections/later/{then}"), "", 409)
                    .await;
            }
        }
        p.admin("GET", "/admin/v1/stats", "", 200).await;
        p.send(Listener::Admin, "GET", "/admin/v1/stats", &[], Bytes::new(), 401).await;
        p.admin("GET", "/admin/v1/fleet", "", 200).await;
        p.send(Listener::Admin, "GET", "/admin/v1/fleet", &[], Bytes::new(), 401).await;

        // The official result: the persister writes the vote, the close's recount agrees.
        let out = common::votes_command(&prefix, &["persist", "--exit-when-caught-up"])
            .output()
            .expect("votes persist runs");
        common::assert_success(&out, "votes persist");
        p.voter(1, "GET", "/v1/elections/plain/votes/me", "", 200).await;
        p.admin("POST", "/admin/v1/elections/plain/close", "", 200).await;
        wait_final(&p.client, &serve, "plain", Duration::from_secs(120)).await;
        let proof = p
            .public("GET", &format!("/v1/elections/plain/receipts/{receipt}"), 200)
            .await;
        assert_eq!(proof.body["leaf_hash"], receipt.as_str());
        p.public("GET", "/v1/elections/plain/results/stream", 200).await;
        p.send(
            Listener::Public,
            "GET",
            "/v1/elections/plain/results/stream",
            &[("last-event-id", "final")],
            Bytes::new(),
            204,
        )
        .await;
        p.voter(3, "POST", votes, r#"{"option":"yes"}"#, 409).await;

        // Every documented answer was given, or is named with where it is.
        for l in [Listener::Public, Listener::Admin] {
            let d = p.description(l);
            let covered = p.covered.get(&l).cloned().unwrap_or_default();
            let mut missing: Vec<_> = d
                .answers()
                .into_iter()
                .filter(|a| !covered.contains(a))
                .filter(|(path, method, status)| {
                    *status != RATE_LIMITED
                        && !PROVOKED_ELSEWHERE
                            .iter()
                            .any(|(p, m, s, _)| p == path && m == method && s == status)
                })
                .collect();
            missing.sort();
            assert!(missing.is_empty(), "{l:?}: documented, never given: {missing:#?}");
        }
        for (path, method, status, _) in PROVOKED_ELSEWHERE {
            let l = if path.starts_with("/admin/") { Listener::Admin } else { Listener::Public };
            let key = (path.to_string(), method.to_string(), *status);
            assert!(p.description(l).answers().contains(&key), "{key:?} is not documented any more");
            assert!(!p.covered.get(&l).is_some_and(|c| c.contains(&key)), "{key:?} is provoked here now: drop it from PROVOKED_ELSEWHERE");
        }

        // Every route the server answers is documented: a method a path does not list gets 405
        // and the `Allow` the description implies, an unknown path 404.
        for l in [Listener::Public, Listener::Admin] {
            let paths: Vec<String> = p.description(l).doc["paths"].as_object().unwrap().keys().cloned().collect();
            for template in paths {
                let documented = p.description(l).methods(&template);
                let mut allow: Vec<String> = METHODS
                    .iter()
                    .filter(|m| documented.contains(&m.to_ascii_lowercase()))
                    .map(|m| m.to_string())
                    .collect();
                // OpenAPI has no CONNECT operation: the WebSocket's h2 handshake (RFC 8441) is
                // in the GET's description.
                if template.ends_with("/results/ws") {
                    allow.push("CONNECT".to_owned());
                }
                let path = template
                    .replace("{id}", "plain")
                    .replace("{receipt}", &receipt)
                    .replace("{name}", "style.css");
                for method in METHODS.iter().filter(|m| !documented.contains(&m.to_ascii_lowercase())) {
                    let url = match l {
                        Listener::Public => serve.url(&path),
                        Listener::Admin => serve.admin_url(&path),
                    };
                    let auth = format!("Bearer {ADMIN_TOKEN}");
                    let (status, headers, body) = p
                        .client
                        .send(method, &url, &[("authorization", &auth)], Bytes::new())
                        .await
                        .unwrap();
                    assert_eq!(status, 405, "{l:?} {method} {path}: {body}");
                    assert_eq!(headers.get("allow").cloned().unwrap_or_default(), allow.join(", "), "{l:?} {method} {path}");
                    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
                }
            }
        }
        for path in ["/v2/elections", "/v1/elections/plain/votes/all", "/static", "/openapi.yaml"] {
            let (status, body) = p.client.get(&serve.url(path)).await.unwrap();
            assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")), "{path}");
        }
    });
    serve.stop(Duration::from_secs(30));
}

/// The fuzzer's seed: `VOTES_API_FUZZ_SEED`, else the day (runs explore new cases).
fn fuzz_seed() -> u64 {
    common::env_number("VOTES_API_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 86_400
    })
}

/// Cases per operation and phase: bounded, so the run is too.
const FUZZ_CASES: u32 = 25;

#[test]
fn the_api_fuzzer_finds_no_server_error_and_no_undocumented_answer() {
    let st = {
        let out = std::process::Command::new(common::repo_root().join("scripts/schemathesis.sh"))
            .output()
            .expect("scripts/schemathesis.sh runs");
        common::assert_success(
            &out,
            "schemathesis (the API fuzzer, from PyPI) could not be installed",
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let mut serve = Serve::init_and_start_env("api-fuzz", 2, 1, &[("VOTES_DEV_LOGIN", "true")]);
    let voter_token = runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &serve, "fuzz", &["yes", "no"], 0).await;
        open_election(&client, &serve, "fuzz-pow", &["yes", "no"], 4).await;
        token(42)
    });
    let seed = fuzz_seed();
    let out_dir = common::repo_root().join("target/api-fuzz");
    std::fs::create_dir_all(&out_dir).unwrap();
    eprintln!(
        "api fuzz: seed {seed} (VOTES_API_FUZZ_SEED={seed} repeats it); output under {}",
        out_dir.display()
    );
    let runs = [
        (
            "public",
            serve.url("/openapi.json"),
            format!("Authorization: Bearer {voter_token}"),
            // An open election's streams never end: their answers are checked in the test above.
            vec![
                "--exclude-path",
                "/v1/elections/{id}/results/stream",
                "--exclude-path",
                "/v1/elections/{id}/results/ws",
            ],
        ),
        (
            "admin",
            serve.admin_url("/admin/openapi.json"),
            format!("Authorization: Bearer {ADMIN_TOKEN}"),
            vec![],
        ),
    ];
    for (api, url, auth, extra) in runs {
        let config = common::repo_root().join(format!("tests/api-fuzz/{api}.toml"));
        let log = out_dir.join(format!("{api}-{seed}.txt"));
        let cases = FUZZ_CASES.to_string();
        let seed_arg = seed.to_string();
        let mut args = vec![
            "--no-color",
            "--config-file",
            config.to_str().unwrap(),
            "run",
            &url,
            "-H",
            &auth,
            "--checks",
            "all",
            "--max-examples",
            &cases,
            "--seed",
            &seed_arg,
            "--request-timeout",
            "60",
        ];
        args.extend(extra);
        let started = Instant::now();
        // Its example cache goes where its output does, not into the checkout.
        let out = std::process::Command::new(&st)
            .args(&args)
            .current_dir(&out_dir)
            .output()
            .expect("schemathesis runs");
        let text = common::output_text(&out);
        std::fs::write(&log, &text).unwrap();
        let summary: Vec<&str> = text.lines().rev().take(14).collect();
        eprintln!(
            "api fuzz {api}: {:.1} s, {}",
            started.elapsed().as_secs_f64(),
            summary.iter().rev().cloned().collect::<Vec<_>>().join("\n")
        );
        assert!(
            out.status.success(),
            "the {api} API fuzz (seed {seed}) found failures; all of it in {}:\n{}",
            log.display(),
            text.lines()
                .rev()
                .take(120)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(text.contains(" passed"), "schemathesis ran no case: {text}");
    }
    let log = serve.log_text();
    assert!(
        !log.contains("panicked"),
        "the node panicked under the fuzzer:\n{log}"
    );
    serve.stop(Duration::from_secs(30));
}
