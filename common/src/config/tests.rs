use std::collections::HashMap;
use std::path::Path;

use super::*;
use crate::role::Role;

fn options(env: Environment, dir: &Path) -> LoadOptions {
    LoadOptions {
        environment: env,
        config_dir: Some(dir.to_path_buf()),
        files: Vec::new(),
        vars: HashMap::new(),
    }
}

fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn problems_text(err: &ConfigError) -> String {
    err.problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn development_defaults_load_for_every_role() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = load(&options(Environment::Development, dir.path()), &Role::ALL).unwrap();
    let config = loaded.config;
    assert_eq!(config.web.http_listen.as_str(), "127.0.0.1:8080");
    assert_eq!(config.db.pg_listen.as_str(), "127.0.0.1:5433");
    assert_eq!(config.mail.domains, vec!["localhost", "example.test"]);
    assert_eq!(config.app.api_token.expose(), "dev");
    assert_eq!(config.log.format, LogFormat::Pretty);
    assert_eq!(config.data_dir, Path::new("./data/development"));
}

#[test]
fn every_layer_overrides_the_one_below() {
    let dir = tempfile::tempdir().unwrap();
    let key = "web.http_listen";
    let mut opts = options(Environment::Staging, dir.path());
    // Staging needs certificates; none of this test is about them.
    let dev = crate::tls::ensure_dev_certificates(dir.path()).unwrap();
    let tls = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n",
        dev.cert.display().to_string(),
        dev.key.display().to_string()
    );

    let check = |opts: &LoadOptions, expected: &str, origin: Origin| {
        let loaded = load(opts, &[Role::Web]).unwrap();
        assert_eq!(loaded.config.web.http_listen.as_str(), expected);
        assert_eq!(loaded.origins.of(key), origin);
    };

    std::fs::write(
        dir.path().join("default.toml"),
        format!("{tls}[web]\nhttp_listen = \"127.0.0.1:1001\"\n"),
    )
    .unwrap();
    check(
        &opts,
        "127.0.0.1:1001",
        Origin::File(dir.path().join("default.toml")),
    );

    std::fs::write(
        dir.path().join("staging.toml"),
        "[web]\nhttp_listen = \"127.0.0.1:1002\"\n",
    )
    .unwrap();
    check(
        &opts,
        "127.0.0.1:1002",
        Origin::File(dir.path().join("staging.toml")),
    );
    // production.toml is not a layer of staging.
    std::fs::write(
        dir.path().join("production.toml"),
        "[web]\nhttp_listen = \"127.0.0.1:9999\"\n",
    )
    .unwrap();
    check(
        &opts,
        "127.0.0.1:1002",
        Origin::File(dir.path().join("staging.toml")),
    );

    let first = dir.path().join("first.toml");
    let second = dir.path().join("second.toml");
    std::fs::write(&first, "[web]\nhttp_listen = \"127.0.0.1:1003\"\n").unwrap();
    std::fs::write(&second, "[web]\nhttp_listen = \"127.0.0.1:1004\"\n").unwrap();
    opts.files = vec![first.clone()];
    check(&opts, "127.0.0.1:1003", Origin::File(first.clone()));
    opts.files = vec![first, second.clone()];
    check(&opts, "127.0.0.1:1004", Origin::File(second));

    opts.vars = vars(&[("QUARTET__WEB__HTTP_LISTEN", "127.0.0.1:1005")]);
    check(
        &opts,
        "127.0.0.1:1005",
        Origin::Variable("QUARTET__WEB__HTTP_LISTEN".into()),
    );
}

#[test]
fn unknown_keys_are_named_with_their_layer_and_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("extra.toml");
    std::fs::write(
        &file,
        "[web]\nhtp_listen = \"127.0.0.1:1\"\n[nonsense]\nx = 1\n",
    )
    .unwrap();
    let mut opts = options(Environment::Development, dir.path());
    opts.files = vec![file.clone()];
    opts.vars = vars(&[("QUARTET__APP__API_TOKN", "x")]);
    let err = load(&opts, &[Role::Web]).unwrap_err();
    let text = problems_text(&err);
    assert_eq!(err.problems.len(), 3, "{text}");
    assert!(
        text.contains("web.htp_listen: unknown key; did you mean `web.http_listen`?"),
        "{text}"
    );
    assert!(
        text.contains(&format!("(from file {})", file.display())),
        "{text}"
    );
    assert!(text.contains("nonsense.x: unknown key"), "{text}");
    assert!(
        text.contains("app.api_tokn: unknown key; did you mean `app.api_token`? (from variable QUARTET__APP__API_TOKN)"),
        "{text}"
    );
}

#[test]
fn every_bad_address_is_reported_not_only_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(Environment::Development, dir.path());
    opts.vars = vars(&[
        ("QUARTET__MAIL__SMTP_LISTEN", "not-an-address"),
        ("QUARTET__MAIL__IMAP_LISTEN", "127.0.0.1:99999"),
    ]);
    let err = load(&opts, &[Role::Mail]).unwrap_err();
    let text = problems_text(&err);
    assert_eq!(err.problems.len(), 2, "{text}");
    assert!(
        text.contains("mail.smtp_listen: \"not-an-address\" is not an IP:PORT address"),
        "{text}"
    );
    assert!(
        text.contains("(from variable QUARTET__MAIL__SMTP_LISTEN)"),
        "{text}"
    );
    assert!(text.contains("mail.imap_listen"), "{text}");
}

#[test]
fn a_wrongly_typed_value_names_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("default.toml"),
        "[db]\nhttp_tls = \"maybe\"\n",
    )
    .unwrap();
    let err = load(&options(Environment::Development, dir.path()), &[Role::Db]).unwrap_err();
    let text = problems_text(&err);
    assert!(text.starts_with("db.http_tls: "), "{text}");
    assert!(text.contains("default.toml"), "{text}");
}

#[test]
fn invalid_toml_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("development.toml"), "[web\n").unwrap();
    let err = load(&options(Environment::Development, dir.path()), &[Role::Web]).unwrap_err();
    let text = problems_text(&err);
    assert!(text.contains("development.toml: not valid TOML"), "{text}");
}

#[test]
fn a_missing_config_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(Environment::Development, dir.path());
    opts.files = vec![dir.path().join("absent.toml")];
    let err = load(&opts, &[Role::Web]).unwrap_err();
    assert!(problems_text(&err).contains("absent.toml: cannot read"));
}

#[test]
fn production_collects_every_policy_problem() {
    let dir = tempfile::tempdir().unwrap();
    let err = load(&options(Environment::Production, dir.path()), &Role::ALL).unwrap_err();
    let text = problems_text(&err);
    for expected in [
        "tls.cert: required in production",
        "db.admin_password: the documented default password is refused in production",
        "app.api_token: the documented default token is refused in production",
        "mail.domains: no local domain",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn production_refuses_plaintext_password_listeners_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let dev = crate::tls::ensure_dev_certificates(dir.path()).unwrap();
    let mut opts = options(Environment::Production, dir.path());
    opts.vars = vars(&[
        ("QUARTET__TLS__CERT", dev.cert.to_str().unwrap()),
        ("QUARTET__TLS__KEY", dev.key.to_str().unwrap()),
        ("QUARTET__APP__API_TOKEN", "0123-long-random"),
        ("QUARTET__APP__API_TLS", "false"),
    ]);
    let err = load(&opts, &[Role::App]).unwrap_err();
    let text = problems_text(&err);
    assert!(
        text.contains("app.api_listen: carries passwords over plaintext HTTP"),
        "{text}"
    );

    // On loopback (behind the web role's proxy) it is allowed.
    opts.vars
        .insert("QUARTET__APP__API_LISTEN".into(), "127.0.0.1:7070".into());
    let loaded = load(&opts, &[Role::App]).unwrap();
    // A token that looks like a number stays text (no `try_parsing`).
    assert_eq!(loaded.config.app.api_token.expose(), "0123-long-random");
}

#[test]
fn development_allows_what_production_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(Environment::Development, dir.path());
    opts.vars = vars(&[("QUARTET__APP__API_LISTEN", "0.0.0.0:0")]);
    load(&opts, &Role::ALL).unwrap();
}

#[test]
fn lists_and_numbers_from_variables() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(Environment::Development, dir.path());
    opts.vars = vars(&[
        ("QUARTET__MAIL__DOMAINS", "a.test, b.test"),
        ("QUARTET__APP__API_TOKEN", "0123"),
        ("quartet__log__level", "debug"),
    ]);
    let config = load(&opts, &Role::ALL).unwrap().config;
    assert_eq!(config.mail.domains, vec!["a.test", "b.test"]);
    assert_eq!(config.app.api_token.expose(), "0123");
    assert_eq!(config.log.level, "debug");
}

#[test]
fn the_same_address_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(Environment::Development, dir.path());
    opts.vars = vars(&[("QUARTET__WEB__HTTPS_LISTEN", "127.0.0.1:8080")]);
    let err = load(&opts, &[Role::Web]).unwrap_err();
    assert!(
        problems_text(&err).contains("127.0.0.1:8080 overlaps 127.0.0.1:8080 of web.http_listen"),
        "{}",
        problems_text(&err)
    );
}

#[test]
fn check_output_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(Environment::Development, dir.path());
    opts.vars = vars(&[
        ("QUARTET__APP__API_TOKEN", "s3cret-token"),
        (
            "QUARTET__DB__BACKEND",
            "postgres://quartet:pgpass@db.internal/quartet",
        ),
    ]);
    let loaded = load(&opts, &Role::ALL).unwrap();
    let text = loaded.config.to_redacted_toml();
    assert!(!text.contains("s3cret-token"), "{text}");
    assert!(!text.contains("pgpass"), "{text}");
    assert!(
        text.contains("postgres://quartet:[redacted]@db.internal/quartet"),
        "{text}"
    );
    assert!(text.contains("api_token = \"[redacted]\""), "{text}");
}

#[test]
fn a_wildcard_address_overlaps_loopback_on_the_same_port() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(Environment::Development, dir.path());
    opts.vars = vars(&[
        ("QUARTET__WEB__HTTP_LISTEN", "0.0.0.0:9000"),
        ("QUARTET__APP__API_LISTEN", "127.0.0.1:9000"),
    ]);
    let err = load(&opts, &[Role::Web, Role::App]).unwrap_err();
    assert!(
        problems_text(&err).contains("overlaps 0.0.0.0:9000 of web.http_listen"),
        "{}",
        problems_text(&err)
    );
}

#[test]
fn database_passwords_never_print() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(Environment::Development, dir.path());
    opts.vars = vars(&[(
        "QUARTET__DB__BACKEND",
        "mysql://root:hunter2@db/x?password=hunter2",
    )]);
    let err = load(&opts, &[Role::Db]).unwrap_err();
    let text = problems_text(&err);
    assert!(text.contains("db.backend"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");

    opts.vars = vars(&[(
        "QUARTET__DB__BACKEND",
        "postgres://u:pa/ss@db/x?sslmode=require&password=pw2",
    )]);
    let config = load(&opts, &[Role::Db]).unwrap().config;
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("pa/ss") && !debug.contains("pw2"),
        "{debug}"
    );
    assert_eq!(
        config.db.backend.expose(),
        "postgres://u:pa/ss@db/x?sslmode=require&password=pw2"
    );
}

#[test]
fn bad_values_of_the_app_and_db_keys_are_each_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(Environment::Development, dir.path());
    opts.vars = vars(&[
        ("QUARTET__APP__PORTS", "80-90"),
        ("QUARTET__APP__RUN_AS", "root"),
        ("QUARTET__DB__SYNCHRONOUS", "sometimes"),
        ("QUARTET__DB__READERS", "0"),
        ("QUARTET__DB__BACKUP__EVERY", "every tuesday"),
        ("QUARTET__DB__BACKUP__KEEP", "0"),
    ]);
    let err = load(&opts, &[Role::App, Role::Db]).unwrap_err();
    let text = problems_text(&err);
    for key in [
        "app.ports",
        "app.run_as",
        "db.synchronous",
        "db.readers",
        "db.backup.every",
        "db.backup.keep",
    ] {
        assert!(
            text.contains(&format!("{key}: ")),
            "{key} missing in:\n{text}"
        );
    }
    assert_eq!(err.problems.len(), 6, "{text}");
}

#[test]
fn intervals() {
    assert_eq!(parse_interval("off"), Ok(None));
    assert_eq!(parse_interval("0"), Ok(None));
    assert_eq!(
        parse_interval("6h"),
        Ok(Some(std::time::Duration::from_secs(6 * 3600)))
    );
    assert!(parse_interval("6 hours").is_err());
    assert!(parse_interval("h").is_err());
}

#[test]
fn a_remote_postgresql_backend_needs_tls_outside_development() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(Environment::Staging, dir.path());
    opts.vars = vars(&[
        ("QUARTET__DB__ADMIN_PASSWORD", "a-real-one"),
        (
            "QUARTET__DB__BACKEND",
            "postgres://q:secret@db.example.test/postgres",
        ),
        ("QUARTET__DB__BACKEND_POOL_SIZE", "0"),
    ]);
    let err = load(&opts, &[Role::Db]).unwrap_err();
    let text = problems_text(&err);
    assert!(
        text.contains("db.backend: ") && text.contains("sslmode=verify-full"),
        "{text}"
    );
    assert!(text.contains("db.backend_pool_size: "), "{text}");
    assert!(!text.contains("secret"), "{text}");

    opts.vars = vars(&[
        ("QUARTET__DB__ADMIN_PASSWORD", "a-real-one"),
        (
            "QUARTET__DB__BACKEND",
            "postgres://q:secret@db.example.test/postgres?sslmode=verify-full",
        ),
    ]);
    // Only the missing certificate of this bare test setup is left.
    let text = problems_text(&load(&opts, &[Role::Db]).unwrap_err());
    assert!(!text.contains("db.backend"), "{text}");
}

#[test]
fn mail_accounts_follow_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("default.toml"),
        "[mail]\ndomains = [\"localhost\", \"example.test\"]\n\
         [[mail.accounts]]\naddress = \"dev@localhost\"\npassword = \"dev\"\n\
         [[mail.accounts]]\naddress = \"ann@elsewhere.test\"\npassword_hash = \"$argon2id$v=19$x\"\n\
         [[mail.accounts]]\naddress = \"bob@example.test\"\npassword_hash = \"plain-text\"\n",
    )
    .unwrap();
    let text = problems_text(
        &load(&options(Environment::Staging, dir.path()), &[Role::Mail]).unwrap_err(),
    );
    for expected in [
        "dev@localhost: a plain password is refused in staging",
        "the development account dev@localhost is refused in staging",
        "\"ann@elsewhere.test\" is not an address in mail.domains",
        "bob@example.test: password_hash must be an argon2 PHC string",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // Development accepts the plain password and the development account.
    let text = problems_text(
        &load(
            &options(Environment::Development, dir.path()),
            &[Role::Mail],
        )
        .unwrap_err(),
    );
    assert!(!text.contains("dev@localhost"), "{text}");
    assert!(text.contains("ann@elsewhere.test"), "{text}");
}

#[test]
fn production_mail_needs_a_dkim_key_and_both_halves_of_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("default.toml"),
        "[mail]\ndomains = [\"example.test\"]\n",
    )
    .unwrap();
    let text = problems_text(
        &load(&options(Environment::Production, dir.path()), &[Role::Mail]).unwrap_err(),
    );
    assert!(
        text.contains("mail.dkim.private_key") && text.contains("required in production"),
        "{text}"
    );
    // A selector without a key is refused anywhere; staging needs no key.
    std::fs::write(
        dir.path().join("default.toml"),
        "[mail]\ndomains = [\"example.test\"]\n[mail.dkim]\nselector = \"q1\"\n",
    )
    .unwrap();
    let text = problems_text(
        &load(&options(Environment::Staging, dir.path()), &[Role::Mail]).unwrap_err(),
    );
    assert!(
        text.contains("give both selector and private_key"),
        "{text}"
    );
    assert!(!text.contains("required in production"), "{text}");
}
