//! The real `quartet` binary: `up` runs every role in one process, `check` validates them all.

use std::path::Path;
use std::time::Duration;

use common::Environment;
use common::testing::{Binary, TestConfig, curl, run_to_end};

const BIN: &str = env!("CARGO_BIN_EXE_quartet");

#[test]
fn up_runs_all_four_roles_prints_the_table_and_stops_on_sigterm() {
    let test = TestConfig::new(Environment::Development);
    let mut quartet = Binary::spawn(Path::new(BIN), &["up"], &test.child_env(), test.dir.path());
    let addrs = quartet.wait_for_listeners(14);
    for key in ["web http", "db http", "mail http", "app api"] {
        let (status, body) = curl(&[&format!("http://{}/healthz", addrs[key])]);
        assert_eq!(status, 200, "{key}: {body}");
    }
    let ca = test.data_dir().join("tls/ca.pem");
    let https = addrs["web https"];
    let (status, _) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &format!("localhost:{}:127.0.0.1", https.port()),
        &format!("https://localhost:{}/healthz", https.port()),
    ]);
    assert_eq!(status, 200);

    // The roles are wired: the web role sends app hosts to the app role's router...
    let web = addrs["web http"];
    let (status, body) = curl(&["-H", "Host: hello.localhost", &format!("http://{web}/")]);
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("app \"hello\" has no running release"),
        "{body}"
    );
    // ...and still shows the welcome page for everything else.
    let (status, body) = curl(&[&format!("http://{web}/")]);
    assert_eq!(status, 200);
    assert!(body.contains("Application server"), "{body}");

    // The table: a header and one row per listener, each with its bound address.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while quartet.stdout().lines().count() < 15 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let table = quartet.stdout();
    assert!(table.starts_with("ROLE"), "{table}");
    for (key, addr) in &addrs {
        let (role, listener) = key.split_once(' ').unwrap();
        assert!(
            table.lines().any(|line| {
                let cells: Vec<&str> = line.split_whitespace().collect();
                cells.first() == Some(&role)
                    && cells.get(1) == Some(&listener)
                    && cells.last() == Some(&addr.to_string().as_str())
            }),
            "{key} {addr} missing from:\n{table}"
        );
    }

    quartet.signal("INT");
    let exit = quartet
        .wait_exit(Duration::from_secs(10))
        .expect("stops within 10s");
    assert_eq!(exit.code(), Some(0), "{}", quartet.stderr());
}

#[test]
fn up_runs_only_the_chosen_roles() {
    let test = TestConfig::new(Environment::Development);
    let mut quartet = Binary::spawn(
        Path::new(BIN),
        &["up", "--roles", "web,app"],
        &test.child_env(),
        test.dir.path(),
    );
    let addrs = quartet.wait_for_listeners(4);
    assert!(
        addrs
            .keys()
            .all(|k| k.starts_with("web ") || k.starts_with("app "))
    );
    // The table is printed once every chosen role serves: a header and exactly four rows.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while quartet.stdout().lines().count() < 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let table = quartet.stdout();
    assert_eq!(table.lines().count(), 5, "{table}");
    assert!(
        table
            .lines()
            .skip(1)
            .all(|l| l.starts_with("web ") || l.starts_with("app ")),
        "{table}"
    );
    quartet.signal("TERM");
    assert_eq!(
        quartet
            .wait_exit(Duration::from_secs(10))
            .and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn check_validates_every_role_and_reports_every_problem() {
    let test = TestConfig::new(Environment::Production);
    let output = run_to_end(
        Path::new(BIN),
        &["check"],
        &test.child_env(),
        test.dir.path(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for expected in [
        "tls.cert: required in production",
        "db.admin_password: the documented default password is refused",
        "app.api_token: the documented default token is refused",
        "mail.domains: no local domain",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?}:\n{stderr}");
    }

    let test = TestConfig::new(Environment::Development);
    let output = run_to_end(
        Path::new(BIN),
        &["check"],
        &test.child_env(),
        test.dir.path(),
    );
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("valid for web, db, mail, app (development)"),
        "{stdout}"
    );
}

#[test]
fn an_unknown_role_is_refused() {
    let test = TestConfig::new(Environment::Development);
    let output = run_to_end(
        Path::new(BIN),
        &["up", "--roles", "web,ftp"],
        &test.child_env(),
        test.dir.path(),
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown role \"ftp\""));
}

#[test]
fn the_shipped_config_files_are_complete_and_valid() {
    use common::config::{LoadOptions, load};
    let config_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let text = |env: Environment| {
        let mut options = LoadOptions::new(env);
        options.config_dir = Some(config_dir.clone());
        load(&options, &common::Role::ALL).map(|loaded| loaded.layers.len())
    };
    // Every key is documented in every environment's file: set, or shown commented out.
    for env in Environment::ALL {
        let path = config_dir.join(format!("{env}.toml"));
        let text = std::fs::read_to_string(&path).unwrap()
            + &std::fs::read_to_string(config_dir.join("default.toml")).unwrap();
        for (key, _) in common::config::defaults(env) {
            let leaf = key.rsplit('.').next().unwrap();
            let documented = text.lines().any(|line| {
                let line = line.trim_start_matches(['#', ' ']);
                line.starts_with(&format!("{leaf} =")) || line.starts_with(&format!("[[{key}]]"))
            });
            assert!(documented, "{key} is not documented in {}", path.display());
        }
    }
    // Development runs as shipped, from both files.
    assert_eq!(
        text(Environment::Development).expect("development config is valid"),
        3
    );
    // Staging and production need what only an operator has: certificate files, secrets,
    // domains, production's DKIM key. Nothing else may be wrong with them.
    for env in [Environment::Staging, Environment::Production] {
        let err = text(env).unwrap_err();
        for problem in &err.problems {
            let key = problem.key.as_deref().unwrap_or_default();
            assert!(
                [
                    "tls.cert",
                    "db.admin_password",
                    "app.api_token",
                    "mail.domains",
                    "mail.dkim.private_key"
                ]
                .contains(&key),
                "{env}: unexpected problem {problem}"
            );
        }
    }
}
