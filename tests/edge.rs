//! Edge protection (docs/design.md §4.2-4.3): voter tokens from several keys at once (HS256 and an
//! external issuer's EdDSA key, by `kid`), and no token or key ever reaching the log.

mod common;

use std::process::Command;

use common::runtime;
use common::serve::{ADMIN_TOKEN, AUDIT_KEY, Serve, TOKEN_KEY, TestClient, open_election};
use votes_core::{TokenKey, VoterId};

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    common::assert_success(&out, format_args!("openssl {args:?}"));
}

#[test]
fn an_external_issuers_eddsa_tokens_vote_beside_hs256_and_no_secret_is_logged() {
    common::require(common::Service::Kafka);
    let dir = std::env::temp_dir().join(common::unique_prefix("edge-keys"));
    std::fs::create_dir_all(&dir).unwrap();
    let private = dir.join("issuer.pem");
    let public = dir.join("issuer.pub.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        private.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    let key_file = dir.join("keys");
    std::fs::write(
        &key_file,
        format!(
            "# the SSO's signing key\nsso-2026 EdDSA {}\n",
            public.display()
        ),
    )
    .unwrap();

    let serve = Serve::init_and_start_env(
        "edge",
        2,
        1,
        &[("VOTES_TOKEN_KEYS_FILE", key_file.to_str().unwrap())],
    );
    runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &serve, "keys", &["a", "b"], 0).await;
        let issuer = TokenKey::ed25519_private_pem(&std::fs::read_to_string(&private).unwrap())
            .unwrap()
            .with_kid("sso-2026")
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let eddsa = votes_core::token::issue(&issuer, VoterId(1), 600, now);
        let vote = |token: String| {
            let (client, url) = (client.clone(), serve.url("/v1/elections/keys/votes"));
            async move {
                let auth = format!("Bearer {token}");
                client
                    .send(
                        "POST",
                        &url,
                        &[
                            ("authorization", &auth),
                            ("content-type", "application/json"),
                        ],
                        r#"{"option":"a"}"#,
                    )
                    .await
                    .map(|(s, _, b)| (s, b))
                    .unwrap()
            }
        };
        let (status, body) = vote(eddsa.clone()).await;
        assert_eq!(
            status, 202,
            "an EdDSA token of the listed issuer votes: {body}"
        );
        // HS256 tokens of VOTES_TOKEN_KEY still vote at the same time.
        let (status, body) = vote(common::serve::token(2)).await;
        assert_eq!(status, 202, "{body}");
        // The same issuer's key under another kid, or a token signed by another Ed25519 key.
        let renamed = votes_core::token::issue(
            &issuer.clone().with_kid("sso-2027").unwrap(),
            VoterId(3),
            600,
            now,
        );
        let (status, body) = vote(renamed.clone()).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthorized"))
        );
        let mut forged = eddsa[..eddsa.len() - 4].to_owned();
        forged.push_str("AAAA");
        let (status, _) = vote(forged.clone()).await;
        assert_eq!(status, 401);

        // Nothing secret in the log: no token, no signature, no key.
        let log = serve.log_text();
        assert!(
            log.contains("sso-2026"),
            "the key ids are logged at start:\n{log}"
        );
        let signature = eddsa.rsplit('.').next().unwrap();
        for secret in [
            eddsa.as_str(),
            signature,
            &renamed,
            &forged,
            TOKEN_KEY,
            AUDIT_KEY,
            ADMIN_TOKEN,
        ] {
            assert!(
                !log.contains(secret),
                "the log holds a secret ({} chars)",
                secret.len()
            );
        }
        let pem = std::fs::read_to_string(&public).unwrap();
        let key_b64 = pem.lines().nth(1).unwrap();
        assert!(!log.contains(key_b64), "the log holds the public key bytes");
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--dev-login` lets anyone sign in as any voter, so a node refuses it at start unless every
/// public listener is on loopback, whether the flag or the environment turns it on, and names
/// the listener that is not. No service is needed: the flags are checked first.
#[test]
fn dev_login_is_refused_unless_every_public_listener_is_on_loopback() {
    let serve = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = common::votes_command("t-dev-login-", &["serve", "--cores", "1"]);
        command
            .args(args)
            .env("VOTES_TOKEN_KEY", TOKEN_KEY)
            .env("VOTES_ADMIN_TOKEN", ADMIN_TOKEN)
            .env_remove("VOTES_DEV_LOGIN")
            .env_remove("VOTES_HTTP")
            .env_remove("VOTES_HTTPS")
            .env_remove("VOTES_TLS_CERT")
            .envs(env.iter().copied());
        common::fails_at_start(command)
    };
    let refusal = |addr: &str| {
        format!(
            "--dev-login lets anyone sign in as any voter: it needs every public listener on \
             loopback, and {addr} is not"
        )
    };
    let err = serve(&["--dev-login", "--http", "0.0.0.0:0"], &[]);
    assert!(err.contains(&refusal("0.0.0.0:0")), "{err}");
    // The TLS listener counts too, and the environment switches the sign-in on as the flag does.
    let err = serve(
        &[
            "--http",
            "127.0.0.1:0",
            "--https",
            "0.0.0.0:0",
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ],
        &[("VOTES_DEV_LOGIN", "true")],
    );
    assert!(err.contains(&refusal("0.0.0.0:0")), "{err}");
    assert!(!err.contains("127.0.0.1:0 is not"), "{err}");
}
