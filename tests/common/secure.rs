//! The engines as production secures them (docs/design.md §7): Kafka over TLS with SASL SCRAM
//! on the secure listener the services script gives its broker, and a private Redis that speaks
//! only TLS and wants a password.

use std::path::PathBuf;

use super::{PrivateRedis, PrivateRedisGuard};

/// The broker's SASL_SSL listener (`scripts/services.sh`).
pub const KAFKA_SECURE: &str = "127.0.0.1:9097";
pub const KAFKA_USER: &str = "votes";
/// The services script's default SCRAM password (development and tests only).
pub const KAFKA_PASSWORD: &str = "votes-test-scram-password";

/// The CA of the secure listener, where `scripts/services.sh` keeps it.
pub fn kafka_ca() -> String {
    let cache = std::env::var("XDG_CACHE_HOME")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| format!("{}/.cache", std::env::var("HOME").unwrap()));
    let ca = format!("{cache}/votes-services/kafka-tls/ca.pem");
    assert!(
        std::path::Path::new(&ca).is_file(),
        "Kafka's secure listener: no CA at {ca} (scripts/services.sh up kafka makes it; a \
         broker started by an older checkout has no secure listener: down kafka, then up)"
    );
    ca
}

/// The settings of a client of the secure listener, with `password`.
pub fn kafka_env(ca: &str, password: &str) -> Vec<(&'static str, String)> {
    vec![
        ("VOTES_KAFKA_BROKERS", KAFKA_SECURE.to_owned()),
        ("VOTES_KAFKA_SECURITY_PROTOCOL", "sasl_ssl".to_owned()),
        ("VOTES_KAFKA_CA", ca.to_owned()),
        ("VOTES_KAFKA_SASL_USERNAME", KAFKA_USER.to_owned()),
        ("VOTES_KAFKA_PASSWORD", password.to_owned()),
    ]
}

/// A Redis of this test alone on `port`, TLS only (a self-signed certificate for 127.0.0.1)
/// with `requirepass`; stopped when dropped.
pub struct SecureRedis {
    _redis: PrivateRedisGuard,
    /// `rediss://127.0.0.1:<port>`, no password in it.
    pub url: String,
    /// The certificate the server presents, which clients trust as their CA.
    pub ca: String,
    /// A systemd-style credentials directory holding `VOTES_REDIS_PASSWORD`.
    pub credentials: String,
}

impl SecureRedis {
    pub fn up(port: &'static str, password: &str) -> Self {
        let dir: PathBuf =
            std::env::temp_dir().join(format!("votes-redis-tls-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = votes_net::self_signed_dev_cert(&["localhost", "127.0.0.1"]).unwrap();
        std::fs::write(dir.join("cert.pem"), &cert).unwrap();
        std::fs::write(dir.join("key.pem"), &key).unwrap();
        let redis = PrivateRedis {
            port,
            env: vec![
                ("SERVICES_REDIS_TLS_DIR", dir.clone().into_os_string()),
                ("SERVICES_REDIS_PASSWORD", password.into()),
            ],
        }
        .up();
        let credentials = dir.join("credentials");
        std::fs::create_dir_all(&credentials).unwrap();
        std::fs::write(
            credentials.join("VOTES_REDIS_PASSWORD"),
            format!("{password}\n"),
        )
        .unwrap();
        Self {
            _redis: redis,
            url: format!("rediss://127.0.0.1:{port}"),
            ca: dir.join("cert.pem").to_str().unwrap().to_owned(),
            credentials: credentials.to_str().unwrap().to_owned(),
        }
    }

    /// The settings of a `votes` process that uses this Redis (the password as a credential).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("VOTES_REDIS_URL", self.url.clone()),
            ("VOTES_REDIS_CA", self.ca.clone()),
            ("CREDENTIALS_DIRECTORY", self.credentials.clone()),
        ]
    }
}
