//! HTTP Basic authentication against argon2 or bcrypt hashes.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use base64::Engine;

use crate::sites::AuthRule;

/// How many verified `Authorization` values a rule remembers.
const VERIFIED_CAPACITY: usize = 256;

/// Password hashing is slow and memory-hungry on purpose (argon2: ~19 MiB each); at most this
/// many run at once, whatever the number of clients guessing.
static VERIFYING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKind {
    Argon2,
    Bcrypt,
}

/// Recognises a stored password hash; `None` for anything else (a plain password included).
pub fn hash_kind(hash: &str) -> Option<HashKind> {
    if hash.starts_with("$argon2") {
        argon2::PasswordHash::new(hash)
            .ok()
            .map(|_| HashKind::Argon2)
    } else if (hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$"))
        && hash.len() == 60
    {
        Some(HashKind::Bcrypt)
    } else {
        None
    }
}

/// Whether the request carries credentials the rule accepts. Hash verification is slow on
/// purpose, so it runs on the blocking pool and a success is remembered.
pub async fn authorized(rule: &AuthRule, headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    if rule
        .verified
        .lock()
        .is_ok_and(|verified| verified.iter().any(|v| v == value))
    {
        return true;
    }
    let Some(encoded) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Ok(decoded) = String::from_utf8(decoded) else {
        return false;
    };
    let Some((user, password)) = decoded.split_once(':') else {
        return false;
    };
    let Some(hash) = rule.users.get(user).cloned() else {
        return false;
    };
    let password = password.to_owned();
    let Ok(_permit) = VERIFYING.acquire().await else {
        return false;
    };
    let ok = tokio::task::spawn_blocking(move || verify(&hash, &password))
        .await
        .unwrap_or(false);
    if ok && let Ok(mut verified) = rule.verified.lock() {
        if verified.len() >= VERIFIED_CAPACITY {
            verified.remove(0);
        }
        verified.push(value.to_owned());
    }
    ok
}

fn verify(hash: &str, password: &str) -> bool {
    match hash_kind(hash) {
        Some(HashKind::Argon2) => {
            use argon2::PasswordVerifier;
            argon2::PasswordHash::new(hash).is_ok_and(|parsed| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        }
        Some(HashKind::Bcrypt) => bcrypt::verify(password, hash).unwrap_or(false),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_hashes_and_refuses_plain_text() {
        let bcrypt = bcrypt::hash("secret", 4).unwrap();
        assert_eq!(hash_kind(&bcrypt), Some(HashKind::Bcrypt));
        assert!(verify(&bcrypt, "secret"));
        assert!(!verify(&bcrypt, "wrong"));
        assert_eq!(hash_kind("secret"), None);
        assert_eq!(hash_kind("$argon2id$nonsense"), None);
    }
}
