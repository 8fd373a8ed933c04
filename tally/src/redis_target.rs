//! Where the Redis read model is and how to reach it: `redis://` or `rediss://` (TLS), a
//! password (from the credential `VOTES_REDIS_PASSWORD`, which wins, or in the URL:
//! `rediss://:password@host:6380`), and for TLS the certificate authority that signs the
//! server's certificate when the system does not trust it already. Every Redis client of every
//! process is made here, so none can forget the TLS settings.

use std::sync::Arc;

/// A Redis endpoint. Its `Debug` masks the URL's password.
#[derive(Clone)]
pub struct RedisTarget {
    url: String,
    /// PEM of the certificate authority for a `rediss://` URL.
    ca_pem: Option<Arc<[u8]>>,
    /// The password when it is not in the URL (a credential, not a setting in a file).
    password: Option<Arc<str>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RedisTargetError {
    #[error("a Redis URL is redis:// or rediss://, not {0:?}")]
    Scheme(String),
    #[error("a certificate authority for Redis (--redis-ca) needs a rediss:// URL")]
    CaWithoutTls,
}

impl RedisTarget {
    pub fn new(url: &str, ca_pem: Option<Vec<u8>>) -> Result<Self, RedisTargetError> {
        let tls = url.starts_with("rediss://");
        if !tls && !url.starts_with("redis://") {
            // Only what precedes the first ':' — never the rest, which may hold a password.
            let scheme = url.split(':').next().unwrap_or_default();
            return Err(RedisTargetError::Scheme(scheme.to_owned()));
        }
        if ca_pem.is_some() && !tls {
            return Err(RedisTargetError::CaWithoutTls);
        }
        Ok(Self {
            url: url.to_owned(),
            ca_pem: ca_pem.map(Arc::from),
            password: None,
        })
    }

    /// The same endpoint with `password` for its AUTH, in place of any in the URL.
    pub fn with_password(mut self, password: Option<String>) -> Self {
        self.password = password.map(Arc::from);
        self
    }

    fn connection_info(&self) -> redis::RedisResult<redis::ConnectionInfo> {
        use redis::IntoConnectionInfo;
        let info = self.url.as_str().into_connection_info()?;
        Ok(match &self.password {
            None => info,
            Some(password) => {
                let settings = info.redis_settings().clone().set_password(password);
                info.set_redis_settings(settings)
            }
        })
    }

    /// A plaintext or system-trusted endpoint (tests, tools).
    pub fn url(url: &str) -> Result<Self, RedisTargetError> {
        Self::new(url, None)
    }

    pub fn client(&self) -> redis::RedisResult<redis::Client> {
        let info = self.connection_info()?;
        match &self.ca_pem {
            None => redis::Client::open(info),
            Some(ca) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.to_vec()),
                },
            ),
        }
    }

    /// The URL without its password, for logs and errors.
    pub fn display(&self) -> String {
        match self.url.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}"),
                None => self.url.clone(),
            },
            None => self.url.clone(),
        }
    }

    /// Connects and PINGs once within `timeout`: what a process checks at start so that wrong
    /// credentials or an untrusted certificate stop it with a clear message, while a Redis
    /// that is merely down can come later.
    pub fn check(&self, timeout: std::time::Duration) -> Result<(), RedisCheck> {
        let client = self
            .client()
            .map_err(|e| RedisCheck::Refused(e.to_string()))?;
        let mut conn = match client.get_connection_with_timeout(timeout) {
            Ok(c) => c,
            Err(e) if e.kind() == redis::ErrorKind::AuthenticationFailed => {
                return Err(RedisCheck::Refused(e.to_string()));
            }
            // TLS failures (an untrusted certificate, TLS against a plaintext port) surface as
            // I/O errors naming the handshake: a setting to fix, not an outage to wait out.
            Err(e) if is_tls_failure(&e) => return Err(RedisCheck::Refused(e.to_string())),
            Err(e) => return Err(RedisCheck::Unreachable(e.to_string())),
        };
        // The connection's own timeouts end with its setup: a Redis that stops answering after
        // it must not hold the start-up.
        let bounded = conn
            .set_read_timeout(Some(timeout))
            .and_then(|()| conn.set_write_timeout(Some(timeout)));
        if let Err(e) = bounded {
            return Err(RedisCheck::Unreachable(e.to_string()));
        }
        match redis::cmd("PING").query::<String>(&mut conn) {
            Ok(_) => Ok(()),
            Err(e)
                if e.kind() == redis::ErrorKind::AuthenticationFailed
                    || e.code().is_some_and(|c| c == "NOAUTH" || c == "WRONGPASS") =>
            {
                Err(RedisCheck::Refused(e.to_string()))
            }
            Err(e) => Err(RedisCheck::Unreachable(e.to_string())),
        }
    }
}

fn is_tls_failure(e: &redis::RedisError) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    [
        "certificate",
        "tls",
        "handshake",
        "invalidcontenttype",
        "corrupt message",
    ]
    .iter()
    .any(|w| text.contains(w))
}

/// Why a [`RedisTarget::check`] failed.
#[derive(Debug)]
pub enum RedisCheck {
    /// Redis answered and refused us (credentials, certificate): a configuration error.
    Refused(String),
    /// Redis did not answer: it may come later.
    Unreachable(String),
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field("url", &self.display())
            .field("ca", &self.ca_pem.is_some())
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_shows_and_a_ca_needs_tls() {
        let t = RedisTarget::url("rediss://:s3cret@redis.internal:6380/0").unwrap();
        assert_eq!(t.display(), "rediss://***@redis.internal:6380/0");
        assert!(!format!("{t:?}").contains("s3cret"));
        assert_eq!(
            RedisTarget::url("redis://127.0.0.1:6379")
                .unwrap()
                .display(),
            "redis://127.0.0.1:6379"
        );
        assert!(matches!(
            RedisTarget::new("redis://127.0.0.1:6379", Some(b"pem".to_vec())),
            Err(RedisTargetError::CaWithoutTls)
        ));
        assert!(matches!(
            RedisTarget::url("http://127.0.0.1:6379"),
            Err(RedisTargetError::Scheme(_))
        ));
        let Err(e) = RedisTarget::url("redis:/:s3cret@host:6379") else {
            panic!("a URL without :// is refused");
        };
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
}
