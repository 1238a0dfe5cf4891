//! Built-in defaults, the lowest layer. They differ by environment: development listens on
//! loopback and unprivileged ports, staging and production on public addresses and standard
//! ports (the brief's environments table). This list is also the set of known keys: a key
//! that is not here is an unknown key.

use config::ValueKind;

use crate::environment::Environment;

/// Every configuration key with its built-in default for `environment`.
pub fn defaults(environment: Environment) -> Vec<(&'static str, ValueKind)> {
    let dev = !environment.is_strict();
    // Pick the development or the staging/production value.
    let pick = |development: &str, strict: &str| -> ValueKind {
        ValueKind::from(if dev { development } else { strict })
    };
    let none = || ValueKind::Nil;
    let list = |items: &[&str]| -> ValueKind {
        ValueKind::from(items.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    };

    vec![
        ("data_dir", pick("./data/development", "/var/lib/quartet")),
        ("log.level", ValueKind::from("info")),
        ("log.format", pick("pretty", "json")),
        ("tls.cert", none()),
        ("tls.key", none()),
        ("web.http_listen", pick("127.0.0.1:8080", "0.0.0.0:80")),
        ("web.https_listen", pick("127.0.0.1:8443", "0.0.0.0:443")),
        ("web.root", none()),
        ("web.sites", ValueKind::Array(Vec::new())),
        ("web.access_log", ValueKind::from(true)),
        ("web.header_timeout_secs", ValueKind::from(10u64)),
        ("web.max_header_bytes", ValueKind::from(16_384u64)),
        ("web.max_uri_bytes", ValueKind::from(8_192u64)),
        ("web.max_connections", ValueKind::from(10_000u64)),
        ("web.cache_validity_ms", ValueKind::from(1_000u64)),
        ("web.cache_max_file_bytes", ValueKind::from(2_097_152u64)),
        ("web.cache_max_bytes", ValueKind::from(268_435_456u64)),
        ("web.compress_min_bytes", ValueKind::from(1_024u64)),
        ("web.hsts_max_age_secs", ValueKind::from(31_536_000u64)),
        ("web.proxy_connect_timeout_secs", ValueKind::from(5u64)),
        ("web.proxy_response_timeout_secs", ValueKind::from(60u64)),
        ("db.pg_listen", pick("127.0.0.1:5433", "0.0.0.0:5432")),
        ("db.http_listen", pick("127.0.0.1:4001", "0.0.0.0:4001")),
        ("db.http_tls", ValueKind::from(!dev)),
        ("db.backend", ValueKind::from("sqlite")),
        ("db.backend_pool_size", ValueKind::from(20u64)),
        ("db.admin_user", ValueKind::from(DEFAULT_DB_ADMIN_USER)),
        (
            "db.admin_password",
            ValueKind::from(DEFAULT_DB_ADMIN_PASSWORD),
        ),
        ("db.synchronous", ValueKind::from("full")),
        ("db.max_connections", ValueKind::from(100u64)),
        ("db.readers", ValueKind::from(4u64)),
        ("db.statement_timeout_secs", ValueKind::from(30u64)),
        ("db.lock_timeout_secs", ValueKind::from(5u64)),
        (
            "db.idle_in_transaction_timeout_secs",
            ValueKind::from(60u64),
        ),
        ("db.http_max_rows", ValueKind::from(10_000u64)),
        ("db.http_max_response_bytes", ValueKind::from(16_777_216u64)),
        ("db.http_max_body_bytes", ValueKind::from(1_048_576u64)),
        ("db.max_restore_bytes", ValueKind::from(1_073_741_824u64)),
        ("db.backup.every", ValueKind::from("24h")),
        ("db.backup.keep", ValueKind::from(7u64)),
        ("mail.smtp_listen", pick("127.0.0.1:2525", "0.0.0.0:25")),
        (
            "mail.submission_listen",
            pick("127.0.0.1:2587", "0.0.0.0:587"),
        ),
        (
            "mail.submissions_listen",
            pick("127.0.0.1:2465", "0.0.0.0:465"),
        ),
        ("mail.imap_listen", pick("127.0.0.1:1143", "0.0.0.0:143")),
        ("mail.imaps_listen", pick("127.0.0.1:1993", "0.0.0.0:993")),
        ("mail.pop3_listen", pick("127.0.0.1:1110", "0.0.0.0:110")),
        ("mail.pop3s_listen", pick("127.0.0.1:1995", "0.0.0.0:995")),
        ("mail.http_listen", pick("127.0.0.1:8025", "0.0.0.0:8025")),
        ("mail.http_tls", ValueKind::from(!dev)),
        (
            "mail.domains",
            if dev {
                list(&["localhost", "example.test"])
            } else {
                list(&[])
            },
        ),
        ("mail.hostname", ValueKind::from("")),
        ("mail.max_message_bytes", ValueKind::from(26_214_400u64)),
        ("mail.max_recipients", ValueKind::from(100u64)),
        ("mail.max_connections", ValueKind::from(1_000u64)),
        ("mail.max_connections_per_ip", ValueKind::from(50u64)),
        ("mail.command_timeout_secs", ValueKind::from(300u64)),
        ("mail.session_timeout_secs", ValueKind::from(1_800u64)),
        ("mail.max_errors", ValueKind::from(10u64)),
        ("mail.bare_lf", ValueKind::from("reject")),
        ("mail.accounts", ValueKind::Array(Vec::new())),
        ("mail.staging_allowlist", list(&[])),
        ("mail.relay.host", ValueKind::from("")),
        ("mail.relay.port", ValueKind::from(587u64)),
        ("mail.relay.tls", ValueKind::from("starttls")),
        ("mail.relay.username", ValueKind::from("")),
        ("mail.relay.password", ValueKind::from("")),
        ("mail.relay.ca_file", ValueKind::from("")),
        ("mail.mx_port", ValueKind::from(25u64)),
        ("mail.dns_server", ValueKind::from("")),
        (
            "mail.retry_intervals",
            list(&["1m", "5m", "15m", "30m", "1h", "2h", "4h"]),
        ),
        ("mail.max_queue_time", ValueKind::from("5d")),
        ("mail.store", ValueKind::from("sqlite")),
        ("mail.dkim.domain", ValueKind::from("")),
        ("mail.dkim.selector", ValueKind::from("")),
        ("mail.dkim.private_key", ValueKind::from("")),
        ("app.api_listen", pick("127.0.0.1:7070", "0.0.0.0:7070")),
        ("app.api_tls", ValueKind::from(!dev)),
        // Apps are reached through the web role's reverse proxy, so loopback everywhere.
        ("app.http_listen", ValueKind::from("127.0.0.1:7080")),
        ("app.api_token", ValueKind::from(DEFAULT_APP_API_TOKEN)),
        ("app.domain", ValueKind::from("localhost")),
        ("app.max_upload_bytes", ValueKind::from(104_857_600u64)),
        ("app.max_unpacked_bytes", ValueKind::from(1_073_741_824u64)),
        ("app.max_archive_entries", ValueKind::from(50_000u64)),
        ("app.health_timeout_secs", ValueKind::from(30u64)),
        ("app.stop_grace_secs", ValueKind::from(10u64)),
        ("app.run_as", ValueKind::from("per-app")),
        ("app.ports", ValueKind::from("20000-29999")),
        ("app.max_open_files", ValueKind::from(4096u64)),
        ("app.max_processes", ValueKind::from(512u64)),
        ("app.max_memory_mb", ValueKind::from(2048u64)),
        ("app.log_max_bytes", ValueKind::from(10_485_760u64)),
        ("app.log_files", ValueKind::from(3u64)),
    ]
}

/// Documented development credentials. Staging and production refuse them.
pub const DEFAULT_DB_ADMIN_USER: &str = "quartet";
pub const DEFAULT_DB_ADMIN_PASSWORD: &str = "quartet";
pub const DEFAULT_APP_API_TOKEN: &str = "dev";
