//! AUTH PLAIN and LOGIN (RFC 4954, 4616), and the brake on guessing: each failed login from an
//! address makes its next reply slower, and many in a short time refuse AUTH from it for a
//! while.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::AsyncWriteExt as _;

use super::{Conn, MAX_LINE, data};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A login as the client gave it.
#[derive(Debug)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// `\0user\0password` (an authorization identity before the first NUL must be empty or the
/// user itself).
pub fn decode_plain(encoded: &str) -> Option<Credentials> {
    let raw = B64.decode(encoded.trim()).ok()?;
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

async fn read_response(conn: &mut Conn, prompt: &str) -> std::io::Result<Option<String>> {
    conn.reply(prompt).await?;
    conn.writer.flush().await?;
    let mut line = Vec::new();
    data::read_capped(&mut conn.reader, &mut line, MAX_LINE).await?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let text = String::from_utf8_lossy(&line).trim().to_owned();
    Ok((text != "*").then_some(text))
}

/// Runs the mechanism's exchange; `Err(reply)` when the client cancelled or sent nonsense.
pub(super) async fn read_credentials(
    conn: &mut Conn,
    mechanism: u64,
    initial: String,
) -> std::io::Result<Result<Credentials, &'static str>> {
    const CANCELLED: &str = "501 5.7.0 Authentication cancelled\r\n";
    const MALFORMED: &str = "501 5.5.2 Cannot decode the response\r\n";
    if mechanism == smtp_proto::AUTH_PLAIN {
        let response = if initial.is_empty() {
            match read_response(conn, "334 \r\n").await? {
                Some(text) => text,
                None => return Ok(Err(CANCELLED)),
            }
        } else {
            initial
        };
        return Ok(decode_plain(&response).ok_or(MALFORMED));
    }
    if mechanism == smtp_proto::AUTH_LOGIN {
        let user = if initial.is_empty() {
            match read_response(conn, "334 VXNlcm5hbWU6\r\n").await? {
                Some(text) => text,
                None => return Ok(Err(CANCELLED)),
            }
        } else {
            initial
        };
        let Some(password) = read_response(conn, "334 UGFzc3dvcmQ6\r\n").await? else {
            return Ok(Err(CANCELLED));
        };
        let decode = |text: &str| {
            B64.decode(text)
                .ok()
                .and_then(|raw| String::from_utf8(raw).ok())
        };
        return Ok(match (decode(&user), decode(&password)) {
            (Some(user), Some(password)) => Ok(Credentials { user, password }),
            _ => Err(MALFORMED),
        });
    }
    Ok(Err(
        "504 5.5.4 Mechanism not supported: use PLAIN or LOGIN\r\n",
    ))
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

/// Failed logins per client address.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// Failures within this window count together.
const WINDOW: Duration = Duration::from_secs(600);
/// This many in the window and AUTH is refused until it passes.
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
