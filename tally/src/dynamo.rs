//! DynamoDB client construction — a local endpoint (dynoxide in tests and the demo) when one is
//! configured, real DynamoDB through the standard AWS credential and region chain otherwise —
//! and the one retry policy for calls DynamoDB may throttle.
//!
//! The SDK retries a throttled call itself (standard mode: 3 attempts, and a client-wide token
//! bucket that stops retrying when most calls fail). A table past its capacity throttles for
//! longer than that, so the writers that must not give up (the persister) and the reads that
//! should not fail a whole recount on one throttled page retry on top, with full-jitter
//! exponential backoff, while the SDK's layer absorbs the short blips.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{Credentials, Region};
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};

pub async fn client(endpoint: Option<&str>) -> Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(endpoint) = endpoint {
        // A local endpoint checks that a request is signed, not by whom; fixed credentials keep
        // local runs independent of whatever AWS profile the machine has.
        loader = loader
            .endpoint_url(endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(
                "local",
                "local",
                None,
                None,
                "votes-local",
            ));
    }
    Client::new(&loader.load().await)
}

/// The error codes DynamoDB answers when a call may succeed if sent again later: capacity
/// (`ProvisionedThroughputExceededException`, `ThrottlingException`, the account's
/// `RequestLimitExceeded`) and its own transient failures.
const RETRIABLE_CODES: [&str; 5] = [
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
];

/// Whether `e` is worth another attempt: a throttle or a transient failure of the service, or
/// a call that never got a whole answer (timeout, connection lost, unreadable response).
pub fn retriable<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(s) => s
            .err()
            .code()
            .is_some_and(|code| RETRIABLE_CODES.contains(&code)),
        _ => false,
    }
}

/// Exponential backoff with "full jitter": each wait is uniform in [0, ceiling], the ceiling
/// doubling from `BACKOFF_MIN` to `BACKOFF_MAX`, so writers throttled together do not retry
/// in step.
#[derive(Debug)]
pub struct Backoff {
    ceiling: Duration,
    attempts: u32,
    state: u64,
}

pub const BACKOFF_MIN: Duration = Duration::from_millis(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

impl Default for Backoff {
    fn default() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // Distinct for backoffs made in the same instant too.
        static MADE: AtomicU64 = AtomicU64::new(0);
        let made = MADE.fetch_add(1, Ordering::Relaxed);
        let seed = u64::from(nanos) ^ made.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Backoff {
            ceiling: BACKOFF_MIN,
            attempts: 0,
            state: seed | 1,
        }
    }
}

impl Backoff {
    /// The next wait; the ceiling doubles after each.
    pub fn next_wait(&mut self) -> Duration {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let wait = self.ceiling.mul_f64((self.state % 1001) as f64 / 1000.0);
        self.ceiling = (self.ceiling * 2).min(BACKOFF_MAX);
        self.attempts += 1;
        debug_assert!(wait <= BACKOFF_MAX);
        wait
    }

    /// How many waits were handed out.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_stay_under_a_doubling_ceiling_that_stops_at_the_maximum() {
        let mut b = Backoff::default();
        let mut ceiling = BACKOFF_MIN;
        for _ in 0..20 {
            assert!(b.next_wait() <= ceiling);
            ceiling = (ceiling * 2).min(BACKOFF_MAX);
        }
        assert_eq!(b.attempts(), 20);
        assert_eq!(b.ceiling, BACKOFF_MAX);
    }

    #[test]
    fn waits_are_spread_not_constant() {
        let mut b = Backoff::default();
        for _ in 0..8 {
            b.next_wait();
        }
        let waits: std::collections::BTreeSet<Duration> = (0..50).map(|_| b.next_wait()).collect();
        assert!(waits.len() > 10, "jittered: {waits:?}");
    }
}
