//! The server side of SCRAM-SHA-256 (RFC 5802, RFC 7677) for the proxy's clients, against the
//! catalog's verifiers: the client proves it knows the password, the server proves it holds
//! the verifier, and the password never crosses the wire.

use base64::Engine as _;
use ring::rand::SecureRandom as _;
use ring::{digest, hmac};

use crate::engine::auth::Verifier;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The exchange after the client's first message.
#[derive(Debug)]
pub struct Exchange {
    client_first_bare: String,
    server_first: String,
    nonce: String,
    gs2_header: String,
    verifier: Verifier,
    /// The role is unknown: the exchange runs with a made-up verifier and fails at the end,
    /// so that unknown roles and wrong passwords look the same.
    doomed: bool,
}

/// Why an exchange failed: a malformed message, or a wrong proof.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    Malformed(&'static str),
    WrongPassword,
}

fn random_nonce() -> String {
    let mut raw = [0u8; 18];
    let _ = ring::rand::SystemRandom::new().fill(&mut raw);
    B64.encode(raw)
}

impl Exchange {
    /// Answers the client-first-message (`n,,n=…,r=…`); `verifier` is `None` for an unknown
    /// role. Returns the exchange and the server-first-message.
    pub fn start(
        client_first: &str,
        verifier: Option<Verifier>,
    ) -> Result<(Self, String), Failure> {
        // gs2-header: no channel binding ("n") or "client supports it, server does not" ("y").
        let (cbind, rest) = client_first
            .split_once(',')
            .ok_or(Failure::Malformed("no GS2 header"))?;
        if cbind != "n" && cbind != "y" {
            return Err(Failure::Malformed(
                "channel binding is not offered: use SCRAM-SHA-256",
            ));
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(Failure::Malformed("no GS2 header"))?;
        if !authzid.is_empty() {
            return Err(Failure::Malformed(
                "authorization identities are not supported",
            ));
        }
        let client_nonce = bare
            .split(',')
            .find_map(|attr| attr.strip_prefix("r="))
            .filter(|nonce| !nonce.is_empty())
            .ok_or(Failure::Malformed("no client nonce"))?;
        let doomed = verifier.is_none();
        let verifier = verifier.unwrap_or_else(|| Verifier {
            salt: random_nonce().into_bytes(),
            iterations: 4096,
            stored_key: vec![0; 32],
            server_key: vec![0; 32],
        });
        let nonce = format!("{client_nonce}{}", random_nonce());
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        Ok((
            Self {
                client_first_bare: bare.to_owned(),
                server_first: server_first.clone(),
                nonce,
                gs2_header: format!("{cbind},{authzid},"),
                verifier,
                doomed,
            },
            server_first,
        ))
    }

    /// Checks the client-final-message (`c=…,r=…,p=…`); returns the server-final-message.
    pub fn finish(self, client_final: &str) -> Result<String, Failure> {
        let (without_proof, proof) = client_final
            .rsplit_once(",p=")
            .ok_or(Failure::Malformed("no proof"))?;
        let mut binding = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(value) = attr.strip_prefix("c=") {
                binding = Some(value);
            } else if let Some(value) = attr.strip_prefix("r=") {
                nonce = Some(value);
            }
        }
        if binding != Some(B64.encode(self.gs2_header.as_bytes()).as_str()) {
            return Err(Failure::Malformed("channel binding does not match"));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(Failure::Malformed("nonce does not match"));
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| Failure::Malformed("proof is not base64"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let stored = hmac::Key::new(hmac::HMAC_SHA256, &self.verifier.stored_key);
        let client_signature = hmac::sign(&stored, auth_message.as_bytes());
        if proof.len() != client_signature.as_ref().len() {
            return Err(Failure::WrongPassword);
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(client_signature.as_ref())
            .map(|(a, b)| a ^ b)
            .collect();
        let derived = digest::digest(&digest::SHA256, &client_key);
        let matches = derived
            .as_ref()
            .iter()
            .zip(&self.verifier.stored_key)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
            && self.verifier.stored_key.len() == derived.as_ref().len();
        if !matches || self.doomed {
            return Err(Failure::WrongPassword);
        }
        let server = hmac::Key::new(hmac::HMAC_SHA256, &self.verifier.server_key);
        let server_signature = hmac::sign(&server, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature.as_ref())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// A real client (tokio-postgres's SCRAM) against this server side.
    fn run(password_stored: &str, password_sent: &str) -> Result<(), Failure> {
        let verifier = Verifier::new(password_stored).expect("verifier");
        let mut client = ScramSha256::new(password_sent.as_bytes(), ChannelBinding::unsupported());
        let first = String::from_utf8(client.message().to_vec()).expect("utf8");
        let (exchange, server_first) = Exchange::start(&first, Some(verifier))?;
        client
            .update(server_first.as_bytes())
            .expect("client accepts the server-first-message");
        let client_final = String::from_utf8(client.message().to_vec()).expect("utf8");
        let server_final = exchange.finish(&client_final)?;
        client
            .finish(server_final.as_bytes())
            .expect("client accepts the server signature");
        Ok(())
    }

    #[test]
    fn the_right_password_passes_and_a_wrong_one_fails() {
        assert_eq!(run("s3cret", "s3cret"), Ok(()));
        assert_eq!(run("s3cret", "guess"), Err(Failure::WrongPassword));
        let (exchange, _) = Exchange::start("n,,n=,r=abc", None).expect("starts");
        assert!(exchange.finish("c=biws,r=abcx,p=AAAA").is_err());
        assert!(Exchange::start("p=tls-server-end-point,,n=,r=abc", None).is_err());
    }
}
