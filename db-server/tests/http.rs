//! The HTTP SQL API with curl: queries with parameters, atomic requests, SQLSTATEs, auth by
//! password and by token, databases, and a backup restored.

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions

use common::testing::{RunningRole, TestConfig, curl};
use common::{Environment, Role};

fn call(
    base: &str,
    auth: &[&str],
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let url = format!("{base}{path}");
    let mut args: Vec<&str> = vec!["-X", method];
    args.extend_from_slice(auth);
    if let Some(body) = body {
        args.extend([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    args.push(&url);
    let (status, text) = curl(&args);
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_over_http_with_auth_databases_and_backups() {
    let test = TestConfig::new(Environment::Development).set("db.http_max_rows", "50");
    let role = RunningRole::start(Role::Db, &test, db_server::run).await;
    let base = format!("http://{}", role.addr("http"));
    let dir = test.dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let admin: &[&str] = &["-u", "quartet:quartet"];
        let q = |auth: &[&str], db: &str, body: &str| call(&base, auth, "POST", &format!("/db/{db}/query"), Some(body));

        let (status, body) = q(admin, "quartet", r#"{"statements":[
            {"sql":"CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE, score REAL)"},
            {"sql":"INSERT INTO t (name, score) VALUES (?, ?)","params":["ann", 1.5]},
            {"sql":"INSERT INTO t (name, score) VALUES ($1, $2)","params":["bob", null]},
            {"sql":"SELECT id, name, score FROM t WHERE id = ?","params":[1]}]}"#);
        assert_eq!(status, 200, "{body}");
        let results = body["results"].as_array().unwrap();
        assert_eq!(results[1]["rows_affected"], 1);
        assert_eq!(results[2]["last_insert_id"], 2);
        assert_eq!(results[3]["columns"], serde_json::json!(["id", "name", "score"]));
        assert_eq!(results[3]["types"], serde_json::json!(["INTEGER", "TEXT", "REAL"]));
        assert_eq!(results[3]["rows"], serde_json::json!([[1, "ann", 1.5]]));

        // Without a transaction each statement stands alone; errors carry their SQLSTATE.
        let (status, body) = q(admin, "quartet", r#"{"statements":[{"sql":"SELECT * FROM nope"},{"sql":"SELECT 1 AS one"}]}"#);
        assert_eq!(status, 200);
        assert_eq!(body["results"][0]["error"]["code"], "42P01");
        assert_eq!(body["results"][1]["rows"], serde_json::json!([[1]]));
        // With one, a failure undoes the whole request.
        let (status, body) = q(admin, "quartet", r#"{"transaction":true,"statements":[
            {"sql":"INSERT INTO t (name) VALUES ('cid')"},
            {"sql":"INSERT INTO t (name) VALUES ('ann')"}]}"#);
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "23505");
        assert_eq!(body["statement"], 1);
        let (_, body) = q(admin, "quartet", r#"{"statements":[{"sql":"SELECT count(*) FROM t"}]}"#);
        assert_eq!(body["results"][0]["rows"], serde_json::json!([[2]]));
        // Limits and garbage.
        let (_, body) = q(admin, "quartet", r#"{"statements":[{"sql":"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 100) SELECT x FROM c"}]}"#);
        assert_eq!(body["results"][0]["error"]["code"], "54000", "{body}");
        // Nothing reaches past the database: no ATTACH (of the role catalog, say), no VACUUM
        // INTO a path, no PRAGMA that would weaken durability, no second statement smuggled
        // into one entry.
        let (_, body) = q(admin, "quartet", r#"{"statements":[
            {"sql":"ATTACH DATABASE 'data/db/system.db' AS sys"},
            {"sql":"VACUUM INTO '/tmp/stolen.db'"},
            {"sql":"PRAGMA synchronous = OFF"},
            {"sql":"SELECT 1; ATTACH 'x.db' AS x"},
            {"sql":"SELECT 1; SELECT 2"},
            {"sql":"PRAGMA table_info(t)"}]}"#);
        for i in 0..4 {
            assert_eq!(body["results"][i]["error"]["code"], "42501", "{body}");
        }
        assert_eq!(body["results"][4]["error"]["code"], "42601", "{body}");
        assert_eq!(body["results"][5]["rows"].as_array().unwrap().len(), 3, "{body}");
        assert!(!std::path::Path::new("/tmp/stolen.db").exists());
        let (status, _) = q(admin, "quartet", "not json");
        assert_eq!(status, 400);
        let (status, _) = q(admin, "quartet", r#"{"statements":[{"sql":"SELECT ?","params":[[1]]}]}"#);
        assert_eq!(status, 200);

        // Authentication and privileges.
        let (status, body) = q(&["-u", "quartet:wrong"], "quartet", r#"{"statements":[{"sql":"SELECT 1"}]}"#);
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "28P01");
        let (status, _) = q(&[], "quartet", r#"{"statements":[{"sql":"SELECT 1"}]}"#);
        assert_eq!(status, 401);
        let (status, body) = q(admin, "nowhere", r#"{"statements":[{"sql":"SELECT 1"}]}"#);
        assert_eq!((status, body["error"]["code"].as_str()), (404, Some("3D000")));
        q(admin, "quartet", r#"{"statements":[{"sql":"CREATE ROLE viewer PASSWORD 'v'"},{"sql":"GRANT READ ON DATABASE quartet TO viewer"}]}"#);
        let viewer: &[&str] = &["-u", "viewer:v"];
        let (status, body) = q(viewer, "quartet", r#"{"statements":[{"sql":"SELECT name FROM t ORDER BY id"},{"sql":"DELETE FROM t"}]}"#);
        assert_eq!(status, 200);
        assert_eq!(body["results"][0]["rows"], serde_json::json!([["ann"], ["bob"]]));
        assert_eq!(body["results"][1]["error"]["code"], "42501");
        // A token bound to the viewer role.
        let (status, body) = call(&base, viewer, "POST", "/tokens", None);
        assert_eq!(status, 201, "{body}");
        let bearer = format!("Authorization: Bearer {}", body["token"].as_str().unwrap());
        let (status, body) = q(&["-H", &bearer], "quartet", r#"{"statements":[{"sql":"SELECT count(*) FROM t"}]}"#);
        assert_eq!(status, 200, "{body}");
        let (status, _) = q(&["-H", "Authorization: Bearer nope"], "quartet", r#"{"statements":[{"sql":"SELECT 1"}]}"#);
        assert_eq!(status, 401);

        // A changed password ends logins with the old one at once, cached or not.
        q(admin, "quartet", r#"{"statements":[{"sql":"ALTER ROLE viewer PASSWORD 'v2'"}]}"#);
        let (status, _) = q(viewer, "quartet", r#"{"statements":[{"sql":"SELECT 1"}]}"#);
        assert_eq!(status, 401);
        let (status, _) = q(&["-u", "viewer:v2"], "quartet", r#"{"statements":[{"sql":"SELECT 1"}]}"#);
        assert_eq!(status, 200);
        q(admin, "quartet", r#"{"statements":[{"sql":"ALTER ROLE viewer PASSWORD 'v'"}]}"#);

        // Databases.
        let (status, _) = call(&base, admin, "PUT", "/db/shop", None);
        assert_eq!(status, 201);
        let (status, _) = call(&base, admin, "PUT", "/db/shop", None);
        assert_eq!(status, 409);
        let (status, _) = call(&base, viewer, "PUT", "/db/other", None);
        assert_eq!(status, 403);
        let (_, body) = call(&base, admin, "GET", "/db", None);
        assert_eq!(body["databases"].as_array().unwrap().len(), 2, "{body}");
        let (_, body) = call(&base, viewer, "GET", "/db", None);
        assert_eq!(body["databases"], serde_json::json!([{"name": "quartet", "privilege": "read"}]));
        let (status, _) = call(&base, admin, "DELETE", "/db/shop", None);
        assert_eq!(status, 204);

        // A backup, a change, a restore: the change is gone and the snapshot checks out.
        let snapshot = dir.join("quartet-snapshot.db");
        let (status, _) = curl(&["-u", "quartet:quartet", "-o", snapshot.to_str().unwrap(), &format!("{base}/db/quartet/backup")]);
        assert_eq!(status, 200);
        assert!(std::fs::read(&snapshot).unwrap().starts_with(b"SQLite format 3\0"));
        q(admin, "quartet", r#"{"statements":[{"sql":"DELETE FROM t"}]}"#);
        let (status, body) = curl(&["-u", "quartet:quartet", "--data-binary", &format!("@{}", snapshot.display()), &format!("{base}/db/quartet/restore")]);
        assert_eq!(status, 200, "{body}");
        let (_, body) = q(admin, "quartet", r#"{"statements":[{"sql":"SELECT name FROM t ORDER BY id"},{"sql":"PRAGMA integrity_check"}]}"#);
        assert_eq!(body["results"][0]["rows"], serde_json::json!([["ann"], ["bob"]]));
        assert_eq!(body["results"][1]["rows"], serde_json::json!([["ok"]]));
        // Garbage is not restored.
        let (status, body) = curl(&["-u", "quartet:quartet", "--data-binary", "not a database", &format!("{base}/db/quartet/restore")]);
        assert_eq!(status, 400, "{body}");
        let (status, _) = curl(&["-u", "viewer:v", "--data-binary", &format!("@{}", snapshot.display()), &format!("{base}/db/quartet/restore")]);
        assert_eq!(status, 403);
    })
    .await
    .unwrap();
    role.stop().await.unwrap();
}

/// `db.http_max_response_bytes` and `db.http_max_body_bytes`: an answer that would grow past
/// its limit is refused with 54000 (413) and, in a transaction, undoes the request; a body
/// past its limit is refused before it is read; the server goes on.
#[tokio::test(flavor = "multi_thread")]
async fn answers_and_bodies_past_their_limits_are_refused() {
    let test = TestConfig::new(Environment::Development)
        .set("db.http_max_response_bytes", "2000")
        .set("db.http_max_body_bytes", "4096");
    let role = RunningRole::start(Role::Db, &test, db_server::run).await;
    let base = format!("http://{}", role.addr("http"));
    tokio::task::spawn_blocking(move || {
        let admin: &[&str] = &["-u", "quartet:quartet"];
        let q = |body: &str| call(&base, admin, "POST", "/db/quartet/query", Some(body));
        let (status, body) = q(r#"{"statements":[{"sql":"CREATE TABLE big (n INTEGER)"}]}"#);
        assert_eq!(status, 200, "{body}");

        // 500 rows of about 10 bytes each in JSON: past 2,000 bytes.
        let many = r#"WITH RECURSIVE c(x) AS (SELECT 1000000 UNION ALL SELECT x + 1 FROM c LIMIT 500) SELECT x FROM c"#;
        let (status, body) = q(&format!(
            r#"{{"transaction":true,"statements":[{{"sql":"INSERT INTO big VALUES (1)"}},{{"sql":"{many}"}}]}}"#
        ));
        assert_eq!(status, 413, "{body}");
        assert_eq!(body["error"]["code"], "54000", "{body}");
        let (status, body) = q(r#"{"statements":[{"sql":"SELECT count(*) FROM big"}]}"#);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["results"][0]["rows"], serde_json::json!([[0]]), "the INSERT was undone");
        // A small answer is fine.
        let (status, body) = q(&format!(r#"{{"statements":[{{"sql":"{}"}}]}}"#, many.replace("500", "5")));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["results"][0]["rows"].as_array().map(Vec::len), Some(5));

        // A body of 5,000 bytes.
        let padded = format!(
            r#"{{"statements":[{{"sql":"SELECT 1 /* {} */"}}]}}"#,
            "x".repeat(5000)
        );
        let (status, _) = q(&padded);
        assert_eq!(status, 413);
        let (status, body) = q(r#"{"statements":[{"sql":"SELECT 1 AS one"}]}"#);
        assert_eq!(status, 200, "{body}");
    })
    .await
    .unwrap();
    role.stop().await.unwrap();
}
