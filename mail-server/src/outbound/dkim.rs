//! DKIM signatures (RFC 6376, RFC 8463) on outbound mail, with mail-auth: the key is an
//! Ed25519 or RSA private key in PEM (`[mail.dkim] private_key`), published under
//! `{selector}._domainkey.{domain}`.

use std::path::Path;

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::{DkimSigner, Done};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject as _;

/// Headers signed when the message has them.
const SIGNED_HEADERS: [&str; 11] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
];

/// A loaded signing key.
pub enum Signer {
    Ed25519(DkimSigner<Ed25519Key, Done>),
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Signer::Ed25519(_) => "Signer(ed25519)",
            Signer::Rsa(_) => "Signer(rsa-sha256)",
        })
    }
}

impl Signer {
    /// Reads the key at `path`; the error says why it is not usable.
    pub fn load(path: &Path, domain: &str, selector: &str) -> Result<Self, String> {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let key = PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| format!("{}: not a PEM private key: {e}", path.display()))?;
        if let PrivateKeyDer::Pkcs8(pkcs8) = &key
            && let Ok(ed25519) = Ed25519Key::from_pkcs8_der(pkcs8.secret_pkcs8_der())
        {
            return Ok(Signer::Ed25519(
                DkimSigner::from_key(ed25519)
                    .domain(domain)
                    .selector(selector)
                    .headers(SIGNED_HEADERS),
            ));
        }
        let rsa = RsaKey::<Sha256>::from_key_der(key)
            .map_err(|e| format!("{}: neither an Ed25519 nor an RSA key: {e}", path.display()))?;
        Ok(Signer::Rsa(
            DkimSigner::from_key(rsa)
                .domain(domain)
                .selector(selector)
                .headers(SIGNED_HEADERS),
        ))
    }

    /// The message with its `DKIM-Signature` header in front.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let signature = match self {
            Signer::Ed25519(signer) => signer.sign(message),
            Signer::Rsa(signer) => signer.sign(message),
        }
        .map_err(|e| e.to_string())?;
        let mut signed = signature.to_header().into_bytes();
        signed.extend_from_slice(message);
        Ok(signed)
    }
}
