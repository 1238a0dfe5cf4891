//! Real PostgreSQL clients against a running db-server: psql (over TLS, with SCRAM) and
//! tokio-postgres (simple and extended protocol, binary results, cancel).

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::testing::{RunningRole, TestConfig};
use common::{Environment, Role};

mod support;
use support::{connect, sqlstate};

/// `psql` with `args` as `user`/`password` on `database`, TLS verified against the test's CA.
fn psql(
    addr: SocketAddr,
    ca: &Path,
    user: &str,
    password: &str,
    database: &str,
    args: &[&str],
) -> (bool, String, String) {
    let conninfo = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user={user} dbname={database} sslmode=verify-full sslrootcert={}",
        addr.port(),
        ca.display()
    );
    let output = std::process::Command::new("psql")
        .arg(&conninfo)
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose"])
        .args(args)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_over_tls_with_scram_runs_statements_and_reports_sqlstates() {
    let test = TestConfig::new(Environment::Development);
    let role = RunningRole::start(Role::Db, &test, db_server::run).await;
    let addr = role.addr("pg");
    let ca = test.data_dir().join("tls/ca.pem");
    tokio::task::spawn_blocking(move || {
        let (ok, out, err) = psql(
            addr,
            &ca,
            "quartet",
            "quartet",
            "quartet",
            &[
                "-c",
                "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE, score REAL, ok BOOLEAN)",
                "-c",
                "INSERT INTO t (name, score, ok) VALUES ('a', 1.5, true), ('b', NULL, false)",
                "-c",
                "BEGIN; UPDATE t SET score = 2 WHERE name = 'b'; COMMIT;",
                "-At",
                "-c",
                "SELECT name, score, ok FROM t ORDER BY id",
                "-c",
                "SELECT version()",
                "-c",
                "SHOW server_version",
                "-c",
                "SELECT current_database(), current_user",
                "-c",
                "SELECT pg_catalog.version() = version(), current_schema()",
            ],
        );
        assert!(ok, "{out}{err}");
        assert!(out.contains("\n1|public\n"), "{out}");
        assert!(
            out.contains("a|1.5|t\nb|2.0|f\n") || out.contains("a|1.5|t\nb|2|f\n"),
            "{out}"
        );
        assert!(out.contains("PostgreSQL 15.6 (Quartet"), "{out}");
        assert!(out.contains("\n15.6\n"), "{out}");
        assert!(out.contains("quartet|quartet"), "{out}");

        // psql's meta-commands read the emulated catalog.
        let (ok, out, err) = psql(
            addr,
            &ca,
            "quartet",
            "quartet",
            "quartet",
            &[
                "-c",
                "CREATE INDEX t_score ON t (score)",
                "-c",
                "\\l",
                "-c",
                "\\dt",
                "-c",
                "\\d t",
                "-c",
                "\\du",
            ],
        );
        assert!(ok, "{out}{err}");
        assert!(
            out.contains("List of databases") && out.contains(" quartet "),
            "{out}"
        );
        assert!(out.contains(" public | t    | table | quartet"), "{out}");
        assert!(out.contains("Table \"public.t\""), "{out}");
        assert!(
            out.contains(" id     | bigint           |           | not null |"),
            "{out}"
        );
        assert!(out.contains(" score  | double precision |"), "{out}");
        assert!(
            out.contains("Indexes:\n    \"t_score\" btree (score)"),
            "{out}"
        );
        assert!(out.contains("Superuser"), "{out}");

        // Failures carry PostgreSQL's SQLSTATEs.
        for (sql, code) in [
            ("SELECT * FROM missing", "42P01"),
            ("SELEC 1", "42601"),
            ("INSERT INTO t (name) VALUES ('a')", "23505"),
            ("SHOW no_such_setting", "42704"),
        ] {
            let (ok, _, err) = psql(addr, &ca, "quartet", "quartet", "quartet", &["-c", sql]);
            assert!(!ok && err.contains(code), "{sql}: {err}");
        }
        // Wrong password, unknown database.
        let (ok, _, err) = psql(
            addr,
            &ca,
            "quartet",
            "wrong",
            "quartet",
            &["-c", "SELECT 1"],
        );
        // (psql prints no SQLSTATE for a failed connection; the drivers test checks them.)
        assert!(!ok && err.contains("authentication failed"), "{err}");
        let (ok, _, err) = psql(addr, &ca, "nobody", "x", "quartet", &["-c", "SELECT 1"]);
        assert!(!ok && err.contains("authentication failed"), "{err}");
        let (ok, _, err) = psql(addr, &ca, "quartet", "quartet", "nope", &["-c", "SELECT 1"]);
        assert!(
            !ok && err.contains("database \"nope\" does not exist"),
            "{err}"
        );

        // Databases, roles and grants.
        let (ok, out, err) = psql(
            addr,
            &ca,
            "quartet",
            "quartet",
            "quartet",
            &[
                "-c",
                "CREATE DATABASE shop",
                "-c",
                "CREATE ROLE reader PASSWORD 'r-secret'",
                "-c",
                "CREATE ROLE stranger PASSWORD 's-secret'",
                "-c",
                "GRANT READ ON DATABASE shop TO reader",
            ],
        );
        assert!(ok, "{out}{err}");
        let (ok, _, err) = psql(
            addr,
            &ca,
            "stranger",
            "s-secret",
            "shop",
            &["-c", "SELECT 1"],
        );
        assert!(
            !ok && err.contains("permission denied for database"),
            "no grant: {err}"
        );
        let (ok, out, err) = psql(
            addr,
            &ca,
            "reader",
            "r-secret",
            "shop",
            &["-At", "-c", "SELECT 40 + 2"],
        );
        assert!(ok && out.trim() == "42", "{out}{err}");
        let (ok, _, err) = psql(
            addr,
            &ca,
            "reader",
            "r-secret",
            "shop",
            &["-c", "CREATE TABLE x (a)"],
        );
        assert!(!ok && err.contains("42501"), "read-only grant: {err}");
        let (ok, _, err) = psql(
            addr,
            &ca,
            "reader",
            "r-secret",
            "shop",
            &["-c", "CREATE DATABASE other"],
        );
        assert!(!ok && err.contains("42501"), "not a superuser: {err}");
    })
    .await
    .unwrap();
    role.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn drivers_see_transactions_isolation_failed_state_and_cancel() {
    let test = TestConfig::new(Environment::Development);
    let role = RunningRole::start(Role::Db, &test, db_server::run).await;
    let addr = role.addr("pg");
    let a = connect(addr, "quartet", "quartet", "quartet")
        .await
        .unwrap();
    let b = connect(addr, "quartet", "quartet", "quartet")
        .await
        .unwrap();
    let err = connect(addr, "quartet", "wrong", "quartet")
        .await
        .err()
        .unwrap();
    assert_eq!(sqlstate(&err), "28P01");
    let nowhere = connect(addr, "quartet", "quartet", "nowhere")
        .await
        .unwrap();
    let err = nowhere.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), "3D000");

    a.batch_execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER NOT NULL)")
        .await
        .unwrap();
    // Extended protocol: a prepared statement with parameters, binary results.
    let insert = a
        .prepare("INSERT INTO accounts (owner, balance) VALUES ($1, $2)")
        .await
        .unwrap();
    for (owner, balance) in [("ann", 100i64), ("bob", 50i64)] {
        assert_eq!(a.execute(&insert, &[&owner, &balance]).await.unwrap(), 1);
    }
    let rows = a
        .query(
            "SELECT id, owner, balance FROM accounts WHERE balance >= $1 ORDER BY id",
            &[&60i64],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i64>("id"), 1);
    assert_eq!(rows[0].get::<_, String>("owner"), "ann");
    assert_eq!(rows[0].get::<_, i64>("balance"), 100);

    // Parameters the client leaves untyped are described from the schema: an i64 for an
    // INTEGER column, a string for a TEXT one, a float for a REAL one.
    let statement = a
        .prepare("SELECT owner FROM accounts WHERE id = $1 AND owner <> $2 LIMIT $3")
        .await
        .unwrap();
    assert_eq!(
        statement.params(),
        &[
            tokio_postgres::types::Type::INT8,
            tokio_postgres::types::Type::TEXT,
            tokio_postgres::types::Type::INT8
        ]
    );
    let rows = a
        .query(&statement, &[&2i64, &"nobody", &5i64])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "bob");

    // Isolation: b does not see a's uncommitted change; ROLLBACK undoes it.
    a.batch_execute("BEGIN; UPDATE accounts SET balance = 0 WHERE owner = 'ann'")
        .await
        .unwrap();
    let seen = b
        .simple_query("SELECT balance FROM accounts WHERE owner = 'ann'")
        .await
        .unwrap();
    let value = seen.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(value.as_deref(), Some("100"));
    // An error fails the transaction until ROLLBACK.
    let err = a.batch_execute("SELECT * FROM nowhere").await.unwrap_err();
    assert_eq!(sqlstate(&err), "42P01");
    let err = a.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), "25P02");
    a.batch_execute("ROLLBACK").await.unwrap();
    let row = a
        .query_one("SELECT balance FROM accounts WHERE owner = 'ann'", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 100);
    // A transaction that has read holds the writer: a second writer waits for it, then
    // gets a clear error.
    a.batch_execute("BEGIN; SELECT count(*) FROM accounts; UPDATE accounts SET balance = 1")
        .await
        .unwrap();
    let started = Instant::now();
    let err = b
        .batch_execute("UPDATE accounts SET balance = 2")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "55P03");
    assert!(started.elapsed() < Duration::from_secs(15));
    a.batch_execute("COMMIT").await.unwrap();
    // One that has only written (counts, no rows) does not: b's write goes on, a's
    // transaction is replayed at its COMMIT and still affects the rows it did (40001 when
    // it no longer does).
    for _ in 0..2 {
        a.batch_execute("UPDATE accounts SET balance = 1 WHERE owner = 'ann'")
            .await
            .unwrap(); // the statement's first run, so that it is known quick
    }
    a.batch_execute("BEGIN; UPDATE accounts SET balance = 7 WHERE owner = 'ann'")
        .await
        .unwrap();
    b.batch_execute("UPDATE accounts SET balance = 8 WHERE owner = 'ann'")
        .await
        .unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    let row = b
        .query_one("SELECT balance FROM accounts WHERE owner = 'ann'", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 7, "a committed after b");
    a.batch_execute("BEGIN; UPDATE accounts SET balance = 7 WHERE owner = 'ann'")
        .await
        .unwrap();
    b.batch_execute("UPDATE accounts SET owner = 'anne' WHERE owner = 'ann'")
        .await
        .unwrap();
    let err = a.batch_execute("COMMIT").await.unwrap_err();
    assert_eq!(sqlstate(&err), "40001");
    b.batch_execute("UPDATE accounts SET owner = 'ann' WHERE owner = 'anne'")
        .await
        .unwrap();

    // CancelRequest interrupts the running statement.
    let cancel = a.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel_query(tokio_postgres::NoTls).await
    });
    let started = Instant::now();
    let err = a
        .simple_query("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "57014");
    assert!(started.elapsed() < Duration::from_secs(10));
    canceller.await.unwrap().unwrap();
    // The session is usable afterwards.
    let row = a
        .query_one("SELECT count(*) AS n FROM accounts", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>("n"), 2);
    drop((a, b));
    role.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn psycopg_and_pgbench_in_all_three_modes() {
    let test = TestConfig::new(Environment::Development);
    let role = RunningRole::start(Role::Db, &test, db_server::run).await;
    let addr = role.addr("pg");
    let http = role.addr("http");
    let ca = test.data_dir().join("tls/ca.pem");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/psycopg_check.py");
    let dir = test.dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        // Debian's python3-psycopg, for Debian's python3.
        let conninfo = format!(
            "host=localhost hostaddr=127.0.0.1 port={} user=quartet password=quartet dbname=quartet sslmode=verify-full sslrootcert={}",
            addr.port(),
            ca.display()
        );
        let output = std::process::Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(&conninfo)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success() && text.contains("OK"), "{text}");

        // pgbench with a custom script, in each protocol mode.
        let (ok, out, err) = psql(
            addr,
            &ca,
            "quartet",
            "quartet",
            "quartet",
            &["-c", "CREATE TABLE bench (id INTEGER PRIMARY KEY, n INTEGER)",
              "-c", "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100) INSERT INTO bench SELECT x, 0 FROM c"],
        );
        assert!(ok, "{out}{err}");
        let bench_script = dir.join("bench.sql");
        std::fs::write(
            &bench_script,
            "\\set id random(1, 100)\nSELECT n FROM bench WHERE id = :id;\nBEGIN;\nUPDATE bench SET n = n + 1 WHERE id = :id;\nEND;\n",
        )
        .unwrap();
        let pgbench = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| versions.filter_map(Result::ok).map(|v| v.path().join("bin/pgbench")).find(|p| p.is_file()))
            .expect("pgbench (Debian's postgresql package)");
        for mode in ["simple", "extended", "prepared"] {
            let output = std::process::Command::new(&pgbench)
                .args(["-h", "127.0.0.1", "-p", &addr.port().to_string(), "-U", "quartet"])
                .args(["-n", "-c", "4", "-j", "2", "-t", "50", "-M", mode, "-f"])
                .arg(&bench_script)
                .arg("quartet")
                .env("PGPASSWORD", "quartet")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "-M {mode}: {text}");
            assert!(text.contains("number of transactions actually processed: 200/200"), "-M {mode}: {text}");
            assert!(text.contains("number of failed transactions: 0"), "-M {mode}: {text}");
        }
        let (_, out, _) = psql(addr, &ca, "quartet", "quartet", "quartet", &["-At", "-c", "SELECT sum(n) FROM bench"]);
        assert_eq!(out.trim(), "600", "every committed update counted");

        // Short statements ran on the serving thread, not on sqlx's worker thread (/metrics).
        let metrics = std::process::Command::new("curl")
            .args(["-sf", &format!("http://{http}/metrics")])
            .output()
            .unwrap();
        let metrics = String::from_utf8_lossy(&metrics.stdout);
        let count = |thread: &str| -> u64 {
            let prefix = format!("quartet_db_statements_total{{thread=\"{thread}\"}} ");
            metrics
                .lines()
                .find_map(|line| line.strip_prefix(&prefix))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
        };
        let (serving, worker) = (count("serving"), count("worker"));
        // 600 transactions: the SELECT, BEGIN IMMEDIATE, the UPDATE and COMMIT here (but the
        // first UPDATE and its COMMIT); on the worker, first runs and the psycopg script's
        // statements.
        assert!(serving >= 1100, "pgbench's selects and updates: {serving} here, {worker} on the worker");
        assert!(worker <= 1500, "{serving} here, {worker} on the worker");
    })
    .await
    .unwrap();
    role.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlx_postgres_driver_pools_binds_and_decodes() {
    let test = TestConfig::new(Environment::Development);
    let role = RunningRole::start(Role::Db, &test, db_server::run).await;
    let addr = role.addr("pg");
    let url = format!(
        "postgres://quartet:quartet@127.0.0.1:{}/quartet?sslmode=disable",
        addr.port()
    );
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, stars INTEGER)")
        .execute(&pool)
        .await
        .unwrap();
    for (body, stars) in [("first", 3i64), ("second", 5i64)] {
        let done = sqlx::query("INSERT INTO notes (body, stars) VALUES ($1, $2)")
            .bind(body)
            .bind(stars)
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1);
    }
    let (id, body): (i64, String) =
        sqlx::query_as("SELECT id, body FROM notes WHERE stars > $1 ORDER BY id")
            .bind(4i64)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((id, body.as_str()), (2, "second"));
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("DELETE FROM notes")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM notes")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 2);
    let err = sqlx::query("INSERT INTO notes (id, body) VALUES (1, 'again')")
        .execute(&pool)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("23505")
    );
    pool.close().await;
    role.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_left_idle_is_ended_and_frees_the_writer() {
    let test = TestConfig::new(Environment::Development)
        .set("db.idle_in_transaction_timeout_secs", "1")
        .set("db.lock_timeout_secs", "10");
    let role = RunningRole::start(Role::Db, &test, db_server::run).await;
    let addr = role.addr("pg");
    let idle = connect(addr, "quartet", "quartet", "quartet")
        .await
        .unwrap();
    let other = connect(addr, "quartet", "quartet", "quartet")
        .await
        .unwrap();
    // A transaction that keeps working past the timeout is not idle; and its statements do
    // not each leave a sleeping task behind (one watcher per connection).
    let busy = connect(addr, "quartet", "quartet", "quartet")
        .await
        .unwrap();
    busy.batch_execute("CREATE TABLE w (n INTEGER); BEGIN")
        .await
        .unwrap();
    // Sessions run on the role's serving threads, whose tasks /metrics counts.
    let http = role.addr("http");
    let tasks = serving_tasks(http);
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_millis(1500) || n < 100 {
        busy.batch_execute(&format!("INSERT INTO w VALUES ({n})"))
            .await
            .unwrap();
        n += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Three sessions and the busy one's watcher.
    assert!(tasks >= 4, "{tasks} tasks on the serving threads");
    let grown = serving_tasks(http).saturating_sub(tasks);
    assert!(grown < 20, "{grown} more tasks after {n} statements");
    busy.batch_execute("COMMIT").await.unwrap();
    let rows = busy.query_one("SELECT count(*) FROM w", &[]).await.unwrap();
    assert_eq!(rows.get::<_, i64>(0), n);
    drop(busy);
    // (RETURNING pins the transaction to the writer: it holds it while idle.)
    idle.batch_execute("CREATE TABLE t (n INTEGER); BEGIN; INSERT INTO t VALUES (1) RETURNING n")
        .await
        .unwrap();
    // The other session's write waits for the writer, which the timeout frees.
    let started = Instant::now();
    other
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let err = idle.batch_execute("COMMIT").await.unwrap_err();
    assert_eq!(sqlstate(&err), "25P03");
    let rows = other
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap();
    assert_eq!(
        rows.get::<_, i64>(0),
        1,
        "the idle transaction's insert was rolled back"
    );
    drop((idle, other));
    role.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_on_the_postgresql_port_is_refused_and_the_server_goes_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let test = TestConfig::new(Environment::Development);
    let role = RunningRole::start(Role::Db, &test, db_server::run).await;
    let addr = role.addr("pg");
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0u8, 0, 0, 8, 0, 0, 0, 0][..],
        &[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0][..],
        &[0u8; 64][..],
    ] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(garbage).await.unwrap();
        let mut reply = Vec::new();
        // An error or a closed connection, never a hang. (A startup packet that never
        // completes is closed by the 60 s startup timeout, as PostgreSQL's
        // authentication_timeout does; not waited for here.)
        let read =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply)).await;
        assert!(read.is_ok(), "no answer to {garbage:?}");
        assert!(
            reply.is_empty() || reply[0] == b'E',
            "{garbage:?}: {reply:?}"
        );
    }
    let client = connect(addr, "quartet", "quartet", "quartet")
        .await
        .unwrap();
    let row = client
        .query_one("SELECT count(*) FROM (SELECT 1 UNION ALL SELECT 2)", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 2);
    drop(client);
    role.stop().await.unwrap();
}

/// Stopping the role ends its sessions at once, as PostgreSQL's fast shutdown does, instead of
/// waiting out the drain for clients that stay connected: an idle session is closed and its
/// open transaction rolled back; what was committed is there after a restart.
#[tokio::test(flavor = "multi_thread")]
async fn stopping_ends_sessions_and_rolls_back_what_they_left_open() {
    let test = TestConfig::new(Environment::Development);
    let role = RunningRole::start(Role::Db, &test, db_server::run).await;
    let addr = role.addr("pg");
    let idle = connect(addr, "quartet", "quartet", "quartet")
        .await
        .unwrap();
    let in_transaction = connect(addr, "quartet", "quartet", "quartet")
        .await
        .unwrap();
    idle.batch_execute("CREATE TABLE s (n INTEGER); INSERT INTO s VALUES (1)")
        .await
        .unwrap();
    in_transaction
        .batch_execute("BEGIN; INSERT INTO s VALUES (2)")
        .await
        .unwrap();
    let started = Instant::now();
    role.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stopping took {:?} with two clients connected",
        started.elapsed()
    );
    assert!(idle.batch_execute("SELECT 1").await.is_err());
    assert!(in_transaction.batch_execute("COMMIT").await.is_err());
    assert!(idle.is_closed() && in_transaction.is_closed());

    let role = RunningRole::start(Role::Db, &test, db_server::run).await;
    let client = connect(role.addr("pg"), "quartet", "quartet", "quartet")
        .await
        .unwrap();
    let rows = client
        .query("SELECT n FROM s ORDER BY n", &[])
        .await
        .unwrap();
    let kept: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
    assert_eq!(
        kept,
        vec![1],
        "the committed row, not the open transaction's"
    );
    drop(client);
    role.stop().await.unwrap();
}

/// Grants per database: WRITE reads and writes but cannot grant; ADMIN grants on its own
/// database only; READ only reads; REVOKE takes the database away from new sessions.
#[tokio::test(flavor = "multi_thread")]
async fn write_and_admin_grants_and_revoke() {
    let test = TestConfig::new(Environment::Development);
    let role = RunningRole::start(Role::Db, &test, db_server::run).await;
    let addr = role.addr("pg");
    let root = connect(addr, "quartet", "quartet", "quartet")
        .await
        .unwrap();
    root.batch_execute(
        "CREATE DATABASE g; CREATE ROLE w PASSWORD 'wpw'; CREATE ROLE a PASSWORD 'apw'; \
         CREATE ROLE r PASSWORD 'rpw'; GRANT WRITE ON DATABASE g TO w; \
         GRANT ADMIN ON DATABASE g TO a",
    )
    .await
    .unwrap();

    let writer = connect(addr, "w", "wpw", "g").await.unwrap();
    writer
        .batch_execute("CREATE TABLE x (n INTEGER); INSERT INTO x VALUES (1)")
        .await
        .unwrap();
    let err = writer
        .batch_execute("GRANT READ ON DATABASE g TO r")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "{err}");

    let admin = connect(addr, "a", "apw", "g").await.unwrap();
    admin
        .batch_execute("GRANT READ ON DATABASE g TO r")
        .await
        .unwrap();
    let err = admin
        .batch_execute("GRANT READ ON DATABASE quartet TO r")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "admin on g only: {err}");

    let reader = connect(addr, "r", "rpw", "g").await.unwrap();
    let n: i64 = reader
        .query_one("SELECT n FROM x", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let err = reader
        .batch_execute("INSERT INTO x VALUES (2)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "{err}");
    assert_eq!(
        refused(addr, "r", "rpw", "quartet").await,
        "42501",
        "no grant on quartet"
    );

    admin
        .batch_execute("REVOKE READ ON DATABASE g FROM r")
        .await
        .unwrap();
    assert_eq!(refused(addr, "r", "rpw", "g").await, "42501", "revoked");
    root.batch_execute("REVOKE WRITE ON DATABASE g FROM w")
        .await
        .unwrap();
    assert_eq!(refused(addr, "w", "wpw", "g").await, "42501", "revoked");
    drop((root, writer, admin, reader));
    role.stop().await.unwrap();
}

/// The SQLSTATE that refuses `user` on `database`: the session opens on its first query,
/// where the grant is checked (FATAL).
async fn refused(addr: SocketAddr, user: &str, password: &str, database: &str) -> String {
    let client = connect(addr, user, password, database).await.unwrap();
    let err = client.batch_execute("SELECT 1").await.unwrap_err();
    assert!(
        client.batch_execute("SELECT 1").await.is_err(),
        "a FATAL ends the session: {err}"
    );
    sqlstate(&err)
}

/// Past `db.max_connections`, a client is refused at startup with 53300, as PostgreSQL's
/// "too many clients", instead of waiting; once a session ends, the next one gets in.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_past_max_connections_are_refused_with_53300() {
    let test = TestConfig::new(Environment::Development).set("db.max_connections", "2");
    let role = RunningRole::start(Role::Db, &test, db_server::run).await;
    let addr = role.addr("pg");
    // A connection that never asks for a session (a probe) takes no place.
    let _probe = tokio::net::TcpStream::connect(addr).await.unwrap();
    let first = connect(addr, "quartet", "quartet", "quartet")
        .await
        .unwrap();
    let second = connect(addr, "quartet", "quartet", "quartet")
        .await
        .unwrap();
    assert_eq!(
        first
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        1
    );
    support::refused_when_full_then_admitted(addr, "quartet", second).await;
    drop(first);
    role.stop().await.unwrap();
}

/// Every parameter type the protocol lists, sent in binary (tokio-postgres sends all
/// parameters so), and results read back in binary with their own type OIDs. Dates, times and
/// numerics go as the bytes PostgreSQL itself would send.
#[tokio::test(flavor = "multi_thread")]
async fn binary_parameters_and_results_of_every_listed_type() {
    use tokio_postgres::types::Type;
    let test = TestConfig::new(Environment::Development);
    let role = RunningRole::start(Role::Db, &test, db_server::run).await;
    let client = connect(role.addr("pg"), "quartet", "quartet", "quartet")
        .await
        .unwrap();
    client
        .batch_execute(
            "CREATE TABLE typed (i2 SMALLINT, i4 INTEGER, i8 BIGINT, f4 REAL, f8 DOUBLE PRECISION, \
             b BOOLEAN, t TEXT, by BYTEA, n NUMERIC, d DATE, tm TIME, ts TIMESTAMP, tz TIMESTAMP, \
             absent TEXT)",
        )
        .await
        .unwrap();
    let insert = client
        .prepare_typed(
            "INSERT INTO typed VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            &[
                Type::INT2,
                Type::INT4,
                Type::INT8,
                Type::FLOAT4,
                Type::FLOAT8,
                Type::BOOL,
                Type::TEXT,
                Type::BYTEA,
                Type::NUMERIC,
                Type::DATE,
                Type::TIME,
                Type::TIMESTAMP,
                Type::TIMESTAMPTZ,
                Type::TEXT,
            ],
        )
        .await
        .unwrap();
    // 2024-02-29 13:14:15.123456 UTC.
    let at = std::time::UNIX_EPOCH + Duration::from_micros(1_709_212_455_123_456);
    // 12345.678: three base-10000 digits (1, 2345, 6780), weight 1, scale 3.
    let numeric = Raw(vec![0, 3, 0, 1, 0, 0, 0, 3, 0, 1, 0x09, 0x29, 0x1a, 0x7c]);
    let date = Raw(8825i32.to_be_bytes().to_vec()); // days from 2000-01-01 to 2024-02-29
    let time = Raw(45_296_500_000i64.to_be_bytes().to_vec()); // 12:34:56.5
    let inserted = client
        .execute(
            &insert,
            &[
                &7i16,
                &-8i32,
                &(1i64 << 40),
                &1.5f32,
                &-2.25f64,
                &true,
                &"héllo",
                &vec![0u8, 255, 10],
                &numeric,
                &date,
                &time,
                &at,
                &at,
                &None::<&str>,
            ],
        )
        .await
        .unwrap();
    assert_eq!(inserted, 1);

    // As stored, in text.
    let rows = client
        .simple_query("SELECT i2, i4, i8, f4, f8, b, t, n, d, tm, ts, tz, absent FROM typed")
        .await
        .unwrap();
    let row = rows
        .iter()
        .find_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .expect("a row");
    let texts: Vec<Option<&str>> = (0..13).map(|index| row.get(index)).collect();
    assert_eq!(
        texts,
        vec![
            Some("7"),
            Some("-8"),
            Some("1099511627776"),
            Some("1.5"),
            Some("-2.25"),
            Some("t"),
            Some("héllo"),
            Some("12345.678"),
            Some("2024-02-29"),
            Some("12:34:56.5"),
            Some("2024-02-29 13:14:15.123456"),
            Some("2024-02-29 13:14:15.123456"),
            None,
        ]
    );

    // In binary, each column with its type.
    let row = client
        .query_one("SELECT i8, f8, b, t, by, d, tm, ts, absent FROM typed", &[])
        .await
        .unwrap();
    let types: Vec<&Type> = row.columns().iter().map(|c| c.type_()).collect();
    assert_eq!(
        types,
        vec![
            &Type::INT8,
            &Type::FLOAT8,
            &Type::BOOL,
            &Type::TEXT,
            &Type::BYTEA,
            &Type::DATE,
            &Type::TIME,
            &Type::TIMESTAMP,
            &Type::TEXT
        ]
    );
    assert_eq!(row.get::<_, i64>(0), 1 << 40);
    assert_eq!(row.get::<_, f64>(1), -2.25);
    assert!(row.get::<_, bool>(2));
    assert_eq!(row.get::<_, &str>(3), "héllo");
    assert_eq!(row.get::<_, Vec<u8>>(4), vec![0, 255, 10]);
    assert_eq!(row.get::<_, Raw>(5).0, date.0);
    assert_eq!(row.get::<_, Raw>(6).0, time.0);
    assert_eq!(row.get::<_, std::time::SystemTime>(7), at);
    assert_eq!(row.get::<_, Option<&str>>(8), None);

    // A timestamp column as SQLite's date functions fill it (Unix seconds, a Julian day,
    // text without seconds) reads back in binary as the same moment.
    client
        .batch_execute(
            "CREATE TABLE stamps (at TIMESTAMP); INSERT INTO stamps VALUES \
             (unixepoch('2024-02-29 18:00:00')), (julianday('2024-02-29 18:00:00')), \
             ('2024-02-29T18:00')",
        )
        .await
        .unwrap();
    // (A Julian day at midnight or noon is a whole number, which SQLite stores as an
    // integer, read as Unix seconds: hence 18:00.)
    let evening = std::time::UNIX_EPOCH + Duration::from_secs(1_709_229_600);
    let rows = client.query("SELECT at FROM stamps", &[]).await.unwrap();
    assert_eq!(rows.len(), 3);
    for row in rows {
        assert_eq!(row.get::<_, std::time::SystemTime>(0), evening);
    }

    // Undeclared, a parameter takes its column's type: bytes go into a BYTEA column.
    client
        .execute(
            "UPDATE typed SET by = $1 WHERE by IS NOT NULL",
            &[&vec![7u8, 8]],
        )
        .await
        .unwrap();
    let by: Vec<u8> = client
        .query_one("SELECT by FROM typed", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(by, vec![7, 8]);

    // A bad binary value is refused with 22P02, and the session goes on.
    let insert_date = client
        .prepare_typed("INSERT INTO typed (d) VALUES ($1)", &[Type::DATE])
        .await
        .unwrap();
    let err = client
        .execute(&insert_date, &[&Raw(vec![1, 2, 3])])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "22P02", "{err}");
    assert_eq!(
        client
            .query_one("SELECT count(*) FROM typed", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        1
    );
    drop(client);
    role.stop().await.unwrap();
}

/// A value's bytes as they go on the wire, for any type.
#[derive(Debug)]
struct Raw(Vec<u8>);

impl tokio_postgres::types::ToSql for Raw {
    fn to_sql(
        &self,
        _: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.0);
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

impl<'a> tokio_postgres::types::FromSql<'a> for Raw {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

/// `quartet_db_serving_tasks` from the role's /metrics.
fn serving_tasks(http: std::net::SocketAddr) -> u64 {
    let metrics = std::process::Command::new("curl")
        .args(["-sf", &format!("http://{http}/metrics")])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("quartet_db_serving_tasks "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no quartet_db_serving_tasks in {metrics}"))
}
