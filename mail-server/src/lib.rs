//! mail-server: SMTP receive and submission into durable mailboxes, and IMAP, POP3 and an
//! HTTP API over the same store.
//!
//! - [`smtp`]: the three SMTP ports (receive, submission with STARTTLS, submissions with TLS).
//! - [`imap`]: IMAP4rev1 on 143 (STARTTLS) and 993 (TLS), with IDLE.
//! - [`pop3`]: POP3 on 110 (STLS) and 995 (TLS).
//! - [`http`]: the HTTP API (the outbound queue; the web inbox grows here).
//! - [`store`]: accounts, aliases, mailboxes, messages and the outbound queue in SQLite or
//!   PostgreSQL, with group commit (a 250 means the message is on disk).
//! - [`auth`]: logins for every protocol, with one brake on guessing.
//! - [`connection`]: what every listener needs around a connection.
//! - [`outbound`]: the queue runner (smarthost or MX, retries, bounces, DKIM).
//! - [`delivery`]: where mail for other domains goes in each environment.
//! - [`message`]: trace headers and the metadata indexed for search.
//! - [`cli`]: `mail-server accounts …`, `aliases …` and `queue …`.

pub mod auth;
pub mod cli;
pub mod connection;
pub mod delivery;
pub mod http;
pub mod imap;
pub mod message;
pub mod outbound;
pub mod pop3;
pub mod smtp;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use common::config::DEV_MAIL_ACCOUNT;
use common::listeners::AcceptLimits;
use common::server::{RoleServer, StartError};
use common::{Config, Environment, Listeners, Role, Shutdown};

/// Why the mail role could not run.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Listener(#[from] common::listeners::ListenerError),
    #[error(transparent)]
    Tls(#[from] common::tls::TlsError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("mail.dkim.private_key: {0}")]
    Dkim(String),
    #[error("mail.dns_server: {0}")]
    Dns(String),
    #[error("mail.relay.ca_file: {0}")]
    Relay(String),
}

/// The name in greetings and trace headers: `mail.hostname`, else this machine's.
pub fn hostname(config: &Config) -> String {
    if !config.mail.hostname.is_empty() {
        return config.mail.hostname.clone();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The DKIM key from `[mail.dkim]`, if one is configured.
pub fn dkim_signer(config: &Config) -> Result<Option<Arc<outbound::dkim::Signer>>, MailError> {
    let dkim = &config.mail.dkim;
    if dkim.private_key.is_empty() {
        return Ok(None);
    }
    let domain = if dkim.domain.is_empty() {
        config.mail.domains.first().cloned().unwrap_or_default()
    } else {
        dkim.domain.clone()
    };
    let signer = outbound::dkim::Signer::load(
        std::path::Path::new(&dkim.private_key),
        &domain,
        &dkim.selector,
    )
    .map_err(MailError::Dkim)?;
    tracing::info!(%domain, selector = %dkim.selector, "outbound mail is DKIM-signed");
    Ok(Some(Arc::new(signer)))
}

/// `[mail.relay]` when it names a host, else each domain's MX.
pub fn route(config: &Config) -> Result<outbound::Route, MailError> {
    let relay = &config.mail.relay;
    if relay.host.is_empty() {
        let server = config.mail.dns_server.parse().ok();
        let resolver = outbound::resolver(server).map_err(MailError::Dns)?;
        return Ok(outbound::Route::Mx {
            port: config.mail.mx_port,
            resolver: Arc::new(resolver),
        });
    }
    let ca = if relay.ca_file.is_empty() {
        None
    } else {
        Some(
            std::fs::read(&relay.ca_file)
                .map_err(|e| MailError::Relay(format!("{}: {e}", relay.ca_file)))?,
        )
    };
    Ok(outbound::Route::Relay {
        ca,
        host: relay.host.clone(),
        port: relay.port,
        tls: relay.tls.clone(),
        credentials: (!relay.username.is_empty())
            .then(|| (relay.username.clone(), relay.password.expose().to_owned())),
    })
}

/// Accounts from configuration into the store (development adds `dev@localhost`/`dev`).
pub async fn sync_accounts(config: &Config, store: &store::Store) -> Result<(), MailError> {
    let mut configured = Vec::new();
    for account in &config.mail.accounts {
        let address = account.address.trim().to_ascii_lowercase();
        let hash = match (&account.password_hash, &account.password) {
            (Some(hash), _) => hash.expose().to_owned(),
            (None, Some(password)) => store::hash_password(password.expose())?,
            (None, None) => continue,
        };
        store.put_account(&address, &hash, true).await?;
        configured.push(address);
    }
    if config.environment == Environment::Development
        && !configured.iter().any(|a| a == DEV_MAIL_ACCOUNT)
    {
        if !store.has_account(DEV_MAIL_ACCOUNT).await? {
            store
                .put_account(DEV_MAIL_ACCOUNT, &store::hash_password("dev")?, true)
                .await?;
            tracing::info!("development account {DEV_MAIL_ACCOUNT} (password \"dev\") created");
        }
        configured.push(DEV_MAIL_ACCOUNT.to_owned());
    }
    store.keep_config_accounts(&configured).await?;
    Ok(())
}

/// Runs the mail role on its bound listeners until `shutdown`.
pub async fn run(
    config: Arc<Config>,
    mut listeners: Listeners,
    shutdown: Shutdown,
) -> Result<(), MailError> {
    let mail = &config.mail;
    let store = store::Store::open_backend(&config.data_dir.join("mail"), &mail.store).await?;
    sync_accounts(&config, &store).await?;
    let http_tls = mail.http_tls;
    let mut server = RoleServer::new(Role::Mail, Arc::clone(&config), shutdown);
    let wake = Arc::new(tokio::sync::Notify::new());
    let logins = Arc::new(auth::Logins::new(store.clone()));
    let budget = connection::Budget::new(connection::MESSAGE_MEMORY);
    let api = http::Api {
        store: store.clone(),
        open: config.environment == Environment::Development,
        outbound: Arc::clone(&wake),
        logins: Arc::clone(&logins),
        sessions: Arc::new(http::Sessions::default()),
        secure_cookies: http_tls,
    };
    let router = server
        .health_routes()
        .merge(http::router(api))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") });
    server.serve_http(listeners.take("http")?, router, http_tls)?;
    let tls = server.tls()?.acceptor(&[])?.rustls();
    let limits = smtp::Limits {
        max_message_bytes: mail.max_message_bytes,
        max_recipients: mail.max_recipients,
        max_errors: mail.max_errors,
        command_timeout: Duration::from_secs(mail.command_timeout_secs.max(1)),
        session_timeout: Duration::from_secs(mail.session_timeout_secs.max(1)),
        max_per_ip: mail.max_connections_per_ip,
        bare_lf: if mail.bare_lf == "normalize" {
            smtp::data::BareLf::Normalize
        } else {
            smtp::data::BareLf::Reject
        },
    };
    let policy = delivery::Policy::new(
        config.environment,
        DEV_MAIL_ACCOUNT,
        &mail.staging_allowlist,
    );
    let outbound = outbound::Outbound {
        store: store.clone(),
        route: route(&config)?,
        hostname: hostname(&config),
        domains: mail.domains.clone(),
        retry_intervals: mail
            .retry_intervals
            .iter()
            .filter_map(|i| common::config::parse_interval(i).ok().flatten())
            .collect(),
        max_queue_time: common::config::parse_interval(&mail.max_queue_time)
            .ok()
            .flatten()
            .unwrap_or(Duration::from_secs(5 * 86_400)),
        wake: Arc::clone(&wake),
        dkim: dkim_signer(&config)?,
        policy: policy.clone(),
    };
    tokio::spawn(outbound.run(server.shutdown.token().clone()));
    let service = Arc::new(smtp::SmtpService::new(
        store.clone(),
        hostname(&config),
        mail.domains.clone(),
        limits,
        Some(tls.clone()),
        config.environment == Environment::Development,
        policy,
        wake,
        Arc::clone(&logins),
        budget.clone(),
    ));
    for (name, port) in [
        ("smtp", smtp::Port::Relay),
        (
            "submission",
            smtp::Port::Submission {
                implicit_tls: false,
            },
        ),
        ("submissions", smtp::Port::Submission { implicit_tls: true }),
    ] {
        let service = Arc::clone(&service);
        server.serve_connections(
            listeners.take(name)?,
            AcceptLimits {
                max_connections: mail.max_connections,
            },
            move |stream, peer| Arc::clone(&service).serve(stream, peer, port),
        );
    }
    let imap = Arc::new(imap::ImapService::new(
        store.clone(),
        Arc::clone(&logins),
        Some(tls.clone()),
        config.environment == Environment::Development,
        mail.max_message_bytes,
        Duration::from_secs(mail.command_timeout_secs.max(1)),
        mail.max_connections_per_ip,
        budget,
    ));
    for (name, implicit_tls) in [("imap", false), ("imaps", true)] {
        let imap = Arc::clone(&imap);
        server.serve_connections(
            listeners.take(name)?,
            AcceptLimits {
                max_connections: mail.max_connections,
            },
            move |stream, peer| Arc::clone(&imap).serve(stream, peer, implicit_tls),
        );
    }
    let pop3 = Arc::new(pop3::Pop3Service::new(
        store.clone(),
        Arc::clone(&logins),
        Some(tls.clone()),
        config.environment == Environment::Development,
        Duration::from_secs(mail.command_timeout_secs.max(1)),
        mail.max_connections_per_ip,
    ));
    for (name, implicit_tls) in [("pop3", false), ("pop3s", true)] {
        let pop3 = Arc::clone(&pop3);
        server.serve_connections(
            listeners.take(name)?,
            AcceptLimits {
                max_connections: mail.max_connections,
            },
            move |stream, peer| Arc::clone(&pop3).serve(stream, peer, implicit_tls),
        );
    }
    server.run_until_shutdown().await;
    store.close().await;
    Ok(())
}
