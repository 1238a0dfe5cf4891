//! One connection to the PostgreSQL backend: TCP, TLS as `sslmode` says, the startup and
//! authentication (SCRAM-SHA-256, MD5 or cleartext, whatever the backend asks), then either
//! relayed to a client or used for the proxy's own queries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::config::{PostgresUrl, SslMode};
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::wire::{self, BoxIo, Reader, Writer};
use crate::engine::{SqlError, sqlstate};

/// Largest message the proxy reads whole from the backend for its own queries.
const MAX_OWN_MESSAGE: usize = 64 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach the backend: its URL and, unless `sslmode=disable`, the TLS client settings.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: PostgresUrl,
    tls: Option<Arc<ClientConfig>>,
}

fn config_error(message: String) -> SqlError {
    SqlError::new(sqlstate::INVALID_PARAMETER_VALUE, message)
}

impl Target {
    pub fn new(url: PostgresUrl) -> Result<Self, SqlError> {
        let tls = match url.sslmode {
            SslMode::Disable => None,
            mode => Some(Arc::new(client_config(mode, url.sslrootcert.as_deref())?)),
        };
        Ok(Self { url, tls })
    }

    /// A new authenticated connection to `database`.
    pub async fn connect(&self, database: &str) -> Result<Connection, SqlError> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.connect_inner(database))
            .await
            .map_err(|_| {
                unavailable(format!(
                    "the PostgreSQL backend at {}:{} did not answer within {CONNECT_TIMEOUT:?}",
                    self.url.host, self.url.port
                ))
            })?
    }

    /// TCP, then TLS if the mode asks for it and the server agrees.
    async fn open(&self) -> Result<BoxIo, SqlError> {
        let url = &self.url;
        let mut tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|err| {
                unavailable(format!(
                    "cannot reach the PostgreSQL backend at {}:{}: {err}",
                    url.host, url.port
                ))
            })?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let mut request = BytesMut::new();
        frontend::ssl_request(&mut request);
        tcp.write_all(&request).await.map_err(io_error)?;
        let answer = tcp.read_u8().await.map_err(io_error)?;
        if answer != b'S' {
            if url.sslmode.always_tls() {
                return Err(unavailable(format!(
                    "the PostgreSQL backend at {}:{} does not offer TLS (sslmode={:?})",
                    url.host, url.port, url.sslmode
                )));
            }
            return Ok(Box::new(tcp));
        }
        let name = ServerName::try_from(url.host.clone())
            .map_err(|_| config_error(format!("{:?} is not a TLS server name", url.host)))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
            .connect(name, tcp)
            .await
            .map_err(|err| {
                unavailable(format!(
                    "TLS with the PostgreSQL backend at {}:{} failed: {err}",
                    url.host, url.port
                ))
            })?;
        Ok(Box::new(stream))
    }

    async fn connect_inner(&self, database: &str) -> Result<Connection, SqlError> {
        let url = &self.url;
        let io = self.open().await?;
        let (mut reader, mut writer) = wire::split(io);
        let mut out = BytesMut::new();
        frontend::startup_message(
            [
                ("user", url.user.as_str()),
                ("database", database),
                ("client_encoding", "UTF8"),
                ("application_name", "quartet-db"),
            ],
            &mut out,
        )
        .map_err(io_error)?;
        send(&mut writer, &mut out).await?;
        let mut scram: Option<ScramSha256> = None;
        let mut parameters = BTreeMap::new();
        let mut key = (0, 0);
        loop {
            let (tag, body) = wire::read_message(&mut reader, MAX_OWN_MESSAGE)
                .await
                .map_err(io_error)?;
            match tag {
                b'R' => {
                    let code = body
                        .get(..4)
                        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    let data = body.get(4..).unwrap_or_default();
                    match code {
                        Some(0) => {}
                        Some(3) => {
                            frontend::password_message(url.password.as_bytes(), &mut out)
                                .map_err(io_error)?;
                            send(&mut writer, &mut out).await?;
                        }
                        Some(5) => {
                            let salt: [u8; 4] = data
                                .get(..4)
                                .and_then(|s| s.try_into().ok())
                                .ok_or_else(|| protocol("short MD5 salt"))?;
                            let hash = postgres_protocol::authentication::md5_hash(
                                url.user.as_bytes(),
                                url.password.as_bytes(),
                                salt,
                            );
                            frontend::password_message(hash.as_bytes(), &mut out)
                                .map_err(io_error)?;
                            send(&mut writer, &mut out).await?;
                        }
                        Some(10) => {
                            let offered = data
                                .split(|&b| b == 0)
                                .any(|mechanism| mechanism == SCRAM_SHA_256.as_bytes());
                            if !offered {
                                return Err(protocol(
                                    "the backend offers no SASL mechanism this proxy speaks",
                                ));
                            }
                            let exchange = ScramSha256::new(
                                url.password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            frontend::sasl_initial_response(
                                SCRAM_SHA_256,
                                exchange.message(),
                                &mut out,
                            )
                            .map_err(io_error)?;
                            send(&mut writer, &mut out).await?;
                            scram = Some(exchange);
                        }
                        Some(11) => {
                            let exchange = scram
                                .as_mut()
                                .ok_or_else(|| protocol("SASL out of order"))?;
                            exchange
                                .update(data)
                                .map_err(|e| backend_auth(e.to_string()))?;
                            frontend::sasl_response(exchange.message(), &mut out)
                                .map_err(io_error)?;
                            send(&mut writer, &mut out).await?;
                        }
                        Some(12) => {
                            let exchange = scram
                                .as_mut()
                                .ok_or_else(|| protocol("SASL out of order"))?;
                            exchange.finish(data).map_err(|e| {
                                backend_auth(format!("the backend's SCRAM signature: {e}"))
                            })?;
                        }
                        _ => {
                            return Err(protocol(
                                "the backend asks for an authentication method this proxy \
                                 does not speak (use scram-sha-256, md5 or password)",
                            ));
                        }
                    }
                }
                b'S' => {
                    let mut at = 0;
                    if let (Some(name), Some(value)) =
                        (wire::cstr(&body, &mut at), wire::cstr(&body, &mut at))
                    {
                        parameters.insert(name.to_owned(), value.to_owned());
                    }
                }
                b'K' => {
                    if body.len() >= 8 {
                        key = (
                            i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                            i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                        );
                    }
                }
                b'E' => return Err(backend_error(&body)),
                b'N' => {}
                b'Z' => {
                    return Ok(Connection {
                        reader,
                        writer,
                        database: database.to_owned(),
                        key,
                        parameters,
                        status: body.first().copied().unwrap_or(b'I'),
                        idle_since: Instant::now(),
                        permit: None,
                    });
                }
                other => {
                    return Err(protocol(&format!(
                        "unexpected message {:?} during the backend's startup",
                        other as char
                    )));
                }
            }
        }
    }

    /// Asks the backend to cancel what the connection with this key runs.
    pub async fn cancel(&self, key: (i32, i32)) -> Result<(), SqlError> {
        let mut io = tokio::time::timeout(CONNECT_TIMEOUT, self.open())
            .await
            .map_err(|_| unavailable("the backend did not answer".into()))??;
        let mut out = BytesMut::new();
        frontend::cancel_request(key.0, key.1, &mut out);
        io.write_all(&out).await.map_err(io_error)?;
        io.flush().await.map_err(io_error)?;
        // The backend closes the connection once it has the request.
        let mut rest = [0u8; 1];
        let _ = tokio::time::timeout(Duration::from_secs(5), io.read(&mut rest)).await;
        Ok(())
    }
}

async fn send(writer: &mut Writer, out: &mut BytesMut) -> Result<(), SqlError> {
    writer.write_all(out).await.map_err(io_error)?;
    writer.flush().await.map_err(io_error)?;
    out.clear();
    Ok(())
}

pub(crate) fn io_error(err: std::io::Error) -> SqlError {
    unavailable(format!("connection to the PostgreSQL backend: {err}"))
}

fn unavailable(message: String) -> SqlError {
    // 08006: connection failure, what libpq reports for a lost server.
    SqlError::new(sqlstate::intern("08006"), message)
}

fn protocol(message: &str) -> SqlError {
    SqlError::new(sqlstate::PROTOCOL_VIOLATION, message.to_owned())
}

fn backend_auth(message: String) -> SqlError {
    SqlError::new(sqlstate::INVALID_AUTHORIZATION, message)
}

/// The backend's ErrorResponse as an [`SqlError`] with its own SQLSTATE.
pub(crate) fn backend_error(body: &[u8]) -> SqlError {
    let (code, text) = wire::parse_error(body);
    SqlError::new(sqlstate::intern(&code), text)
}

/// A result of the proxy's own queries: columns (name, type OID), rows in text form, the tag.
#[derive(Debug, Default)]
pub struct Outcome {
    pub columns: Vec<(String, u32)>,
    pub rows: Vec<Vec<Option<String>>>,
    pub tag: String,
    /// More rows than asked for were available.
    pub truncated: bool,
}

/// An authenticated connection to the backend.
pub struct Connection {
    pub reader: Reader,
    pub writer: Writer,
    pub database: String,
    /// The backend's process ID and secret key, for CancelRequest.
    pub key: (i32, i32),
    /// The backend's ParameterStatus values, kept current.
    pub parameters: BTreeMap<String, String>,
    /// The last ReadyForQuery status: `I`dle, in `T`ransaction, `E`rror.
    pub status: u8,
    pub idle_since: Instant,
    /// The pool's slot, given back when the connection closes.
    pub(crate) permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("database", &self.database)
            .field("backend_pid", &self.key.0)
            .field("status", &(self.status as char))
            .finish()
    }
}

impl Connection {
    /// Runs `sql` with the simple protocol; the rows of its last result, or its first error.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Outcome, SqlError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(io_error)?;
        send(&mut self.writer, &mut out).await?;
        self.read_until_ready(usize::MAX).await
    }

    /// Runs one statement with the extended protocol: parameters as text of unknown type (the
    /// backend infers them, as for a literal), results as text; at most `max_rows` rows.
    pub async fn query(
        &mut self,
        sql: &str,
        params: &[Option<String>],
        max_rows: usize,
    ) -> Result<Outcome, SqlError> {
        let mut out = BytesMut::new();
        let encode =
            |e: std::io::Error| SqlError::new(sqlstate::PROGRAM_LIMIT_EXCEEDED, e.to_string());
        frontend::parse("", sql, std::iter::repeat_n(0u32, params.len()), &mut out)
            .map_err(encode)?;
        frontend::bind(
            "",
            "",
            std::iter::empty::<i16>(),
            params,
            |param, buf| match param {
                Some(text) => {
                    buf.extend_from_slice(text.as_bytes());
                    Ok(postgres_protocol::IsNull::No)
                }
                None => Ok(postgres_protocol::IsNull::Yes),
            },
            std::iter::empty::<i16>(),
            &mut out,
        )
        .map_err(|err| match err {
            frontend::BindError::Conversion(e) => {
                SqlError::new(sqlstate::INVALID_PARAMETER_VALUE, e.to_string())
            }
            frontend::BindError::Serialization(e) => encode(e),
        })?;
        frontend::describe(b'P', "", &mut out).map_err(encode)?;
        let limit = i32::try_from(max_rows.saturating_add(1)).unwrap_or(i32::MAX);
        frontend::execute("", limit, &mut out).map_err(encode)?;
        frontend::sync(&mut out);
        send(&mut self.writer, &mut out).await?;
        self.read_until_ready(max_rows).await
    }

    async fn read_until_ready(&mut self, max_rows: usize) -> Result<Outcome, SqlError> {
        let mut outcome = Outcome::default();
        let mut error = None;
        loop {
            let (tag, body) = wire::read_message(&mut self.reader, MAX_OWN_MESSAGE)
                .await
                .map_err(io_error)?;
            match tag {
                b'T' => {
                    outcome = Outcome::default();
                    outcome.columns = row_description(&body);
                }
                b'D' => {
                    if outcome.rows.len() >= max_rows {
                        outcome.truncated = true;
                    } else {
                        outcome.rows.push(data_row(&body));
                    }
                }
                b's' => outcome.truncated = true,
                b'C' => {
                    let mut at = 0;
                    outcome.tag = wire::cstr(&body, &mut at).unwrap_or_default().to_owned();
                }
                b'E' if error.is_none() => error = Some(backend_error(&body)),
                b'S' => {
                    let mut at = 0;
                    if let (Some(name), Some(value)) =
                        (wire::cstr(&body, &mut at), wire::cstr(&body, &mut at))
                    {
                        self.parameters.insert(name.to_owned(), value.to_owned());
                    }
                }
                b'Z' => {
                    self.status = body.first().copied().unwrap_or(b'I');
                    return match error {
                        Some(err) => Err(err),
                        None => Ok(outcome),
                    };
                }
                // ParseComplete, BindComplete, NoData, notices, notifications, empty query.
                _ => {}
            }
        }
    }
}

fn be_u16(body: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(body.get(at..at + 2)?.try_into().ok()?))
}

fn be_i32(body: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?))
}

fn row_description(body: &[u8]) -> Vec<(String, u32)> {
    let count = be_u16(body, 0).unwrap_or(0);
    let mut at = 2;
    let mut columns = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let Some(name) = wire::cstr(body, &mut at) else {
            break;
        };
        let oid = be_i32(body, at + 6).unwrap_or(0) as u32;
        columns.push((name.to_owned(), oid));
        at += 18;
    }
    columns
}

fn data_row(body: &[u8]) -> Vec<Option<String>> {
    let count = be_u16(body, 0).unwrap_or(0);
    let mut at = 2;
    let mut values = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let Some(length) = be_i32(body, at) else {
            break;
        };
        at += 4;
        if length < 0 {
            values.push(None);
            continue;
        }
        let end = at + length as usize;
        let Some(bytes) = body.get(at..end) else {
            break;
        };
        values.push(Some(String::from_utf8_lossy(bytes).into_owned()));
        at = end;
    }
    values
}

/// TLS client settings for `sslmode`: which certificates are trusted, and what is checked.
fn client_config(
    mode: SslMode,
    root_file: Option<&std::path::Path>,
) -> Result<ClientConfig, SqlError> {
    use rustls::pki_types::pem::PemObject as _;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    match root_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| config_error(format!("sslrootcert {}: {e}", path.display())))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(config_error(format!(
                    "sslrootcert {} holds no certificate",
                    path.display()
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let verify = |check_name: bool| -> Result<Arc<dyn ServerCertVerifier>, SqlError> {
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots.clone()),
            Arc::clone(&provider),
        )
        .build()
        .map_err(|e| config_error(e.to_string()))?;
        Ok(Arc::new(Verifier {
            webpki: Some(webpki),
            check_name,
            provider: Arc::clone(&provider),
        }))
    };
    // libpq: `require` with a root certificate file verifies like `verify-ca`.
    let verifier = match mode {
        SslMode::VerifyFull => verify(true)?,
        SslMode::VerifyCa => verify(false)?,
        SslMode::Require if root_file.is_some() => verify(false)?,
        _ => Arc::new(Verifier {
            webpki: None,
            check_name: false,
            provider: Arc::clone(&provider),
        }),
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The certificate check `sslmode` asks for: the web PKI's, without the name for `verify-ca`,
/// or none (encryption only) for `prefer`/`require` without a root certificate.
#[derive(Debug)]
struct Verifier {
    webpki: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
