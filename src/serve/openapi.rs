//! The API descriptions (OpenAPI 3.1): `GET /openapi.json` on the public listeners and
//! `GET /admin/openapi.json` on the admin listener. Built once from the same pieces (the error
//! envelope, the codes each status carries, the election shapes), so the two documents cannot
//! disagree on what they share. `tests/openapi.rs` holds the server to them and
//! `scripts/api-fuzz.sh` drives a fuzzer from them.

use std::sync::OnceLock;

use serde_json::{Value, json};
use votes_core::ErrorCode;
use votes_core::election::{LABEL_MAX, OPTIONS_MAX, OPTIONS_MIN, POW_DIFFICULTY_MAX, TITLE_MAX};

/// The public document, rendered once.
pub fn public() -> &'static [u8] {
    static DOC: OnceLock<Vec<u8>> = OnceLock::new();
    DOC.get_or_init(|| serde_json::to_vec_pretty(&public_doc()).expect("a document serializes"))
}

/// The admin document, rendered once.
pub fn admin() -> &'static [u8] {
    static DOC: OnceLock<Vec<u8>> = OnceLock::new();
    DOC.get_or_init(|| serde_json::to_vec_pretty(&admin_doc()).expect("a document serializes"))
}

const ELECTION_ID: &str = "^[a-z0-9-]{1,64}$";
const OPTION_ID: &str = "^[a-z0-9-]{1,32}$";
const HEX32: &str = "^[0-9a-f]{64}$";

fn info(title: &str, description: &str) -> Value {
    json!({
        "title": title,
        "version": env!("CARGO_PKG_VERSION"),
        "description": description,
        "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
    })
}

/// A `$ref` to a schema of this document.
fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn json_body(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

/// An error answer whose `code` is one of `codes` (the envelope of docs/design.md §4.2).
fn error_with(description: &str, codes: &[&str]) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {
            "allOf": [schema("Error")],
            "properties": {"error": {"properties": {"code": {"enum": codes}}}},
        }}},
    })
}

/// An error answer of the voter API's codes that the HTTP status `status` carries.
fn error_status(status: u16, description: &str) -> Value {
    let codes: Vec<&str> = ErrorCode::ALL
        .into_iter()
        .filter(|c| c.status() == status)
        .map(ErrorCode::as_str)
        .collect();
    assert!(!codes.is_empty(), "no error code carries {status}");
    let mut resp = error_with(description, &codes);
    if ErrorCode::ALL
        .into_iter()
        .any(|c| c.status() == status && c.needs_retry_after())
    {
        resp["headers"] = json!({"Retry-After": {"$ref": "#/components/headers/RetryAfter"}});
    }
    resp
}

/// The `{status: description}` map of error answers, as a `responses` object's entries.
fn errors(list: &[(u16, &str)]) -> serde_json::Map<String, Value> {
    list.iter()
        .map(|(status, d)| (status.to_string(), error_status(*status, d)))
        .collect()
}

fn responses(ok: &[(u16, Value)], errs: &[(u16, &str)]) -> Value {
    let mut map = errors(errs);
    for (status, v) in ok {
        map.insert(status.to_string(), v.clone());
    }
    Value::Object(map)
}

const RATE_LIMITED: (u16, &str) = (
    429,
    "This address or its network sent too many requests; retry after `Retry-After` seconds.",
);

fn path_param(name: &str, description: &str, pattern: &str) -> Value {
    json!({
        "name": name, "in": "path", "required": true, "description": description,
        "schema": {"type": "string", "pattern": pattern},
    })
}

/// The `{name}` of `/static/{name}`, with an asset that exists as its example.
fn asset_param() -> Value {
    let mut p = path_param("name", "An asset's file name.", "^[^/]+$");
    p["example"] = "style.css".into();
    p
}

fn election_param() -> Value {
    path_param("id", "The election's id.", ELECTION_ID)
}

fn html_page(summary: &str, operation: &str) -> Value {
    json!({
        "summary": summary,
        "operationId": operation,
        "security": [],
        "responses": {
            "200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}},
            "429": error_status(RATE_LIMITED.0, RATE_LIMITED.1),
        },
    })
}

/// Schemas both documents use.
fn shared_schemas() -> serde_json::Map<String, Value> {
    let codes: Vec<&str> = ErrorCode::ALL
        .into_iter()
        .map(ErrorCode::as_str)
        .chain(["conflict"])
        .collect();
    let schemas = json!({
        "Error": {
            "type": "object",
            "description": "Every error answer: a stable machine-readable code and a human message.",
            "required": ["error"],
            "additionalProperties": false,
            "properties": {"error": {
                "type": "object",
                "required": ["code", "message"],
                "additionalProperties": false,
                "properties": {
                    "code": {"type": "string", "enum": codes},
                    "message": {"type": "string"},
                },
            }},
        },
        "ElectionId": {"type": "string", "pattern": ELECTION_ID},
        "OptionId": {"type": "string", "pattern": OPTION_ID},
        "ElectionState": {
            "type": "string",
            "enum": ["draft", "open", "closed", "final"],
            "description": "Moves only forward: draft → open → closed → final (the recount's official result).",
        },
        "Option": {
            "type": "object",
            "required": ["id", "label"],
            "additionalProperties": false,
            "properties": {
                "id": schema("OptionId"),
                "label": {"type": "string", "minLength": 1, "maxLength": LABEL_MAX},
            },
        },
        "Status": {
            "type": "object",
            "required": ["status"],
            "additionalProperties": false,
            "properties": {"status": {"type": "string", "enum": ["ok", "ready"]}},
        },
    });
    let Value::Object(mut m) = schemas else {
        unreachable!("a JSON object literal");
    };
    m.insert("Election".into(), election_schema(json!({}), &[]));
    m
}

/// An election as the APIs show it, with `extra` properties (all required). Written out
/// whole for each shape: `additionalProperties: false` does not compose through `allOf`.
fn election_schema(extra: Value, description: &[&str]) -> Value {
    let mut properties = json!({
        "id": schema("ElectionId"),
        "title": {"type": "string", "minLength": 1, "maxLength": TITLE_MAX},
        "state": schema("ElectionState"),
        "options": {"type": "array", "minItems": OPTIONS_MIN, "maxItems": OPTIONS_MAX, "items": schema("Option")},
        "pow_difficulty": {"type": "integer", "minimum": 0, "maximum": POW_DIFFICULTY_MAX,
            "description": "Leading zero bits a vote's proof of work must reach; 0: no challenge."},
    });
    let mut required: Vec<String> = ["id", "title", "state", "options", "pow_difficulty"]
        .map(String::from)
        .to_vec();
    if let (Value::Object(props), Value::Object(extra)) = (&mut properties, extra) {
        for (k, v) in extra {
            required.push(k.clone());
            props.insert(k, v);
        }
    }
    let mut out = json!({
        "type": "object",
        "required": required,
        "additionalProperties": false,
        "properties": properties,
    });
    if !description.is_empty() {
        out["description"] = description.join(" ").into();
    }
    out
}

fn health_paths() -> Value {
    json!({
        "/healthz": {"get": {
            "summary": "Liveness: the process answers.",
            "operationId": "healthz",
            "security": [],
            "responses": {"200": json_body("Alive.", schema("Status"))},
        }},
    })
}

/// The public listener's document. Long because it is the document: every route, status and
/// body of docs/design.md §4.2 as JSON, checked against the server by tests/openapi.rs.
fn public_doc() -> Value {
    let mut schemas = shared_schemas();
    // Printable ASCII without spaces: logged and compared byte-wise without escaping.
    let pow_field = json!({"type": "string",
        "pattern": format!("^[!-~]{{1,{}}}$", votes_core::vote_body::POW_FIELD_MAX)});
    let extra = json!({
        "Challenge": {
            "type": "object",
            "required": ["challenge", "difficulty", "expires_at"],
            "additionalProperties": false,
            "properties": {
                "challenge": {"type": "string"},
                "difficulty": {"type": "integer", "minimum": 0, "maximum": POW_DIFFICULTY_MAX},
                "expires_at": {"type": "integer", "minimum": 0, "description": "Unix time in milliseconds."},
            },
        },
        "VoteRequest": {
            "type": "object",
            "required": ["option"],
            "additionalProperties": false,
            "properties": {
                "option": schema("OptionId"),
                "pow": {
                    "type": ["object", "null"],
                    "description": "A solved challenge; only when the election's difficulty is above 0.",
                    "required": ["challenge", "nonce"],
                    "additionalProperties": false,
                    "properties": {
                        "challenge": pow_field.clone(),
                        "nonce": pow_field,
                    },
                },
            },
        },
        "VoteAccepted": {
            "type": "object",
            "description": "Sent only once the vote's transaction committed to the log.",
            "required": ["status", "receipt", "partition", "offset"],
            "additionalProperties": false,
            "properties": {
                "status": {"const": "accepted"},
                "receipt": {"type": "string", "pattern": HEX32,
                    "description": "The hex leaf hash of the vote; checkable with GET …/receipts/{receipt} once the result is official."},
                "partition": {"type": "integer", "minimum": 0},
                "offset": {"type": "integer", "minimum": 0},
            },
        },
        "Results": {
            "type": "object",
            "required": ["election", "state", "totals", "total", "final", "as_of"],
            "additionalProperties": false,
            "properties": {
                "election": schema("ElectionId"),
                "state": schema("ElectionState"),
                "totals": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0},
                    "description": "Votes per option id; every option of the election appears."},
                "total": {"type": "integer", "minimum": 0},
                "final": {"type": "boolean", "description": "Whether these are the official, recounted totals."},
                "as_of": {"type": "integer", "minimum": 0, "description": "Unix time in milliseconds."},
                "merkle": {
                    "type": "object",
                    "description": "Once final: the root of the counted votes' Merkle tree (RFC 6962).",
                    "required": ["root", "tree_size"],
                    "additionalProperties": false,
                    "properties": {
                        "root": {"type": "string", "pattern": HEX32},
                        "tree_size": {"type": "integer", "minimum": 0},
                    },
                },
                "frontier": {
                    "type": "object",
                    "description": "Once final: per partition, the log offset the official count stops at.",
                    "additionalProperties": {"type": "integer", "minimum": 0},
                },
            },
        },
        "MyVote": {
            "type": "object",
            "required": ["voted"],
            "additionalProperties": false,
            "properties": {
                "voted": {"type": "boolean"},
                "option": {"type": ["string", "null"]},
                "receipt": {"type": ["string", "null"]},
            },
        },
        "Proof": {
            "type": "object",
            "required": ["leaf", "leaf_hash", "leaf_index", "tree_size", "root", "audit_path"],
            "additionalProperties": false,
            "properties": {
                "leaf": {
                    "type": "object",
                    "required": ["version", "election", "pseudonym", "option", "partition", "offset", "nonce"],
                    "additionalProperties": false,
                    "properties": {
                        "version": {"type": "integer", "minimum": 1},
                        "election": schema("ElectionId"),
                        "pseudonym": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                        "option": schema("OptionId"),
                        "partition": {"type": "integer", "minimum": 0},
                        "offset": {"type": "integer", "minimum": 0},
                        "nonce": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                    },
                },
                "leaf_hash": {"type": "string", "pattern": HEX32},
                "leaf_index": {"type": "integer", "minimum": 0},
                "tree_size": {"type": "integer", "minimum": 1},
                "root": {"type": "string", "pattern": HEX32},
                "audit_path": {"type": "array", "items": {"type": "string", "pattern": HEX32}},
            },
        },
        "DevLogin": {
            "type": "object",
            "required": ["voter"],
            "additionalProperties": false,
            "properties": {"voter": {"oneOf": [
                {"type": "string", "pattern": "^[0-9]{1,19}$"},
                {"type": "integer", "minimum": 0, "maximum": super::app::JS_SAFE_INTEGER_MAX},
            ]}},
        },
        "DevToken": {
            "type": "object",
            "required": ["token", "voter", "expires_at"],
            "additionalProperties": false,
            "properties": {
                "token": {"type": "string"},
                "voter": {"type": "string", "pattern": "^[0-9]{1,20}$"},
                "expires_at": {"type": "integer", "minimum": 0},
            },
        },
    });
    if let Value::Object(m) = extra {
        schemas.extend(m);
    }
    let voter = json!([{"voter": []}]);
    let mut paths = health_paths();
    let more = json!({
        "/readyz": {"get": {
            "summary": "Readiness: joined the fleet, every partition owned, every shard this node owns recovered.",
            "operationId": "readyz",
            "security": [],
            "responses": responses(
                &[(200, json_body("Ready for any vote.", schema("Status")))],
                &[(503, "Not ready yet (joining, rebalancing, recovering).")],
            ),
        }},
        "/openapi.json": {"get": {
            "summary": "This document.",
            "operationId": "openapi",
            "security": [],
            "responses": responses(
                &[(200, json_body("The OpenAPI 3.1 description of the voter API.", json!({"type": "object"})))],
                &[RATE_LIMITED],
            ),
        }},
        "/v1/elections": {"get": {
            "summary": "The public elections (open, closed and final; drafts are not shown).",
            "operationId": "listElections",
            "security": [],
            "responses": responses(
                &[(200, json_body("The elections.", json!({"type": "array", "items": schema("Election")})))],
                &[RATE_LIMITED],
            ),
        }},
        "/v1/elections/{id}": {
            "parameters": [election_param()],
            "get": {
                "summary": "One election.",
                "operationId": "getElection",
                "security": [],
                "responses": responses(
                    &[(200, json_body("The election.", schema("Election")))],
                    &[(404, "No such public election."), RATE_LIMITED],
                ),
            },
        },
        "/v1/elections/{id}/challenge": {
            "parameters": [election_param()],
            "get": {
                "summary": "A proof-of-work challenge bound to this voter and election.",
                "operationId": "getChallenge",
                "security": voter,
                "responses": responses(
                    &[(200, json_body("Solve it: find a nonce whose hash with the challenge has `difficulty` leading zero bits.", schema("Challenge")))],
                    &[(401, "No valid voter token."), (404, "No such public election."), RATE_LIMITED],
                ),
            },
        },
        "/v1/elections/{id}/votes": {
            "parameters": [election_param()],
            "post": {
                "summary": "Cast this voter's vote; answered 202 only after it is durable.",
                "description": "A voter's first committed vote counts and nothing else: a second one answers 409 `already_voted`, whatever its option.",
                "operationId": "castVote",
                "security": voter,
                "requestBody": {
                    "required": true,
                    "content": {"application/json": {
                        "schema": schema("VoteRequest"),
                        "example": {"option": "yes"},
                    }},
                },
                "responses": responses(
                    &[(202, json_body("Committed; the receipt identifies the vote in the official tree.", schema("VoteAccepted")))],
                    &[
                        (400, "Malformed JSON, unknown fields, bad UTF-8 or a malformed challenge."),
                        (401, "No valid voter token."),
                        (403, "The election requires a solved challenge, or this one failed."),
                        (404, "No such public election."),
                        (409, "This voter already voted, or the election is not open."),
                        (413, "The body is larger than 1 KiB."),
                        (415, "The body is not `application/json`."),
                        (422, "Not an option of this election."),
                        RATE_LIMITED,
                        (503, "The vote's shard cannot take it now (rebalancing, recovering, overloaded); nothing was recorded. Retry after `Retry-After`."),
                    ],
                ),
            },
        },
        "/v1/elections/{id}/results": {
            "parameters": [election_param()],
            "get": {
                "summary": "Live totals, or the official result once final.",
                "operationId": "getResults",
                "security": [],
                "parameters": [{"name": "If-None-Match", "in": "header", "required": false, "schema": {"type": "string"}}],
                "responses": responses(
                    &[
                        (200, json!({
                            "description": "The totals.",
                            "headers": {
                                "ETag": {"required": true, "schema": {"type": "string"}},
                                "Cache-Control": {"required": true, "schema": {"const": "public, max-age=1"}},
                            },
                            "content": {"application/json": {"schema": schema("Results")}},
                        })),
                        (304, json!({"description": "Unchanged since the ETag in `If-None-Match`."})),
                    ],
                    &[(404, "No such public election."), RATE_LIMITED],
                ),
            },
        },
        "/v1/elections/{id}/results/stream": {
            "parameters": [election_param()],
            "get": {
                "summary": "Server-sent events: `tally` with the results JSON on each change (throttled), `final` once official.",
                "operationId": "streamResults",
                "security": [],
                "parameters": [{"name": "Last-Event-ID", "in": "header", "required": false, "schema": {"type": "string"},
                    "description": "Resume: the stream starts after the event with this id."}],
                "responses": responses(
                    &[
                        (200, json!({"description": "The event stream; ends after `final`.",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}}})),
                        (204, json!({"description": "The client already has the official result (`Last-Event-ID: final`): stop reconnecting."})),
                    ],
                    &[(404, "No such public election."), RATE_LIMITED],
                ),
            },
        },
        "/v1/elections/{id}/results/ws": {
            "parameters": [election_param()],
            "get": {
                "summary": "WebSocket (RFC 6455, HTTP/1.1 Upgrade): the stream's events as JSON text frames `{\"event\": \"tally\"|\"final\", \"id\": …, \"data\": <the results JSON>}`, the current state first; pings as the heartbeat; after `final`, a close (1000). A data frame from the client is closed with 1003; a ping unanswered by the next heartbeat ends the session.",
                "description": "Over HTTP/2 the same session opens on a stream with an extended CONNECT (RFC 8441; the server sends SETTINGS_ENABLE_CONNECT_PROTOCOL): `:method CONNECT`, `:protocol websocket`, this path, `Sec-WebSocket-Version: 13`, no key; answered `200` without `Sec-WebSocket-Accept`, and the stream carries the frames (OpenAPI has no CONNECT operation to describe it). A GET over HTTP/2 or HTTP/3 is answered 400; HTTP/3's extended CONNECT (RFC 9220) is not taken.",
                "operationId": "streamResultsWebSocket",
                "security": [],
                "parameters": [
                    {"name": "Upgrade", "in": "header", "required": true, "schema": {"type": "string", "const": "websocket"}},
                    {"name": "Sec-WebSocket-Version", "in": "header", "required": true, "schema": {"type": "string", "const": "13"}},
                    {"name": "Sec-WebSocket-Key", "in": "header", "required": true, "schema": {"type": "string"},
                        "description": "The base64 of 16 random bytes."}
                ],
                "responses": responses(
                    &[(101, json!({"description": "Switching to the WebSocket protocol.",
                        "headers": {"Sec-WebSocket-Accept": {"schema": {"type": "string"}}}}))],
                    &[
                        (400, "Not a WebSocket handshake (HTTP/1.1, `Upgrade: websocket`, `Connection: Upgrade`, version 13 and a 16-byte key; over HTTP/2 an extended CONNECT with `:protocol websocket` and version 13); a wrong version is answered with `Sec-WebSocket-Version: 13`."),
                        (404, "No such public election."),
                        RATE_LIMITED,
                    ],
                ),
            },
        },
        "/v1/elections/{id}/votes/me": {
            "parameters": [election_param()],
            "get": {
                "summary": "Whether this voter's vote is in the source of truth (DynamoDB).",
                "operationId": "getMyVote",
                "security": voter,
                "responses": responses(
                    &[(200, json_body("`voted` and, when true, the option and receipt.", schema("MyVote")))],
                    &[
                        (401, "No valid voter token."),
                        (404, "No such public election."),
                        RATE_LIMITED,
                        (503, "The vote store did not answer in time."),
                    ],
                ),
            },
        },
        "/v1/elections/{id}/receipts/{receipt}": {
            "parameters": [election_param(), path_param("receipt", "A receipt from a 202.", HEX32)],
            "get": {
                "summary": "The receipt's leaf and its Merkle inclusion proof, once the result is official.",
                "operationId": "getReceipt",
                "security": [],
                "responses": responses(
                    &[(200, json_body("Verify: the leaf hashes to the receipt and the audit path leads to the official root.", schema("Proof")))],
                    &[
                        (400, "Not 64 lowercase hex digits."),
                        (404, "No such public election, no official result yet, or no counted vote with this receipt."),
                        RATE_LIMITED,
                        (503, "The receipts index did not answer in time."),
                    ],
                ),
            },
        },
        "/v1/dev/login": {
            "description": "Development sign-in; exists only when the node runs with `--dev-login` (otherwise an unknown path: 404). Never in production: anyone could vote as anyone.",
            "get": {
                "summary": "Whether development sign-in is on.",
                "operationId": "devLoginEnabled",
                "security": [],
                "responses": responses(
                    &[(200, json_body("On.", json!({"type": "object", "required": ["enabled"], "additionalProperties": false, "properties": {"enabled": {"const": true}}})))],
                    &[RATE_LIMITED],
                ),
            },
            "post": {
                "summary": "A voter token for any voter id.",
                "operationId": "devLogin",
                "security": [],
                "requestBody": {"required": true, "content": {"application/json": {
                    "schema": schema("DevLogin"), "example": {"voter": "42"}}}},
                "responses": responses(
                    &[(200, json_body("A token for the voter.", schema("DevToken")))],
                    &[
                        (400, "Malformed JSON or not a voter id."),
                        (413, "The body is larger than 16 KiB."),
                        (415, "The body is not `application/json`."),
                        RATE_LIMITED,
                    ],
                ),
            },
        },
        "/": {"get": html_page("The voter's page.", "voterPage")},
        "/results/{id}": {
            "parameters": [path_param("id", "The election's id.", "^[^/]+$")],
            "get": html_page("The live results page of an election.", "resultsPage"),
        },
        "/static/{name}": {
            "parameters": [asset_param()],
            "get": static_asset("publicAsset", &[(404, "No such asset."), RATE_LIMITED]),
        },
    });
    merge(&mut paths, more);
    json!({
        "openapi": "3.1.0",
        "info": info(
            "votes — voter API",
            "Voting, results and receipts. Identical over HTTP/1.1, HTTP/2 and HTTP/3. Errors are always `{\"error\":{\"code\",\"message\"}}`; \
             never a 5xx for client input. Voter tokens: HS256 (or EdDSA) JWTs with `sub` the decimal voter id, `aud` `votes`, and `exp`.",
        ),
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"voter": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "headers": retry_after(),
        },
    })
}

fn static_asset(operation: &str, errs: &[(u16, &str)]) -> Value {
    json!({
        "summary": "A page's script, style or icon (embedded in the binary).",
        "operationId": operation,
        "security": [],
        "responses": responses(
            &[(200, json!({"description": "The asset, with its media type.", "content": {"*/*": {"schema": {"type": "string"}}}}))],
            errs,
        ),
    })
}

/// The admin listener's document (docs/design.md §4.3). Long because it is the document.
fn admin_doc() -> Value {
    let mut schemas = shared_schemas();
    let counts =
        json!({"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}});
    let extra = json!({
        "NewElection": {
            "type": "object",
            "required": ["id", "title", "options"],
            "additionalProperties": false,
            "properties": {
                "id": schema("ElectionId"),
                "title": {"type": "string", "minLength": 1, "maxLength": TITLE_MAX},
                "options": {"type": "array", "minItems": OPTIONS_MIN, "maxItems": OPTIONS_MAX, "items": schema("Option"),
                    "uniqueItems": true, "description": "Option ids must differ (400 otherwise)."},
                "pow_difficulty": {"type": "integer", "minimum": 0, "maximum": POW_DIFFICULTY_MAX, "default": 0},
            },
        },
        "ElectionPatch": {
            "type": "object",
            "required": ["pow_difficulty"],
            "additionalProperties": false,
            "properties": {"pow_difficulty": {"type": "integer", "minimum": 0, "maximum": POW_DIFFICULTY_MAX}},
        },
        "Stats": {
            "type": "object",
            "required": ["node", "at_ms", "uptime_s", "cores", "partitions", "owned_partitions", "ready", "votes", "batches",
                "commit_latency_ms", "batch_size_mean", "sse_subscribers", "redis"],
            "additionalProperties": false,
            "properties": {
                "node": {"type": "string"},
                "at_ms": {"type": "integer", "minimum": 0},
                "uptime_s": {"type": "integer", "minimum": 0},
                "cores": {"type": "integer", "minimum": 1},
                "partitions": {"type": "integer", "minimum": 1},
                "owned_partitions": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "ready": {"type": "boolean"},
                "votes": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0},
                    "description": "Vote requests answered, by outcome (`accepted` or the error code)."},
                "batches": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0},
                    "description": "Transactions, by outcome."},
                "commit_latency_ms": {"type": "object", "required": ["p50", "p90", "p99", "max"], "additionalProperties": false,
                    "properties": {"p50": {"type": "number"}, "p90": {"type": "number"}, "p99": {"type": "number"}, "max": {"type": "number"}}},
                "batch_size_mean": {"type": "number"},
                "sse_subscribers": {"type": "integer", "minimum": 0},
                "redis": {"type": ["object", "null"], "description": "The Redis link (results role), or null.",
                    "required": ["connected", "published", "errors", "pending", "lag_ms", "polls"],
                    "additionalProperties": false,
                    "properties": {"connected": {"type": "boolean"}, "published": {"type": "integer"}, "errors": {"type": "integer"},
                        "pending": {"type": "integer"}, "lag_ms": {"type": "integer"}, "polls": {"type": "integer"}}},
            },
        },
        "Fleet": {
            "type": "object",
            "required": ["node", "generation", "members", "nodes", "partitions"],
            "additionalProperties": false,
            "properties": {
                "node": {"type": "string"},
                "generation": {"type": "integer", "minimum": 0},
                "members": {"type": "integer", "minimum": 0},
                "nodes": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0},
                    "description": "Cores in the group per node."},
                "partitions": {"type": "array", "items": {"oneOf": [
                    {"type": "object", "required": ["partition", "node", "core", "internal"], "additionalProperties": false,
                        "properties": {"partition": {"type": "integer", "minimum": 0}, "node": {"type": "string"},
                            "core": {"type": "integer", "minimum": 0}, "internal": {"type": "string"}}},
                    {"type": "object", "required": ["partition", "node"], "additionalProperties": false,
                        "properties": {"partition": {"type": "integer", "minimum": 0}, "node": {"type": "null"}}},
                ]}},
            },
        },
    });
    if let Value::Object(m) = extra {
        schemas.extend(m);
    }
    let version = json!({"type": "integer", "minimum": 1});
    schemas.insert(
        "VersionedElection".into(),
        election_schema(
            json!({"version": version}),
            &["An election with its version: the base of the next write's `If-Match`."],
        ),
    );
    schemas.insert(
        "AdminElection".into(),
        election_schema(
            json!({"version": version, "live": {"type": "object", "required": ["totals", "total"], "additionalProperties": false,
                "description": "The counts this node's cores hold (its own partitions).",
                "properties": {"totals": counts, "total": {"type": "integer", "minimum": 0}}}}),
            &["An election, drafts included, with its version and this node's live counts."],
        ),
    );
    let unauthorized = (401, "No admin token, or the wrong one.");
    let if_match = json!({"name": "If-Match", "in": "header", "required": false,
        "description": "The version this change is based on (quotes allowed); a stale one answers 409 and changes nothing.",
        "schema": {"type": "string", "pattern": "^\"?[0-9]{1,19}\"?$"}});
    let write_errors: [(u16, &str); 4] = [
        unauthorized,
        (404, "No such election."),
        (
            409,
            "Stale `If-Match`, or a state that cannot follow the current one.",
        ),
        (
            503,
            "The elections topic did not take the change; nothing changed.",
        ),
    ];
    let transition = |to: &str| {
        json!({
            "summary": format!("Move the election to `{to}`."),
            "description": if to == "closed" {
                "Closing is a barrier: every owner stops taking the election's votes at one log position, then the recount makes the result official (`final`). Idempotent: closing a `closed` or `final` election answers 200 with the election as it stands."
            } else { "Voting starts on every node." },
            "operationId": format!("{}Election", if to == "closed" { "close" } else { "open" }),
            "parameters": [if_match.clone()],
            "responses": responses(
                &[(200, json_body("The election as written.", schema("VersionedElection")))],
                &[(400, "`If-Match` is not a version number."), write_errors[0], write_errors[1], write_errors[2], write_errors[3]],
            ),
        })
    };
    let mut paths = health_paths();
    let more = json!({
        "/metrics": {"get": {
            "summary": "Prometheus text exposition of the node's figures (scrape with the admin token).",
            "operationId": "metrics",
            "responses": responses(
                &[(200, json!({"description": "The figures.", "content": {"text/plain": {"schema": {"type": "string"}}}}))],
                &[unauthorized],
            ),
        }},
        "/admin": {"get": {
            "summary": "The operator's page (it holds no secret: every call it makes carries the admin token).",
            "operationId": "adminPage",
            "security": [],
            "responses": {"200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}}},
        }},
        "/static/{name}": {
            "parameters": [asset_param()],
            "get": static_asset("adminAsset", &[(404, "No such asset.")]),
        },
        "/admin/openapi.json": {"get": {
            "summary": "This document.",
            "operationId": "adminOpenapi",
            "security": [],
            "responses": {"200": json_body("The OpenAPI 3.1 description of the admin API.", json!({"type": "object"}))},
        }},
        "/admin/v1/elections": {
            "get": {
                "summary": "Every election, drafts included, with its version and this node's live counts.",
                "operationId": "adminListElections",
                "responses": responses(
                    &[(200, json_body("The elections.", json!({"type": "array", "items": schema("AdminElection")})))],
                    &[unauthorized],
                ),
            },
            "post": {
                "summary": "Create an election in `draft`.",
                "operationId": "createElection",
                "requestBody": {"required": true, "content": {"application/json": {
                    "schema": schema("NewElection"),
                    "example": {"id": "referendum", "title": "Referendum",
                        "options": [{"id": "yes", "label": "Yes"}, {"id": "no", "label": "No"}]},
                }}},
                "responses": responses(
                    &[(201, json_body("Created, at version 1.", schema("VersionedElection")))],
                    &[
                        (400, "Malformed JSON, unknown fields, or an election the contract does not allow (ids, 2 to 64 options, lengths, difficulty)."),
                        unauthorized,
                        (409, "An election with this id exists."),
                        (413, "The body is larger than 16 KiB."),
                        (415, "The body is not `application/json`."),
                        (503, "The elections topic did not take the change; nothing changed."),
                    ],
                ),
            },
        },
        "/admin/v1/elections/{id}/open": {
            "parameters": [election_param()],
            "post": transition("open"),
        },
        "/admin/v1/elections/{id}/close": {
            "parameters": [election_param()],
            "post": transition("closed"),
        },
        "/admin/v1/elections/{id}": {
            "parameters": [election_param()],
            "patch": {
                "summary": "Change the anti-bot difficulty live.",
                "operationId": "patchElection",
                "parameters": [if_match],
                "requestBody": {"required": true, "content": {"application/json": {
                    "schema": schema("ElectionPatch"), "example": {"pow_difficulty": 8}}}},
                "responses": responses(
                    &[(200, json_body("The election as written.", schema("VersionedElection")))],
                    &[
                        (400, "Malformed JSON, unknown fields, or `If-Match` not a version number."),
                        write_errors[0], write_errors[1], write_errors[2],
                        (413, "The body is larger than 16 KiB."),
                        (415, "The body is not `application/json`."),
                        write_errors[3],
                    ],
                ),
            },
        },
        "/admin/v1/stats": {"get": {
            "summary": "The node's live figures as JSON (the dashboard's source).",
            "operationId": "adminStats",
            "responses": responses(&[(200, json_body("The figures.", schema("Stats")))], &[unauthorized]),
        }},
        "/admin/v1/fleet": {"get": {
            "summary": "The fleet map this node routes by: the owner of every partition.",
            "operationId": "adminFleet",
            "responses": responses(&[(200, json_body("The map.", schema("Fleet")))], &[unauthorized]),
        }},
    });
    merge(&mut paths, more);
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": info(
            "votes — admin API",
            "Elections and the node's figures, on the admin listener. Every `/admin/v1` call needs `Authorization: Bearer $VOTES_ADMIN_TOKEN`. \
             Writes are compare-and-set on the election's version (`If-Match`); a state never moves backwards.",
        ),
        "servers": [{"url": "/"}],
        "security": [{"admin": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
            "headers": retry_after(),
        },
    });
    // The admin listener's errors carry the voter API's codes and `conflict`.
    let conflict = ["conflict"];
    for (path, method) in [
        ("/admin/v1/elections", "post"),
        ("/admin/v1/elections/{id}/open", "post"),
        ("/admin/v1/elections/{id}/close", "post"),
        ("/admin/v1/elections/{id}", "patch"),
    ] {
        doc["paths"][path][method]["responses"]["409"] = error_with(
            "A stale `If-Match`, an existing id, or a state that cannot follow.",
            &conflict,
        );
    }
    doc
}

fn retry_after() -> Value {
    json!({"RetryAfter": {"required": true, "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 1}}})
}

fn merge(into: &mut Value, more: Value) {
    let (Value::Object(into), Value::Object(more)) = (into, more) else {
        unreachable!("path maps are objects");
    };
    for (k, v) in more {
        let old = into.insert(k, v);
        assert!(old.is_none(), "a path is described twice");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                if ["get", "post", "patch", "put", "delete"].contains(&method.as_str()) {
                    out.push((path.clone(), method.clone(), op));
                }
            }
        }
        out
    }

    #[test]
    fn every_document_parses_and_every_reference_resolves() {
        for raw in [public(), admin()] {
            let doc: Value = serde_json::from_slice(raw).expect("valid JSON");
            assert_eq!(doc["openapi"], "3.1.0");
            let text = String::from_utf8(raw.to_vec()).expect("UTF-8");
            for piece in text.split("\"$ref\": \"#/").skip(1) {
                let target = piece.split('"').next().expect("a quoted reference");
                let pointer = format!("/{target}");
                assert!(doc.pointer(&pointer).is_some(), "dangling $ref {target}");
            }
            for (path, method, op) in operations(&doc) {
                let responses = op["responses"].as_object().expect("responses");
                assert!(!responses.is_empty(), "{method} {path} documents no answer");
                for status in responses.keys() {
                    let code: u16 = status.parse().expect("numeric status");
                    assert!((100..600).contains(&code), "{method} {path}: {status}");
                }
            }
        }
    }

    #[test]
    fn every_error_code_of_the_contract_is_documented_somewhere() {
        let doc: Value = serde_json::from_slice(public()).expect("valid JSON");
        let text = doc.to_string();
        for code in ErrorCode::ALL {
            assert!(text.contains(&format!("\"{}\"", code.as_str())), "{code:?}");
        }
        // Every status a vote can be answered with (docs/design.md §4.2) is on the vote operation.
        let vote = &doc["paths"]["/v1/elections/{id}/votes"]["post"]["responses"];
        for code in ErrorCode::ALL {
            assert!(vote.get(code.status().to_string()).is_some(), "{code:?}");
        }
    }

    /// A route table's (path template, method) pairs: each arm's pattern as a template (a
    /// parameter `{name}`), and the methods the route it matches answers, found by matching a
    /// path made from the pattern. `route` looks a path's segments up in the table.
    fn routed(
        patterns: &[&[&str]],
        route: impl Fn(&[&str]) -> Option<&'static [votes_net::http::Method]>,
    ) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for pattern in patterns {
            let mut template = String::new();
            let mut sample = Vec::new();
            for seg in *pattern {
                template.push('/');
                match seg.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                    Some(literal) => {
                        template.push_str(literal);
                        sample.push(literal);
                    }
                    None => {
                        let name = seg.trim_start_matches('_');
                        assert!(!name.is_empty(), "name the parameter of {pattern:?}");
                        template.push_str(&format!("{{{name}}}"));
                        // No literal of any route: the arm that binds it is the one matched.
                        sample.push("x-param-x");
                    }
                }
            }
            if template.is_empty() {
                template.push('/');
            }
            let methods = route(&sample).unwrap_or_else(|| panic!("{template} routes nowhere"));
            for m in methods {
                out.insert((template.clone(), m.as_str().to_ascii_lowercase()));
            }
        }
        out
    }

    /// The document's (path, method) pairs. OpenAPI has no CONNECT operation: a route that
    /// answers it (a WebSocket over h2, RFC 8441) counts as documented when its path's GET
    /// describes the CONNECT.
    fn documented(doc: &Value) -> BTreeSet<(String, String)> {
        let mut out: BTreeSet<(String, String)> = operations(doc)
            .into_iter()
            .map(|(path, method, _)| (path, method))
            .collect();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            if item["get"].to_string().contains("extended CONNECT") {
                out.insert((path.clone(), "connect".to_owned()));
            }
        }
        out
    }

    fn assert_same(
        listener: &str,
        routed: &BTreeSet<(String, String)>,
        doc: &BTreeSet<(String, String)>,
    ) {
        let undocumented: Vec<_> = routed.difference(doc).collect();
        let unrouted: Vec<_> = doc.difference(routed).collect();
        assert!(
            undocumented.is_empty() && unrouted.is_empty(),
            "{listener}: routed but not documented: {undocumented:?}; documented but not routed: {unrouted:?}"
        );
    }

    #[test]
    fn every_route_is_documented_and_every_documented_route_is_routed() {
        use crate::serve::routes::{Admin, Public};
        // `--dev-login` on: its route exists then, and the document describes it.
        let public_routes = routed(Public::PATTERNS, |segs| {
            Public::of(segs, true).map(Public::methods)
        });
        let admin_routes = routed(Admin::PATTERNS, |segs| Admin::of(segs).map(Admin::methods));
        // The derivation itself: a route of each kind must be found, or this checks nothing.
        for want in [
            ("/v1/elections/{id}/receipts/{receipt}", "get"),
            ("/v1/elections/{id}/votes", "post"),
            ("/v1/elections/{id}/results/ws", "connect"),
            ("/results/{id}", "get"),
            ("/", "get"),
        ] {
            assert!(
                public_routes.contains(&(want.0.to_owned(), want.1.to_owned())),
                "{want:?} in {public_routes:?}"
            );
        }
        assert!(
            admin_routes.contains(&("/admin/v1/elections/{id}".to_owned(), "patch".to_owned()))
        );
        let public_doc: Value = serde_json::from_slice(public()).expect("valid JSON");
        let admin_doc: Value = serde_json::from_slice(admin()).expect("valid JSON");
        assert_same("public listener", &public_routes, &documented(&public_doc));
        assert_same("admin listener", &admin_routes, &documented(&admin_doc));
    }

    #[test]
    fn the_route_comparison_fails_both_ways() {
        let doc = json!({"paths": {
            "/a": {"get": {"responses": {}}},
            "/b/{id}": {"get": {"responses": {}}, "post": {"responses": {}}},
        }});
        let routes = |extra: &[(&str, &str)]| -> BTreeSet<(String, String)> {
            [("/a", "get"), ("/b/{id}", "get")]
                .iter()
                .chain(extra)
                .map(|(p, m)| (p.to_string(), m.to_string()))
                .collect()
        };
        let documented = documented(&doc);
        // A documented route the server does not route.
        let missing = std::panic::catch_unwind(|| assert_same("t", &routes(&[]), &documented));
        assert!(missing.is_err());
        // A route the document does not describe.
        let extra = routes(&[("/b/{id}", "post"), ("/c", "get")]);
        assert!(std::panic::catch_unwind(|| assert_same("t", &extra, &documented)).is_err());
        assert_same("t", &routes(&[("/b/{id}", "post")]), &documented);
    }

    #[test]
    fn operation_ids_are_unique() {
        for raw in [public(), admin()] {
            let doc: Value = serde_json::from_slice(raw).expect("valid JSON");
            let mut seen = std::collections::HashSet::new();
            for (path, method, op) in operations(&doc) {
                if let Some(id) = op["operationId"].as_str() {
                    assert!(seen.insert(id.to_owned()), "{method} {path}: {id} twice");
                }
            }
        }
    }
}
