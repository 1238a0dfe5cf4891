//! The control API through curl: token, app lifecycle, and state kept across restarts.

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions

use common::testing::{RunningRole, TestConfig, curl};
use common::{Environment, Role};

fn call(args: &[&str]) -> (u16, String) {
    curl(args)
}

#[tokio::test(flavor = "multi_thread")]
async fn apps_are_created_listed_shown_deleted_and_kept_across_restarts() {
    let test = TestConfig::new(Environment::Development).set("app.api_token", "s3cret-token");
    let role = RunningRole::start(Role::App, &test, app_server::run).await;
    let base = format!("http://{}", role.addr("api"));
    let auth = "Authorization: Bearer s3cret-token";
    let json = "Content-Type: application/json";

    let result = tokio::task::spawn_blocking({
        let base = base.clone();
        move || {
            // Without the token (or with a wrong one): 401, health stays public.
            let (status, _) = call(&[&format!("{base}/apps")]);
            assert_eq!(status, 401);
            let (status, _) = call(&["-H", "Authorization: Bearer nope", &format!("{base}/apps")]);
            assert_eq!(status, 401);
            assert_eq!(call(&[&format!("{base}/healthz")]).0, 200);

            let (status, body) = call(&[
                "-X",
                "POST",
                "-H",
                auth,
                "-H",
                json,
                "-d",
                r#"{"name":"hello"}"#,
                &format!("{base}/apps"),
            ]);
            assert_eq!(status, 201, "{body}");
            assert!(body.contains("\"name\":\"hello\""), "{body}");
            let (status, _) = call(&[
                "-X",
                "POST",
                "-H",
                auth,
                "-H",
                json,
                "-d",
                r#"{"name":"hello"}"#,
                &format!("{base}/apps"),
            ]);
            assert_eq!(status, 409);
            for bad in [
                r#"{"name":"Hello"}"#,
                r#"{"name":"-x"}"#,
                r#"{"name":"a.b"}"#,
                r#"{"name":""}"#,
            ] {
                let (status, body) = call(&[
                    "-X",
                    "POST",
                    "-H",
                    auth,
                    "-H",
                    json,
                    "-d",
                    bad,
                    &format!("{base}/apps"),
                ]);
                assert_eq!(status, 422, "{bad}: {body}");
            }
            let (status, _) = call(&[
                "-X",
                "POST",
                "-H",
                auth,
                "-H",
                json,
                "-d",
                "not json",
                &format!("{base}/apps"),
            ]);
            assert_eq!(status, 400);
            call(&[
                "-X",
                "POST",
                "-H",
                auth,
                "-H",
                json,
                "-d",
                r#"{"name":"api2"}"#,
                &format!("{base}/apps"),
            ]);

            let (status, body) = call(&["-H", auth, &format!("{base}/apps")]);
            assert_eq!(status, 200);
            let apps: serde_json::Value = serde_json::from_str(&body).unwrap();
            let names: Vec<&str> = apps
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["name"].as_str().unwrap())
                .collect();
            assert_eq!(names, ["api2", "hello"]);

            let (status, body) = call(&["-H", auth, &format!("{base}/apps/hello")]);
            assert_eq!(status, 200, "{body}");
            assert_eq!(call(&["-H", auth, &format!("{base}/apps/nope")]).0, 404);
            assert_eq!(
                call(&["-X", "DELETE", "-H", auth, &format!("{base}/apps/api2")]).0,
                204
            );
            assert_eq!(
                call(&["-X", "DELETE", "-H", auth, &format!("{base}/apps/api2")]).0,
                404
            );
        }
    })
    .await;
    result.unwrap();
    role.stop().await.unwrap();

    // A new app-server on the same data dir knows the app.
    let role = RunningRole::start(Role::App, &test, app_server::run).await;
    let base = format!("http://{}", role.addr("api"));
    let (status, body) =
        tokio::task::spawn_blocking(move || call(&["-H", auth, &format!("{base}/apps")]))
            .await
            .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("hello") && !body.contains("api2"), "{body}");
    role.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_uploads_and_garbage_are_refused_with_a_reason() {
    let test = TestConfig::new(Environment::Development).set("app.max_upload_bytes", "1000");
    let role = RunningRole::start(Role::App, &test, app_server::run).await;
    let base = format!("http://{}", role.addr("api"));
    let dir = test.dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let auth = "Authorization: Bearer dev";
        assert_eq!(
            call(&[
                "-X",
                "POST",
                "-H",
                auth,
                "-d",
                r#"{"name":"big"}"#,
                &format!("{base}/apps")
            ])
            .0,
            201
        );
        let big = dir.join("big.bin");
        std::fs::write(&big, vec![7u8; 5000]).unwrap();
        let (status, body) = call(&[
            "-X",
            "POST",
            "-H",
            auth,
            "-H",
            "Accept: application/json",
            "--data-binary",
            &format!("@{}", big.display()),
            &format!("{base}/apps/big/builds"),
        ]);
        assert_eq!(status, 413, "{body}");
        assert!(body.contains("app.max_upload_bytes"), "{body}");
        // Small, but not a gzip'd tar: refused with the reason, nothing released.
        let junk = dir.join("junk.bin");
        std::fs::write(&junk, b"definitely not a tarball").unwrap();
        let (status, body) = call(&[
            "-X",
            "POST",
            "-H",
            auth,
            "-H",
            "Accept: application/json",
            "--data-binary",
            &format!("@{}", junk.display()),
            &format!("{base}/apps/big/builds"),
        ]);
        assert_eq!(status, 422, "{body}");
        assert!(body.contains("bad archive"), "{body}");
        // Formation and rollback bodies are checked too.
        let (status, _) = call(&[
            "-X",
            "PUT",
            "-H",
            auth,
            "-d",
            r#"{"web":"many"}"#,
            &format!("{base}/apps/big/formation"),
        ]);
        assert_eq!(status, 400);
        let (status, _) = call(&[
            "-X",
            "POST",
            "-H",
            auth,
            "-d",
            r#"{"version":42}"#,
            &format!("{base}/apps/big/rollback"),
        ]);
        assert_eq!(status, 404);
        let (status, _) = call(&[
            "-X",
            "PUT",
            "-H",
            auth,
            "-d",
            r#"{"web":500}"#,
            &format!("{base}/apps/big/formation"),
        ]);
        assert_eq!(status, 422);
        // A log request with a malformed tail, and a config that is not an object, are refused.
        let (status, _) = call(&["-H", auth, &format!("{base}/apps/big/logs?tail=lots")]);
        assert_eq!(status, 400);
        let (status, _) = call(&[
            "-X",
            "PUT",
            "-H",
            auth,
            "-d",
            "[1,2]",
            &format!("{base}/apps/big/config"),
        ]);
        assert_eq!(status, 400);
    })
    .await
    .unwrap();
    role.stop().await.unwrap();
}
