//! What the harness reads of an election before a run (`GET /v1/elections/{id}`): whether it
//! is open, its options (the votes to send) and the proof of work a vote needs. One definition
//! for every run that votes, so they read the election alike.

use bytes::Bytes;
use hyper::Method;
use serde::Deserialize;

use crate::client::{Body, Client, ClientError};

/// Why a run could not start on its target and election: `votes-load` and `votes-sse` say it
/// in the same words.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("invalid --election {0:?}: expected [a-z0-9-]{{1,64}}")]
    ElectionId(String),
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: ClientError,
    },
    #[error("cannot read election {election:?} (GET /v1/elections/{election}): {why}")]
    Election { election: String, why: String },
}

/// Refuses an `--election` the server could never know, before anything is sent.
pub fn check_id(election: &str) -> Result<(), TargetError> {
    votes_core::ElectionId::new(election.to_owned())
        .map(drop)
        .map_err(|_| TargetError::ElectionId(election.to_owned()))
}

/// The part of the public election view a run needs; fields the server adds are ignored.
#[derive(Debug, Deserialize)]
pub struct ElectionView {
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub options: Vec<OptionView>,
    #[serde(default)]
    pub pow_difficulty: u8,
}

#[derive(Debug, Deserialize)]
pub struct OptionView {
    pub id: String,
}

/// `GET path` on `client`'s target: the body of a `200`; an unreachable target or any other
/// status as the text an error message quotes (`status 404: {body}`).
pub async fn get_ok(client: &Client, path: &str) -> Result<Bytes, String> {
    let req = client
        .request(Method::GET, client.uri(path))
        .body(Body::default())
        .expect("valid request");
    let a = client.send(req).await.map_err(|e| e.to_string())?;
    if a.status != 200 {
        return Err(format!(
            "status {}: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        ));
    }
    Ok(a.body)
}

/// Reads election `election` from the target; what went wrong as text otherwise.
pub async fn fetch(client: &Client, election: &str) -> Result<ElectionView, String> {
    let body = get_ok(client, &format!("/v1/elections/{election}")).await?;
    serde_json::from_slice(&body).map_err(|e| format!("unexpected body: {e}"))
}
