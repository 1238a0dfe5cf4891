//! `db.backend = "postgres://…"`: db-server in front of a real PostgreSQL 15 that the test
//! starts itself (`initdb` in a temporary directory, TLS on, SCRAM logins, a loopback port
//! picked at run time). Clients: psql, tokio-postgres, sqlx, curl on the HTTP API.

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::testing::{PostgresCluster as Cluster, RunningRole, TestConfig, curl};
use common::{Environment, Role};

mod support;
use support::{connect, sqlstate as code};

fn psql(
    addr: SocketAddr,
    ca: &Path,
    user: &str,
    password: &str,
    db: &str,
    args: &[&str],
) -> (bool, String) {
    let conninfo = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user={user} dbname={db} sslmode=verify-full sslrootcert={}",
        addr.port(),
        ca.display()
    );
    let output = Command::new("psql")
        .arg(&conninfo)
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose"])
        .args(args)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_postgresql_behind_the_same_front_ends() {
    let cluster = Cluster::start();
    let test = TestConfig::new(Environment::Development)
        .set("db.backend", cluster.url("postgres"))
        .set("db.backend_pool_size", "4")
        .set("db.statement_timeout_secs", "3");
    let role = RunningRole::start(Role::Db, &test, db_server::run).await;
    let pg = role.addr("pg");
    let http = role.addr("http");
    let ca = test.data_dir().join("tls/ca.pem");

    // psql over TLS to db-server, SCRAM with Quartet's role; CREATE DATABASE reaches the
    // backend; then tables, rows and psql's meta-commands on the real catalog.
    let ca_for_psql = ca.clone();
    tokio::task::spawn_blocking(move || {
        let (ok, out) = psql(pg, &ca_for_psql, "quartet", "quartet", "quartet", &["-c", "CREATE DATABASE shop"]);
        assert!(ok, "{out}");
        let (ok, out) = psql(
            pg,
            &ca_for_psql,
            "quartet",
            "quartet",
            "shop",
            &[
                "-c",
                "CREATE TABLE items (id serial PRIMARY KEY, name text UNIQUE NOT NULL, price numeric(10,2))",
                "-c",
                "INSERT INTO items (name, price) VALUES ('tea', 3.50), ('cake', 4.25)",
                "-At",
                "-c",
                "SELECT name, price FROM items ORDER BY id",
                "-c",
                "SHOW server_version",
                "-c",
                "\\dt",
                "-c",
                "\\d items",
                "-c",
                "\\l",
            ],
        );
        assert!(ok, "{out}");
        assert!(out.contains("tea|3.50\ncake|4.25\n"), "{out}");
        assert!(out.starts_with("CREATE TABLE") && out.contains("\n15."), "{out}");
        assert!(out.contains("public|items|table|pgadmin"), "{out}");
        assert!(out.contains("name|text||not null|"), "{out}");
        assert!(out.contains("shop|pgadmin|UTF8"), "{out}");
    })
    .await
    .unwrap();

    // tokio-postgres, extended protocol: parameters, SQLSTATEs, transactions.
    let client = connect(pg, "quartet", "quartet", "shop").await.unwrap();
    let rows = client
        .query(
            "SELECT name FROM items WHERE price > $1::text::numeric ORDER BY id",
            &[&"4"],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "cake");
    let err = client
        .execute("INSERT INTO items (name) VALUES ($1)", &[&"tea"])
        .await
        .unwrap_err();
    assert_eq!(code(&err), "23505");
    let err = client
        .simple_query("SELECT * FROM missing")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "42P01");
    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute("INSERT INTO items (name) VALUES ($1)", &[&"scone"])
        .await
        .unwrap();
    let err = client.simple_query("SELEC 1").await.unwrap_err();
    assert_eq!(code(&err), "42601");
    let err = client.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(code(&err), "25P02", "a failed transaction stays failed");
    client.batch_execute("ROLLBACK").await.unwrap();
    let count: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2, "the rolled back insert is gone");

    // Quartet's roles and grants, also through the extended protocol (tokio-postgres
    // prepares every statement).
    client
        .execute("CREATE ROLE reader PASSWORD 'read-pw'", &[])
        .await
        .unwrap();
    client
        .execute("GRANT READ ON DATABASE shop TO reader", &[])
        .await
        .unwrap();
    let reader = connect(pg, "reader", "read-pw", "shop").await.unwrap();
    let rows = reader.query("SELECT name FROM items", &[]).await.unwrap();
    assert_eq!(rows.len(), 2);
    let err = reader
        .execute("INSERT INTO items (name) VALUES ('x')", &[])
        .await
        .unwrap_err();
    assert_eq!(code(&err), "25006", "a read grant is a read-only session");
    let err = reader
        .batch_execute("SET default_transaction_read_only = off")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "42501");
    let err = reader
        .query(
            "SELECT set_config('transaction_read_only', 'off', false)",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), "42501");
    // The session goes on after a refusal.
    assert_eq!(reader.query("SELECT 1", &[]).await.unwrap().len(), 1);
    let err = connect(pg, "reader", "wrong", "shop").await.unwrap_err();
    assert_eq!(code(&err), "28P01");
    let err = connect(pg, "nobody", "x", "shop").await.unwrap_err();
    assert_eq!(code(&err), "28P01");
    let err = connect(pg, "reader", "read-pw", "quartet")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "42501", "no grant on that database");
    let err = connect(pg, "quartet", "quartet", "nowhere")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "3D000");

    // Cancel and the statement timeout reach the backend.
    let err = client
        .simple_query("SELECT pg_sleep(10)")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "57014", "db.statement_timeout_secs applies");
    let victim = connect(pg, "quartet", "quartet", "shop").await.unwrap();
    let token = victim.cancel_token();
    let running = tokio::spawn(async move {
        victim
            .simple_query("SELECT pg_sleep(2.9)")
            .await
            .map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = running.await.unwrap().unwrap_err();
    assert_eq!(code(&err), "57014", "CancelRequest interrupts the backend");

    // Session pooling: the next session reuses the backend connection, reset.
    drop(reader);
    drop(client);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = connect(pg, "quartet", "quartet", "shop").await.unwrap();
    first
        .batch_execute("SET search_path = nowhere")
        .await
        .unwrap();
    first
        .batch_execute("CREATE TEMP TABLE scratch (x int)")
        .await
        .unwrap();
    let pid: i32 = first
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = connect(pg, "quartet", "quartet", "shop").await.unwrap();
    let rows = second.simple_query("SHOW search_path").await.unwrap();
    let search_path = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        search_path, "\"$user\", public",
        "settings do not leak between sessions"
    );
    let again: i32 = second
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, pid, "the backend connection was reused");
    let err = second
        .simple_query("SELECT * FROM scratch")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "42P01", "temporary tables do not leak");

    // sqlx's PostgreSQL driver.
    let pool = sqlx::PgPool::connect(&format!(
        "postgres://quartet:quartet@127.0.0.1:{}/shop?sslmode=disable",
        pg.port()
    ))
    .await
    .unwrap();
    let (name, price): (String, String) =
        sqlx::query_as("SELECT name, price::text FROM items WHERE id = $1")
            .bind(1i32)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((name.as_str(), price.as_str()), ("tea", "3.50"));
    pool.close().await;

    // The HTTP API runs on the backend too.
    let base = format!("http://{http}");
    tokio::task::spawn_blocking(move || {
        let (status, body) = curl(&[
            "-u",
            "quartet:quartet",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"statements":[{"sql":"select id, name, price, price > ? as dear from items where id <= ? order by id","params":[4,2]}]}"#,
            &format!("{base}/db/shop/query"),
        ]);
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let result = &json["results"][0];
        assert_eq!(result["columns"], serde_json::json!(["id", "name", "price", "dear"]));
        assert_eq!(
            result["types"],
            serde_json::json!(["integer", "text", "numeric", "boolean"])
        );
        assert_eq!(
            result["rows"],
            serde_json::json!([[1, "tea", "3.50", false], [2, "cake", "4.25", true]])
        );
        let (status, body) = curl(&[
            "-u",
            "quartet:quartet",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"statements":[{"sql":"insert into items (name) values (?)","params":["bun"]},{"sql":"insert into items (name) values (?)","params":["tea"]}],"transaction":true}"#,
            &format!("{base}/db/shop/query"),
        ]);
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("23505") && body.contains("\"statement\":1"), "{body}");
        let (status, body) = curl(&[
            "-u",
            "reader:read-pw",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"statements":[{"sql":"select count(*) from items"},{"sql":"delete from items"}]}"#,
            &format!("{base}/db/shop/query"),
        ]);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("[[2]]") && body.contains("25006"), "{body}");
        let (status, body) = curl(&["-u", "quartet:quartet", "-X", "PUT", &format!("{base}/db/other")]);
        assert_eq!(status, 201, "{body}");
        let (status, body) = curl(&["-u", "quartet:quartet", &format!("{base}/db")]);
        assert_eq!(status, 200);
        assert!(body.contains("\"other\"") && body.contains("\"shop\""), "{body}");
        let (status, _) = curl(&["-u", "quartet:quartet", "-X", "DELETE", &format!("{base}/db/other")]);
        assert_eq!(status, 204);
        let (status, body) = curl(&["-u", "quartet:quartet", &format!("{base}/db/shop/backup")]);
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("0A000") && body.contains("pg_dump"), "{body}");
    })
    .await
    .unwrap();
    // Garbage at the door: an error or a close, and the proxy goes on.
    tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        for garbage in [
            &b"\x00\x00\x00\x08\x12\x34\x56\x78"[..],
            &b"\x7f\xff\xff\xff"[..],
            &b"GET / HTTP/1.1\r\n\r\n"[..],
        ] {
            let mut stream = std::net::TcpStream::connect(pg).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            stream.write_all(garbage).unwrap();
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
            assert!(
                answer.is_empty() || answer[0] == b'E',
                "{garbage:?} → {answer:?}"
            );
        }
    })
    .await
    .unwrap();
    let after = connect(pg, "quartet", "quartet", "shop").await.unwrap();
    assert_eq!(after.query("SELECT 1", &[]).await.unwrap().len(), 1);

    // Stopping ends the sessions (FATAL 57P01) rather than waiting out the drain for a
    // client that stays connected, one of them in a transaction.
    after.batch_execute("BEGIN").await.unwrap();
    let started = std::time::Instant::now();
    role.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stopping took {:?}",
        started.elapsed()
    );
    let err = after.batch_execute("SELECT 1").await.unwrap_err();
    assert!(after.is_closed(), "{err}");
}

/// Past `db.max_connections`, the proxy too refuses a client at startup with 53300 instead of
/// leaving it unaccepted; once a session ends, the next one gets in.
#[tokio::test(flavor = "multi_thread")]
async fn proxied_sessions_past_max_connections_are_refused_with_53300() {
    let cluster = Cluster::start();
    let test = TestConfig::new(Environment::Development)
        .set("db.backend", cluster.url("postgres"))
        .set("db.max_connections", "1");
    let role = RunningRole::start(Role::Db, &test, db_server::run).await;
    let pg = role.addr("pg");
    let first = connect(pg, "quartet", "quartet", "postgres").await.unwrap();
    assert_eq!(
        first
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    support::refused_when_full_then_admitted(pg, "postgres", first).await;
    role.stop().await.unwrap();
}
