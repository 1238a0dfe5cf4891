//! Logins for every protocol (SMTP AUTH, IMAP, POP3, the HTTP API): the account's argon2 hash
//! checked off the async threads, and one brake on guessing shared by all of them, so that a
//! client cannot spread its guesses over protocols. Each failed login from an address makes
//! its next answer slower, and many in a short time refuse logins from it for a while.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::store::Store;

pub const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A login as the client gave it.
#[derive(Debug)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// A SASL PLAIN response, base64-encoded (RFC 4616).
pub fn decode_plain(encoded: &str) -> Option<Credentials> {
    decode_plain_bytes(&B64.decode(encoded.trim()).ok()?)
}

/// `authzid\0user\0password`, decoded; the authorization identity must be empty or the user
/// itself.
pub fn decode_plain_bytes(raw: &[u8]) -> Option<Credentials> {
    let mut parts = raw.split(|&b| b == 0);
    let authzid = parts.next()?;
    let user = std::str::from_utf8(parts.next()?).ok()?;
    let password = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() || (!authzid.is_empty() && authzid != user.as_bytes()) {
        return None;
    }
    Some(Credentials {
        user: user.to_owned(),
        password: password.to_owned(),
    })
}

/// Whether `password` matches `hash` (argon2 runs off the async threads). An unknown account
/// is checked against a made-up hash, so it takes as long as a wrong password.
pub async fn check(hash: Option<String>, password: String) -> bool {
    const UNKNOWN: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0DLBnGqMOC8V1RQgWTB1b6Se0ukVxN5YRGxyL6p+3NU";
    let known = hash.is_some();
    let hash = hash.unwrap_or_else(|| UNKNOWN.to_owned());
    let matched =
        tokio::task::spawn_blocking(move || crate::store::verify_password(&hash, &password))
            .await
            .unwrap_or(false);
    known && matched
}

/// How a login went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// The account's address, lower-cased.
    Accepted(String),
    /// Wrong address or password (answered after the brake's delay).
    Refused,
    /// Too many failures from this address lately.
    Blocked,
    /// The store could not be asked.
    Unavailable,
}

/// Checks logins against the store, with the brake on guessing.
#[derive(Debug)]
pub struct Logins {
    store: Store,
    failures: FailureLimiter,
}

impl Logins {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            failures: FailureLimiter::default(),
        }
    }

    /// Whether logins from `ip` are refused for now.
    pub fn blocked(&self, ip: IpAddr) -> bool {
        self.failures.blocked(ip)
    }

    /// Checks `user` and `password`; a failure is answered only after the brake's delay.
    pub async fn login(&self, ip: IpAddr, protocol: &str, user: &str, password: String) -> Login {
        if self.failures.blocked(ip) {
            return Login::Blocked;
        }
        let user = user.trim().to_ascii_lowercase();
        let hash = match self.store.password_hash(&user).await {
            Ok(hash) => hash,
            Err(err) => {
                tracing::error!(error = %err, "account lookup failed");
                return Login::Unavailable;
            }
        };
        if check(hash, password).await {
            // Failures are not forgotten on success: one account's login must not reset the
            // count of guesses at others from the same address.
            Login::Accepted(user)
        } else {
            let delay = self.failures.failed(ip);
            tracing::info!(%ip, %user, protocol, "failed login");
            tokio::time::sleep(delay).await;
            Login::Refused
        }
    }
}

/// Failed logins per client address.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// Failures within this window count together.
const WINDOW: Duration = Duration::from_secs(600);
/// This many in the window and logins are refused until it passes.
const BLOCK_AFTER: u32 = 10;

impl FailureLimiter {
    /// Records a failure; returns how long to wait before answering it.
    pub fn failed(&self, ip: IpAddr) -> Duration {
        let Ok(mut failures) = self.failures.lock() else {
            return Duration::from_secs(1);
        };
        failures.retain(|_, (_, at)| at.elapsed() < WINDOW);
        let entry = failures.entry(ip).or_insert((0, Instant::now()));
        entry.0 += 1;
        entry.1 = Instant::now();
        Duration::from_millis(250u64.saturating_mul(1 << entry.0.min(5)))
    }

    pub fn blocked(&self, ip: IpAddr) -> bool {
        self.failures.lock().is_ok_and(|failures| {
            failures
                .get(&ip)
                .is_some_and(|(count, at)| *count >= BLOCK_AFTER && at.elapsed() < WINDOW)
        })
    }

    pub fn forget(&self, ip: IpAddr) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_responses_decode() {
        let encoded = B64.encode(b"\0alice@example.test\0s3cret");
        let credentials = decode_plain(&encoded).expect("decodes");
        assert_eq!(credentials.user, "alice@example.test");
        assert_eq!(credentials.password, "s3cret");
        assert!(decode_plain(&B64.encode(b"mallory\0alice\0x")).is_none());
        assert!(decode_plain("%%%").is_none());
    }

    #[test]
    fn failures_slow_down_then_block() {
        let limiter = FailureLimiter::default();
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let first = limiter.failed(ip);
        let second = limiter.failed(ip);
        assert!(second > first);
        for _ in 0..8 {
            limiter.failed(ip);
        }
        assert!(limiter.blocked(ip));
        limiter.forget(ip);
        assert!(!limiter.blocked(ip));
    }
}
