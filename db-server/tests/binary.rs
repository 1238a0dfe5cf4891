//! The real `db-server` binary: health, TLS offered to PostgreSQL clients, SIGTERM.

use std::path::Path;

use common::Environment;
use common::testing::{TestConfig, read_greeting, run_binary_lifecycle};

const BIN: &str = env!("CARGO_BIN_EXE_db-server");

#[test]
fn serves_health_answers_postgres_clients_and_stops_on_sigterm() {
    let test = TestConfig::new(Environment::Development);
    run_binary_lifecycle(Path::new(BIN), &test, 2, "db http", None, |addrs| {
        // An SSLRequest (length 8, code 80877103) is answered 'S': TLS is offered.
        let ssl_request = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        let reply = read_greeting(addrs["db pg"], &ssl_request, 1);
        assert_eq!(reply, b"S");
    });
}

#[test]
fn staging_serves_the_http_api_over_tls_only() {
    let (test, ca) = TestConfig::new(Environment::Staging)
        .set("db.admin_password", "a-real-password")
        .with_generated_tls();
    run_binary_lifecycle(Path::new(BIN), &test, 2, "db http", Some(&ca), |_| {});
}

/// `psql -At -c SQL` against the server at `addr` as the development administrator.
fn psql(addr: std::net::SocketAddr, sql: &str) -> String {
    let output = std::process::Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user=quartet dbname=quartet sslmode=disable",
            addr.port()
        ))
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", "quartet")
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn snapshot_command(test: &TestConfig, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(BIN)
        .args(args)
        .env_clear()
        .envs(test.child_env())
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(test.dir.path())
        .output()
        .expect("db-server runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn a_commit_survives_kill_9_and_snapshots_restore_by_hand() {
    use common::testing::Binary;
    let test = TestConfig::new(Environment::Development);
    let mut server = Binary::spawn(Path::new(BIN), &[], &test.child_env(), test.dir.path());
    let addrs = server.wait_for_listeners(2);
    psql(addrs["db pg"], "CREATE TABLE t (n INTEGER)");
    psql(
        addrs["db pg"],
        "BEGIN; INSERT INTO t VALUES (1), (2); COMMIT;",
    );
    // Acknowledged means on disk: SIGKILL right after loses nothing.
    server.signal("KILL");
    server.wait_exit(std::time::Duration::from_secs(5));

    let mut server = Binary::spawn(Path::new(BIN), &[], &test.child_env(), test.dir.path());
    let addrs = server.wait_for_listeners(2);
    assert_eq!(psql(addrs["db pg"], "SELECT sum(n) FROM t"), "3\n");

    // While the server runs its files are its own: another process cannot even read them.
    let live = test.data_dir().join("db").join("quartet.db");
    let outside = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            use sqlx::ConnectOptions as _;
            let mut other = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&live)
                .busy_timeout(std::time::Duration::ZERO)
                .connect()
                .await?;
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM t")
                .fetch_one(&mut other)
                .await
        });
    let refused = outside.expect_err("another process reads the live file");
    assert!(refused.to_string().contains("locked"), "{refused}");

    // A backup while the server runs (the server takes it, over its control socket); a
    // restore needs it stopped.
    let snapshot = test.dir.path().join("by-hand.db");
    let (ok, text) = snapshot_command(&test, &["backup", "quartet", snapshot.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains("integrity_check ok"), "{text}");
    let (ok, text) = snapshot_command(&test, &["backup", "quartet", snapshot.to_str().unwrap()]);
    assert!(!ok && text.contains("never overwrites"), "{text}");
    psql(addrs["db pg"], "DELETE FROM t");
    let (ok, text) = snapshot_command(&test, &["restore", "quartet", snapshot.to_str().unwrap()]);
    assert!(!ok && text.contains("stop db-server first"), "{text}");
    server.signal("TERM");
    assert!(
        server
            .wait_exit(std::time::Duration::from_secs(15))
            .is_some()
    );
    let (ok, text) = snapshot_command(&test, &["restore", "quartet", snapshot.to_str().unwrap()]);
    assert!(ok, "{text}");
    let mut server = Binary::spawn(Path::new(BIN), &[], &test.child_env(), test.dir.path());
    let addrs = server.wait_for_listeners(2);
    assert_eq!(psql(addrs["db pg"], "SELECT sum(n) FROM t"), "3\n");
    server.signal("TERM");
    server.wait_exit(std::time::Duration::from_secs(15));
}
