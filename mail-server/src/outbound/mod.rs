//! Delivery of the outbound queue with lettre: through the smarthost in `[mail.relay]`, or to
//! each recipient domain's MX (hickory-resolver; the domain itself when it has no MX, nothing
//! for a null MX). One SMTP transaction per recipient, so each has its own outcome: a 2xx is
//! delivered, a 5xx fails at once, anything else is tried again after the next of
//! `mail.retry_intervals` until `mail.max_queue_time`. A failure is reported to the sender
//! from `<>` (a bounce is never bounced).

pub mod bounce;
pub mod dkim;

use std::sync::Arc;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::delivery::Release;
use crate::store::{Delivery, Store, StoreError, Target};

/// Where outbound mail is handed over.
#[derive(Debug, Clone)]
pub enum Route {
    /// A smarthost.
    Relay {
        host: String,
        port: u16,
        /// `starttls`, `tls` or `none`.
        tls: String,
        credentials: Option<(String, String)>,
        /// A PEM CA the relay's certificate is checked against (else the web PKI's roots).
        ca: Option<Vec<u8>>,
    },
    /// Each domain's MX, on this port, found through `resolver`.
    Mx {
        port: u16,
        resolver: Arc<hickory_resolver::TokioResolver>,
    },
}

/// A DNS resolver: the system's, or the one server `mail.dns_server` names.
pub fn resolver(
    server: Option<std::net::SocketAddr>,
) -> Result<hickory_resolver::TokioResolver, String> {
    use hickory_resolver::config::{NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    match server {
        None => hickory_resolver::TokioResolver::builder_tokio()
            .and_then(|builder| builder.build())
            .map_err(|e| format!("the system's DNS configuration: {e}")),
        Some(server) => {
            let mut name_server = NameServerConfig::udp_and_tcp(server.ip());
            for connection in &mut name_server.connections {
                connection.port = server.port();
            }
            let config = ResolverConfig::from_parts(None, Vec::new(), vec![name_server]);
            hickory_resolver::Resolver::builder_with_config(config, TokioRuntimeProvider::default())
                .build()
                .map_err(|e| format!("DNS server {server}: {e}"))
        }
    }
}

/// The outcome of one attempt for one recipient.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    /// Try again later.
    Temporary(String),
    /// Give up and tell the sender.
    Permanent(String),
}

/// The queue's deliverer.
pub struct Outbound {
    pub store: Store,
    pub route: Route,
    pub hostname: String,
    /// Local domains: a bounce for a local sender goes straight to its mailbox.
    pub domains: Vec<String>,
    pub retry_intervals: Vec<Duration>,
    pub max_queue_time: Duration,
    /// Signalled when something is queued or a retry is asked for.
    pub wake: Arc<Notify>,
    /// Signs what leaves (production requires it).
    pub dkim: Option<Arc<dkim::Signer>>,
    /// The environment's rule, checked again at send time.
    pub policy: crate::delivery::Policy,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

/// Longest wait between looks at the queue (a retry asked for from another process).
const POLL: Duration = Duration::from_secs(30);
/// The pause after the store failed to record an attempt.
const STORE_BACKOFF: Duration = Duration::from_secs(10);

impl Outbound {
    /// Delivers until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            match self.store.due(100).await {
                Ok(due) if !due.is_empty() => {
                    let mut store_failed = false;
                    for item in due {
                        if stop.is_cancelled() {
                            return;
                        }
                        store_failed |= !self.attempt(item).await;
                    }
                    if store_failed {
                        // The store refused an update: what it could not record is still due,
                        // so wait instead of sending it again at once.
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(STORE_BACKOFF) => {}
                        }
                    }
                    continue;
                }
                Ok(_) => {}
                Err(err) => tracing::error!(error = %err, "reading the outbound queue failed"),
            }
            let wait = match self.store.next_due().await {
                Ok(Some(at)) => {
                    let seconds = (at - common::clock::unix_now()).clamp(0, POLL.as_secs() as i64);
                    Duration::from_secs(seconds as u64)
                }
                _ => POLL,
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait.max(Duration::from_millis(200))) => {}
            }
        }
    }

    /// One attempt; `false` when the store could not be read or updated.
    async fn attempt(&self, item: crate::store::QueuedRecipient) -> bool {
        let raw = match self.store.body(item.body_id).await {
            Ok(raw) => raw,
            Err(err) => {
                tracing::error!(error = %err, queue_id = item.queue_id, "queued message unreadable");
                return false;
            }
        };
        match self
            .policy
            .release(&item.recipient, item.account.as_deref())
        {
            Release::Send => {}
            Release::Capture(target) => return self.capture(&item, target, &raw).await,
            Release::Withhold => {
                let reason = format!(
                    "{}: not on mail.staging_allowlist and no local account to hold a copy; not sent",
                    self.policy.environment().as_str()
                );
                return self.close_unsent(&item, "withheld", &reason).await;
            }
        }
        // Lines end in CRLF on the wire (RFC 5321 §2.3.8), whatever the store holds; before
        // signing, so that the signature covers what is sent.
        let raw = with_crlf(&raw);
        let outcome = match &self.dkim {
            Some(signer) => match signer.sign(&raw) {
                Ok(signed) => {
                    send(
                        &self.route,
                        &self.hostname,
                        &item.sender,
                        &item.recipient,
                        &signed,
                    )
                    .await
                }
                // Never sent unsigned when a key is configured: tried again later.
                Err(err) => {
                    tracing::error!(error = %err, queue_id = item.queue_id, "DKIM signing failed");
                    Attempt::Temporary(format!("DKIM signing failed: {err}"))
                }
            },
            None => {
                send(
                    &self.route,
                    &self.hostname,
                    &item.sender,
                    &item.recipient,
                    &raw,
                )
                .await
            }
        };
        let now = common::clock::unix_now();
        let age = Duration::from_secs((now - item.created_at).max(0) as u64);
        let (status, next, error, bounce) = match &outcome {
            Attempt::Delivered => ("delivered", now, None, None),
            Attempt::Permanent(error) => ("failed", now, Some(error.clone()), Some(error.clone())),
            Attempt::Temporary(error) if age >= self.max_queue_time => {
                let reason = format!("{error} (gave up after {}s in the queue)", age.as_secs());
                ("failed", now, Some(error.clone()), Some(reason))
            }
            Attempt::Temporary(error) => {
                let index =
                    (item.attempts as usize).min(self.retry_intervals.len().saturating_sub(1));
                let wait = self.retry_intervals.get(index).copied().unwrap_or(POLL);
                (
                    "pending",
                    now + wait.as_secs() as i64,
                    Some(error.clone()),
                    None,
                )
            }
        };
        tracing::info!(
            queue_id = item.queue_id,
            recipient = %item.recipient,
            attempt = item.attempts + 1,
            status,
            error = error.as_deref().unwrap_or(""),
            "outbound delivery attempt"
        );
        match self
            .store
            .record_attempt(
                item.queue_id,
                &item.recipient,
                status,
                next,
                error.as_deref(),
            )
            .await
        {
            Ok(true) => {}
            // Deleted meanwhile (`queue delete`): neither recorded nor bounced.
            Ok(false) => return true,
            Err(err) => {
                tracing::error!(error = %err, "recording a delivery attempt failed");
                return false;
            }
        }
        if let Some(reason) = bounce
            && !self.bounce(&item, &reason, &raw).await
        {
            // The sender must hear of it: the recipient waits and is tried (and reported) again.
            let retry = common::clock::unix_now() + STORE_BACKOFF.as_secs() as i64 * 6;
            let kept = self
                .store
                .record_attempt(
                    item.queue_id,
                    &item.recipient,
                    "pending",
                    retry,
                    Some("the bounce could not be stored"),
                )
                .await;
            return kept.is_ok();
        }
        if let Err(err) = self.store.finish(item.queue_id).await {
            tracing::error!(error = %err, "closing a queue entry failed");
            return false;
        }
        true
    }

    /// A recipient this environment does not send to: a copy into `target` (a capture
    /// mailbox) instead, and the entry closed. No bounce: nothing failed.
    async fn capture(
        &self,
        item: &crate::store::QueuedRecipient,
        target: Target,
        raw: &[u8],
    ) -> bool {
        let delivery = Delivery {
            metadata: crate::message::metadata(raw),
            raw: raw.to_vec(),
            envelope_from: item.sender.clone(),
            targets: vec![target.clone()],
            account: None,
        };
        let environment = self.policy.environment().as_str();
        match self.store.deliver(delivery).await {
            Ok(()) => {
                let Target::Mailbox { account, .. } = &target else {
                    return self.close_unsent(item, "captured", environment).await;
                };
                tracing::info!(
                    queue_id = item.queue_id,
                    recipient = %item.recipient,
                    %account,
                    "{environment}: not sent, captured"
                );
                let reason = format!("{environment}: not sent, captured for {account}");
                self.close_unsent(item, "captured", &reason).await
            }
            // No such account to hold the copy: nothing later will change that.
            Err(StoreError::Invalid(err)) => {
                let reason = format!("{environment}: not sent, and the capture failed: {err}");
                self.close_unsent(item, "withheld", &reason).await
            }
            // The store failing (a failed fsync…): the entry stays, to be captured later.
            Err(err) => {
                tracing::error!(error = %err, queue_id = item.queue_id, "capturing an outbound message failed");
                false
            }
        }
    }

    /// Records a recipient that is not sent to (and is not to be tried again) and closes the
    /// entry when nobody else in it waits.
    async fn close_unsent(
        &self,
        item: &crate::store::QueuedRecipient,
        status: &str,
        reason: &str,
    ) -> bool {
        tracing::info!(queue_id = item.queue_id, recipient = %item.recipient, status, reason, "outbound recipient not sent");
        let now = common::clock::unix_now();
        match self
            .store
            .record_attempt(item.queue_id, &item.recipient, status, now, Some(reason))
            .await
        {
            Ok(_) => self.store.finish(item.queue_id).await.is_ok(),
            Err(err) => {
                tracing::error!(error = %err, "recording an unsent recipient failed");
                false
            }
        }
    }

    /// Tells the sender; nothing for the null sender (a bounce is never bounced). `false` when
    /// the report could not be stored.
    async fn bounce(&self, item: &crate::store::QueuedRecipient, reason: &str, raw: &[u8]) -> bool {
        if item.sender.is_empty() {
            tracing::info!(recipient = %item.recipient, "a bounce could not be delivered; dropped");
            return true;
        }
        let report = bounce::report(
            &self.hostname,
            &item.sender,
            &item.recipient,
            reason,
            item.created_at,
            raw,
        );
        let local = item
            .sender
            .rsplit_once('@')
            .is_some_and(|(_, d)| self.domains.iter().any(|l| l.eq_ignore_ascii_case(d)));
        let targets = if local {
            match self.store.resolve(&item.sender).await {
                Ok(accounts) => accounts.iter().map(|a| Target::inbox(a)).collect(),
                Err(_) => Vec::new(),
            }
        } else {
            vec![Target::Queue {
                recipient: item.sender.clone(),
            }]
        };
        if targets.is_empty() {
            tracing::info!(sender = %item.sender, "the sender of a failed message is gone; no bounce");
            return true;
        }
        let delivery = Delivery {
            metadata: crate::message::metadata(&report),
            raw: report,
            envelope_from: String::new(),
            targets,
            account: None,
        };
        match self.store.deliver(delivery).await {
            Ok(()) => {
                tracing::info!(sender = %item.sender, recipient = %item.recipient, "bounce sent");
                self.wake.notify_one();
                true
            }
            Err(err) => {
                tracing::error!(error = %err, "a bounce could not be stored");
                false
            }
        }
    }
}

/// `raw` with every line ending in CRLF: a bare LF or a bare CR becomes CRLF. Borrowed when
/// nothing needs changing.
pub fn with_crlf(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let bare = raw.iter().enumerate().any(|(at, &byte)| match byte {
        b'\n' => at == 0 || raw[at - 1] != b'\r',
        b'\r' => raw.get(at + 1) != Some(&b'\n'),
        _ => false,
    });
    if !bare {
        return std::borrow::Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    let mut at = 0;
    while at < raw.len() {
        match raw[at] {
            b'\r' => {
                // CRs then an LF are one line end (`\r\r\n` must not become an empty line,
                // which in the headers would end them); CRs before anything else each end one.
                let run = raw[at..].iter().take_while(|&&b| b == b'\r').count();
                if raw.get(at + run) == Some(&b'\n') {
                    out.extend_from_slice(b"\r\n");
                    at += run + 1;
                } else {
                    for _ in 0..run {
                        out.extend_from_slice(b"\r\n");
                    }
                    at += run;
                }
            }
            b'\n' => {
                out.extend_from_slice(b"\r\n");
                at += 1;
            }
            byte => {
                out.push(byte);
                at += 1;
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

/// One SMTP transaction for one recipient.
pub async fn send(
    route: &Route,
    hostname: &str,
    sender: &str,
    recipient: &str,
    raw: &[u8],
) -> Attempt {
    let from = if sender.is_empty() {
        None
    } else {
        match sender.parse() {
            Ok(address) => Some(address),
            Err(err) => return Attempt::Permanent(format!("bad sender address {sender}: {err}")),
        }
    };
    let to = match recipient.parse() {
        Ok(address) => address,
        Err(err) => return Attempt::Permanent(format!("bad recipient address {recipient}: {err}")),
    };
    let envelope = match Envelope::new(from, vec![to]) {
        Ok(envelope) => envelope,
        Err(err) => return Attempt::Permanent(err.to_string()),
    };
    // (name for TLS, where to connect) in order of preference.
    let hosts: Vec<(String, String)> = match route {
        Route::Relay { host, .. } => vec![(host.clone(), host.clone())],
        Route::Mx { resolver, .. } => {
            let domain = recipient.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
            let exchangers = match mx_hosts(resolver, domain).await {
                Ok(hosts) => hosts,
                Err(attempt) => return attempt,
            };
            // Addresses through the same resolver, so that what MX said is what is used.
            let mut addresses = Vec::new();
            for exchanger in exchangers {
                match resolver.lookup_ip(format!("{exchanger}.")).await {
                    Ok(ips) => {
                        addresses.extend(ips.iter().map(|ip| (exchanger.clone(), ip.to_string())))
                    }
                    Err(err) => {
                        tracing::debug!(%exchanger, error = %err, "no address for a mail exchanger")
                    }
                }
            }
            addresses
        }
    };
    let mut last = Attempt::Temporary("no mail exchanger answered".into());
    for (name, host) in hosts {
        let transport = match transport(route, &host, &name, hostname) {
            Ok(transport) => transport,
            Err(err) => return Attempt::Temporary(err),
        };
        match transport.send_raw(&envelope, raw).await {
            Ok(_) => return Attempt::Delivered,
            Err(err) if err.is_permanent() => {
                return Attempt::Permanent(format!("{host}: {err}"));
            }
            // A transient reply or no connection: the next exchanger, then later.
            Err(err) => last = Attempt::Temporary(format!("{host}: {err}")),
        }
    }
    last
}

fn transport(
    route: &Route,
    host: &str,
    name: &str,
    hostname: &str,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let params = |verify: bool| {
        let mut builder =
            TlsParameters::builder(name.to_owned()).dangerous_accept_invalid_certs(!verify);
        if let Route::Relay { ca: Some(pem), .. } = route {
            let ca = lettre::transport::smtp::client::Certificate::from_pem(pem)
                .map_err(|e| format!("mail.relay.ca_file: {e}"))?;
            builder = builder.add_root_certificate(ca);
        }
        builder.build_rustls().map_err(|e| e.to_string())
    };
    let builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .hello_name(ClientId::Domain(hostname.to_owned()))
        .timeout(Some(Duration::from_secs(60)));
    let builder = match route {
        Route::Relay {
            port,
            tls,
            credentials,
            ..
        } => {
            let builder = builder.port(*port).tls(match tls.as_str() {
                "tls" => Tls::Wrapper(params(true)?),
                "none" => Tls::None,
                _ => Tls::Required(params(true)?),
            });
            match credentials {
                Some((user, password)) => {
                    builder.credentials(lettre::transport::smtp::authentication::Credentials::new(
                        user.clone(),
                        password.clone(),
                    ))
                }
                None => builder,
            }
        }
        // MX: STARTTLS when offered, without checking the certificate (as MTAs do by
        // default: most MX certificates do not name the host they are reached by).
        Route::Mx { port, .. } => builder.port(*port).tls(Tls::Opportunistic(params(false)?)),
    };
    Ok(builder.build())
}

/// A domain's mail exchangers, best first; the domain itself without MX records (RFC 5321
/// §5.1); a permanent failure for a null MX (RFC 7505) or a domain that does not exist.
async fn mx_hosts(
    resolver: &hickory_resolver::TokioResolver,
    domain: &str,
) -> Result<Vec<String>, Attempt> {
    use hickory_resolver::proto::rr::RData;
    let lookup = match resolver.mx_lookup(format!("{domain}.")).await {
        Ok(lookup) => lookup,
        Err(err) if err.is_nx_domain() => {
            return Err(Attempt::Permanent(format!(
                "domain {domain} does not exist"
            )));
        }
        Err(err) if err.is_no_records_found() => return Ok(vec![domain.to_owned()]),
        Err(err) => return Err(Attempt::Temporary(format!("MX lookup for {domain}: {err}"))),
    };
    let mut exchangers: Vec<(u16, String)> = lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::MX(mx) => Some((mx.preference, mx.exchange.to_utf8())),
            _ => None,
        })
        .collect();
    if exchangers
        .iter()
        .any(|(_, host)| host == "." || host.is_empty())
    {
        return Err(Attempt::Permanent(format!(
            "{domain} does not accept mail (null MX)"
        )));
    }
    exchangers.sort();
    if exchangers.is_empty() {
        return Ok(vec![domain.to_owned()]);
    }
    Ok(exchangers
        .into_iter()
        .map(|(_, host)| host.trim_end_matches('.').to_owned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::QueuedRecipient;

    #[test]
    fn lines_leave_with_crlf() {
        assert!(matches!(
            with_crlf(b"a\r\nb\r\n"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            with_crlf(b"\na\nb\r\nc\rd\r").as_ref(),
            b"\r\na\r\nb\r\nc\r\nd\r\n"
        );
        assert_eq!(
            with_crlf(b"A: 1\r\r\nB: 2\r\n\r\nx\r\r").as_ref(),
            b"A: 1\r\nB: 2\r\n\r\nx\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_bounce_is_never_bounced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).await.expect("store");
        let outbound = Outbound {
            store: store.clone(),
            route: Route::Relay {
                host: "127.0.0.1".into(),
                port: 1,
                tls: "none".into(),
                credentials: None,
                ca: None,
            },
            hostname: "mx.example.test".into(),
            domains: vec!["example.test".into()],
            retry_intervals: vec![Duration::from_secs(1)],
            max_queue_time: Duration::from_secs(1),
            wake: Arc::new(Notify::new()),
            dkim: None,
            policy: crate::delivery::Policy::new(
                common::Environment::Production,
                "dev@localhost",
                &[],
            ),
        };
        let failed_bounce = QueuedRecipient {
            queue_id: 1,
            recipient: "someone@far.test".into(),
            sender: String::new(),
            status: "failed".into(),
            attempts: 1,
            next_attempt: 0,
            created_at: 0,
            last_error: None,
            account: None,
            body_id: 1,
        };
        assert!(
            outbound
                .bounce(&failed_bounce, "550 no", b"Subject: x\r\n\r\n")
                .await
        );
        assert!(
            store.queue().await.expect("queue").is_empty(),
            "nothing queued"
        );
        // A foreign sender's failure is reported through the queue, from <>.
        let foreign = QueuedRecipient {
            sender: "ann@remote.test".into(),
            ..failed_bounce
        };
        assert!(
            outbound
                .bounce(&foreign, "550 no", b"Subject: x\r\n\r\n")
                .await
        );
        let queue = store.queue().await.expect("queue");
        assert_eq!(queue.len(), 1);
        assert_eq!(
            (queue[0].sender.as_str(), queue[0].recipient.as_str()),
            ("", "ann@remote.test")
        );
        store.close().await;
    }
}
