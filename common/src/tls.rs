//! TLS for every listener: PEM loading, the development CA, hot reload on SIGHUP and one
//! acceptor type for implicit TLS and STARTTLS upgrades.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::Config;
use crate::shutdown::Shutdown;

/// How long a client may take to finish a TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate file {path}: {reason}")]
    ReadCert { path: PathBuf, reason: String },
    #[error("certificate file {path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("cannot read private key file {path}: {reason}")]
    ReadKey { path: PathBuf, reason: String },
    #[error("private key in {path} is not usable: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("private key {key} does not belong to certificate {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot generate the development certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "development TLS directory {dir} is incomplete ({missing} is missing): remove the directory to regenerate it"
    )]
    IncompleteDevDir { dir: PathBuf, missing: &'static str },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Makes ring the process's rustls provider. Safe to call any number of times, from any role.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed; ring is the only one we build.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Loads a PEM certificate chain and its private key, and checks that they belong together.
pub fn load_certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|err| TlsError::ReadCert {
            path: cert_path.into(),
            reason: err.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|err| TlsError::ReadCert {
            path: cert_path.into(),
            reason: err.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|err| TlsError::ReadKey {
        path: key_path.into(),
        reason: err.to_string(),
    })?;
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|err| TlsError::BadKey {
            path: key_path.into(),
            reason: err.to_string(),
        })?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified.keys_match().map_err(|_| TlsError::KeyMismatch {
        cert: cert_path.into(),
        key: key_path.into(),
    })?;
    Ok(certified)
}

/// The files of the generated development PKI, under `data_dir/tls/`.
#[derive(Debug, Clone)]
pub struct DevCertificates {
    /// The CA certificate a user or test trusts.
    pub ca_cert: PathBuf,
    /// Leaf for localhost, 127.0.0.1 and ::1, followed by the CA certificate.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl DevCertificates {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }
}

/// Returns the development CA and leaf under `data_dir/tls/`, generating them on first use.
///
/// They are written to a scratch directory and renamed into place, so roles starting together
/// in one process (or two processes) never mix a leaf with another run's CA.
pub fn ensure_dev_certificates(data_dir: &Path) -> Result<DevCertificates, TlsError> {
    let dir = data_dir.join("tls");
    let files = DevCertificates::in_dir(&dir);
    if dir.exists() {
        for (path, name) in [
            (&files.ca_cert, "ca.pem"),
            (&dir.join("ca-key.pem"), "ca-key.pem"),
            (&files.cert, "cert.pem"),
            (&files.key, "key.pem"),
        ] {
            if !path.exists() {
                return Err(TlsError::IncompleteDevDir { dir, missing: name });
            }
        }
        if leaf_expires_soon(&dir) {
            renew_dev_leaf(&dir)?;
        }
        return Ok(files);
    }

    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Write { path, source }
    };
    std::fs::create_dir_all(data_dir).map_err(write_err(data_dir))?;
    let scratch = scratch_path(data_dir, ".tls");
    std::fs::create_dir_all(&scratch).map_err(write_err(&scratch))?;

    let result = generate_dev_ca().and_then(|(ca_params, ca_key)| {
        let ca_cert = ca_params.self_signed(&ca_key)?.pem();
        write_file(&scratch.join("ca.pem"), ca_cert.as_bytes(), 0o644)?;
        write_file(
            &scratch.join("ca-key.pem"),
            ca_key.serialize_pem().as_bytes(),
            0o600,
        )?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        write_dev_leaf(&scratch, &issuer, &ca_cert)
    });
    if let Err(err) = result {
        let _ = std::fs::remove_dir_all(&scratch);
        return Err(err);
    }
    if std::fs::rename(&scratch, &dir).is_err() {
        // Someone else won the race; theirs is as good as ours.
        let _ = std::fs::remove_dir_all(&scratch);
        if !files.key.exists() {
            return Err(TlsError::IncompleteDevDir {
                dir,
                missing: "key.pem",
            });
        }
        return Ok(files);
    }
    tracing::info!(ca = %files.ca_cert.display(), "generated a development CA; trust this file to connect without warnings");
    Ok(files)
}

/// Days a development leaf is valid, and how close to its end it is renewed.
const LEAF_DAYS: u64 = 365;
const RENEW_DAYS_BEFORE: u64 = 30;

fn scratch_path(parent: &Path, prefix: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    parent.join(format!("{prefix}-{}-{nanos}", std::process::id()))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The leaf's expiry is kept beside it (`cert.expires`, Unix seconds) so that no X.509 parser
/// is needed to know when to renew it.
fn leaf_expires_soon(dir: &Path) -> bool {
    let expires = std::fs::read_to_string(dir.join("cert.expires"))
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    expires.is_none_or(|at| at < unix_now() + RENEW_DAYS_BEFORE * 86_400)
}

/// Issues a new leaf from the existing development CA, so users keep trusting the same CA.
/// A lock file keeps two roles starting together from mixing one's key with the other's
/// certificate.
fn renew_dev_leaf(dir: &Path) -> Result<(), TlsError> {
    let lock = dir.join(".renew.lock");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => break,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
                if !leaf_expires_soon(dir) {
                    return Ok(());
                }
            }
            Err(source) => return Err(TlsError::Write { path: lock, source }),
        }
    }
    let result = (|| {
        if !leaf_expires_soon(dir) {
            return Ok(());
        }
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).map_err(|err| TlsError::ReadCert {
                path: dir.join(name),
                reason: err.to_string(),
            })
        };
        let ca_cert = read("ca.pem")?;
        let ca_key = rcgen::KeyPair::from_pem(&read("ca-key.pem")?)?;
        // The CA's subject and key identifier come from its parameters and key, so the same
        // parameters and the stored key make an issuer that signs exactly as the original.
        let issuer = rcgen::Issuer::new(dev_ca_params()?, ca_key);
        let scratch = scratch_path(dir, ".leaf");
        std::fs::create_dir_all(&scratch).map_err(|source| TlsError::Write {
            path: scratch.clone(),
            source,
        })?;
        let written = write_dev_leaf(&scratch, &issuer, &ca_cert);
        let moved = written.and_then(|()| {
            for name in ["key.pem", "cert.pem", "cert.expires"] {
                std::fs::rename(scratch.join(name), dir.join(name)).map_err(|source| {
                    TlsError::Write {
                        path: dir.join(name),
                        source,
                    }
                })?;
            }
            Ok(())
        });
        let _ = std::fs::remove_dir_all(&scratch);
        moved?;
        tracing::info!(cert = %dir.join("cert.pem").display(), "renewed the development certificate");
        Ok(())
    })();
    let _ = std::fs::remove_file(&lock);
    result
}

fn generate_dev_ca() -> Result<(rcgen::CertificateParams, rcgen::KeyPair), TlsError> {
    Ok((dev_ca_params()?, rcgen::KeyPair::generate()?))
}

fn dev_ca_params() -> Result<rcgen::CertificateParams, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose,
    };
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "Quartet Development CA");
    name.push(DnType::OrganizationName, "Quartet (development only)");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = date_at(unix_now().saturating_sub(86_400));
    params.not_after = date_at(unix_now() + 10 * 365 * 86_400);
    Ok(params)
}

/// Writes `key.pem`, `cert.pem` (leaf then CA) and `cert.expires` into `dir`.
fn write_dev_leaf(
    dir: &Path,
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    ca_cert_pem: &str,
) -> Result<(), TlsError> {
    use rcgen::{
        CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
        KeyUsagePurpose,
    };
    let mut params =
        CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into(), "::1".into()])?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "localhost");
    params.distinguished_name = name;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let expires = unix_now() + LEAF_DAYS * 86_400;
    params.not_before = date_at(unix_now().saturating_sub(86_400));
    params.not_after = date_at(expires);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    write_file(&dir.join("key.pem"), key.serialize_pem().as_bytes(), 0o600)?;
    write_file(
        &dir.join("cert.pem"),
        format!("{}{ca_cert_pem}", cert.pem()).as_bytes(),
        0o644,
    )?;
    write_file(
        &dir.join("cert.expires"),
        expires.to_string().as_bytes(),
        0o644,
    )
}

/// The instant `unix` seconds after the epoch, as rcgen wants it.
fn date_at(unix: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix).unwrap_or(i64::MAX))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| TlsError::Write {
            path: path.into(),
            source,
        })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|source| TlsError::Write {
            path: path.into(),
            source,
        })
}

/// The server certificate of a role, swapped atomically on reload so that open connections
/// keep the one they started with and new handshakes get the new one.
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The CA to trust, when the certificate is the generated development one.
    pub dev_ca: Option<PathBuf>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// The configured certificate, or in development (when none is configured) the generated one.
    pub fn from_config(config: &Config) -> Result<Arc<Self>, TlsError> {
        install_crypto_provider();
        let (cert, key, dev_ca) = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone(), None),
            _ => {
                let dev = ensure_dev_certificates(&config.data_dir)?;
                (dev.cert, dev.key, Some(dev.ca_cert))
            }
        };
        Self::from_files(cert, key, dev_ca)
    }

    pub fn from_files(
        cert_path: PathBuf,
        key_path: PathBuf,
        dev_ca: Option<PathBuf>,
    ) -> Result<Arc<Self>, TlsError> {
        let certified = load_certified_key(&cert_path, &key_path)?;
        Ok(Arc::new(Self {
            cert_path,
            key_path,
            current: ArcSwap::from_pointee(certified),
            dev_ca,
        }))
    }

    /// Re-reads the files. A pair that fails to load is rejected and the old one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let certified = load_certified_key(&self.cert_path, &self.key_path)?;
        self.current.store(Arc::new(certified));
        Ok(())
    }

    /// Reloads the certificate every time the process is asked to reload (SIGHUP).
    pub fn reload_on_signal(self: &Arc<Self>, role: &'static str, shutdown: &Shutdown) {
        let store = Arc::clone(self);
        let mut reloads = shutdown.reloads();
        let stop = shutdown.clone();
        shutdown.spawn(async move {
            loop {
                tokio::select! {
                    changed = reloads.changed() => if changed.is_err() { break },
                    () = stop.cancelled() => break,
                }
                match store.reload() {
                    Ok(()) => tracing::info!(role, cert = %store.cert_path.display(), "TLS certificate reloaded"),
                    Err(err) => tracing::error!(role, error = %err, "TLS certificate not reloaded; keeping the current one"),
                }
            }
        });
    }

    /// An acceptor that offers `alpn` (for example `[b"h2", b"http/1.1"]`; empty for none).
    pub fn acceptor(self: &Arc<Self>, alpn: &[&[u8]]) -> Result<TlsAcceptor, TlsError> {
        TlsAcceptor::with_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>, alpn)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Serves implicit TLS (call [`TlsAcceptor::accept`] on a fresh connection) and STARTTLS (call
/// it on the connection after the protocol's upgrade reply). For STARTTLS, pass the raw stream,
/// not a buffered reader over it: whatever the client pipelined before the handshake must be
/// discarded, never read as if it had arrived under TLS.
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: tokio_rustls::TlsAcceptor,
}

impl TlsAcceptor {
    /// The underlying tokio-rustls acceptor, for protocol crates that run the handshake
    /// themselves (pgwire answers PostgreSQL's SSLRequest).
    pub fn rustls(&self) -> tokio_rustls::TlsAcceptor {
        self.inner.clone()
    }
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsAcceptor")
    }
}

impl TlsAcceptor {
    /// An acceptor whose certificate comes from `resolver` (per-SNI certificates, say).
    pub fn with_resolver(
        resolver: Arc<dyn ResolvesServerCert>,
        alpn: &[&[u8]],
    ) -> Result<Self, TlsError> {
        install_crypto_provider();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Self {
            inner: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        })
    }

    /// Runs the server handshake, bounded by [`HANDSHAKE_TIMEOUT`].
    pub async fn accept<IO>(&self, stream: IO) -> io::Result<tokio_rustls::server::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.inner.accept(stream)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certificates_are_generated_once_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_dev_certificates(dir.path()).unwrap();
        let ca_before = std::fs::read(&first.ca_cert).unwrap();
        let second = ensure_dev_certificates(dir.path()).unwrap();
        assert_eq!(ca_before, std::fs::read(&second.ca_cert).unwrap());
        load_certified_key(&second.cert, &second.key).unwrap();
    }

    /// The same acceptor upgrades a connection mid-stream (STARTTLS): plaintext first, then a
    /// handshake on the raw stream, then application data under TLS.
    #[tokio::test]
    async fn acceptor_upgrades_an_open_connection() {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let dir = tempfile::tempdir().unwrap();
        let pki = ensure_dev_certificates(dir.path()).unwrap();
        let store = CertStore::from_files(pki.cert.clone(), pki.key.clone(), None).unwrap();
        let acceptor = store.acceptor(&[]).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            assert_eq!(line, "STARTTLS\r\n");
            // Drop the buffer with the raw stream: nothing read in plaintext survives the upgrade.
            let mut stream = reader.into_inner();
            stream.write_all(b"220 go ahead\r\n").await.unwrap();
            let mut tls = acceptor.accept(stream).await.unwrap();
            let mut hello = [0u8; 5];
            tls.read_exact(&mut hello).await.unwrap();
            tls.write_all(b"world").await.unwrap();
            tls.shutdown().await.unwrap();
            hello
        });

        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(b"STARTTLS\r\n").await.unwrap();
        let mut reply = [0u8; 14];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"220 go ahead\r\n");
        install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&pki.ca_cert).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, client).await.unwrap();
        tls.write_all(b"hello").await.unwrap();
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"world");
        assert_eq!(&server.await.unwrap(), b"hello");
    }

    #[test]
    fn an_expiring_leaf_is_renewed_from_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_dev_certificates(dir.path()).unwrap();
        let ca = std::fs::read(&first.ca_cert).unwrap();
        let leaf = std::fs::read(&first.cert).unwrap();
        // Pretend the leaf expires tomorrow.
        let expires = dir.path().join("tls/cert.expires");
        std::fs::write(&expires, (unix_now() + 86_400).to_string()).unwrap();
        let renewed = ensure_dev_certificates(dir.path()).unwrap();
        assert_eq!(ca, std::fs::read(&renewed.ca_cert).unwrap(), "same CA");
        assert_ne!(leaf, std::fs::read(&renewed.cert).unwrap(), "new leaf");
        load_certified_key(&renewed.cert, &renewed.key).unwrap();
        assert!(!leaf_expires_soon(&dir.path().join("tls")));
        // The renewed leaf verifies against the CA a client already trusts.
        install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&renewed.ca_cert).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        use rustls::client::danger::ServerCertVerifier;
        let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&renewed.cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &name,
                &[],
                rustls_pki_types::UnixTime::now(),
            )
            .unwrap();
    }

    #[test]
    fn mismatched_key_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let a = ensure_dev_certificates(a.path()).unwrap();
        let b = ensure_dev_certificates(b.path()).unwrap();
        let err = load_certified_key(&a.cert, &b.key).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    }
}
