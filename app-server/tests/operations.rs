//! Running apps the way an operator lives with them: each app its own user with resource
//! limits, custom domains, a health path that gates traffic, restarts, a crash loop that is
//! reported (not abandoned), and the log followed live.

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions

use std::io::Read;
use std::time::{Duration, Instant};

use common::testing::{RunningRole, TestConfig, curl};
use common::{Environment, Role};

mod support;
use support::{AUTH, call, open_to_apps, tarball, upload, via_router};

fn get_host(router: &str, host: &str) -> (u16, serde_json::Value) {
    let (status, body) = curl(&["-H", &format!("Host: {host}"), &format!("{router}/")]);
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn users_limits_domains_health_paths_restarts_and_crash_loops() {
    let test = TestConfig::new(Environment::Development)
        .set("app.health_timeout_secs", "3")
        .set("app.max_open_files", "777");
    open_to_apps(test.dir.path());
    let role = RunningRole::start(Role::App, &test, app_server::run).await;
    let api = format!("http://{}", role.addr("api"));
    let router = format!("http://{}", role.addr("http"));
    let dir = test.dir.path().to_path_buf();

    tokio::task::spawn_blocking(move || {
        let (status, body) = call(
            &api,
            "POST",
            "/apps",
            Some(r#"{"name":"one","domains":["WWW.Example.test."]}"#),
        );
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["domains"], serde_json::json!(["www.example.test"]));
        let (status, body) = call(&api, "POST", "/apps", Some(r#"{"name":"two"}"#));
        assert_eq!(status, 201, "{body}");
        // A domain routes to one app only; bad names and unknown fields are refused.
        let (status, body) = call(
            &api,
            "PATCH",
            "/apps/two",
            Some(r#"{"domains":["www.example.test"]}"#),
        );
        assert_eq!(status, 409, "{body}");
        let (status, _) = call(&api, "PATCH", "/apps/two", Some(r#"{"domains":["a b"]}"#));
        assert_eq!(status, 422);
        let (status, _) = call(&api, "PATCH", "/apps/two", Some(r#"{"colour":"red"}"#));
        assert_eq!(status, 400);
        let (status, _) = call(&api, "PATCH", "/apps/two", Some(r#"{"health_path":"up"}"#));
        assert_eq!(status, 422);
        // Names under app.domain belong to the apps of those names.
        let (status, body) = call(
            &api,
            "PATCH",
            "/apps/two",
            Some(r#"{"domains":["one.localhost"]}"#),
        );
        assert_eq!(status, 422, "{body}");
        let (status, body) = call(&api, "POST", "/apps/two/restart", None);
        assert_eq!(status, 409, "nothing to restart yet: {body}");

        for app in ["one", "two"] {
            let (status, body) = upload(&api, app, &tarball("v1", None), &dir);
            assert_eq!(status, 201, "{body}");
        }
        let (status, one) = get_host(&router, "www.example.test");
        assert_eq!(status, 200, "{one}");
        assert_eq!(one["host"], "www.example.test");
        let (_, two) = via_router(&router, "two");
        assert_eq!(one["open_files_limit"], 777);
        assert_eq!(two["memory_limit"], 2048u64 * 1024 * 1024);
        if nix::unistd::geteuid().is_root() {
            // Each app its own user, never root, with a process limit of its own.
            let (uid_one, uid_two) = (one["uid"].as_u64().unwrap(), two["uid"].as_u64().unwrap());
            assert!(uid_one >= 61184 && uid_two >= 61184, "{uid_one} {uid_two}");
            assert_ne!(uid_one, uid_two);
            assert_eq!(one["processes_limit"], 512);
        }

        // A health path that answers 503 keeps the new release away from traffic.
        let (status, _) = call(
            &api,
            "PATCH",
            "/apps/two",
            Some(r#"{"health_path":"/not-ready"}"#),
        );
        assert_eq!(status, 200);
        let started = Instant::now();
        let (status, body) = upload(&api, "two", &tarball("v2", None), &dir);
        assert_eq!(status, 422, "{body}");
        let reason = body["error"].as_str().unwrap();
        assert!(reason.contains("/not-ready with 503"), "{reason}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(via_router(&router, "two").1["version"], "v1");
        let (status, _) = call(&api, "PATCH", "/apps/two", Some(r#"{"health_path":"/"}"#));
        assert_eq!(status, 200);
        let (status, body) = upload(&api, "two", &tarball("v2", None), &dir);
        assert_eq!(status, 201, "{body}");

        // A failing `build:` or `release:` leaves v2 serving, and the answer carries the output;
        // a passing `release:` runs once before the release goes live.
        let procfile = "build: echo compiling; exit 5\nweb: python3 app.py\n";
        let (status, body) = upload(&api, "two", &tarball("v3", Some(procfile)), &dir);
        assert_eq!(status, 422, "{body}");
        let reason = body["error"].as_str().unwrap();
        assert!(
            reason.starts_with("build failed") && reason.contains("compiling"),
            "{reason}"
        );
        let procfile = "release: echo migrating for $QUARTET_ENV; exit 4\nweb: python3 app.py\n";
        let (status, body) = upload(&api, "two", &tarball("v3", Some(procfile)), &dir);
        assert_eq!(status, 422, "{body}");
        let reason = body["error"].as_str().unwrap();
        assert!(
            reason.starts_with("release command failed")
                && reason.contains("migrating for development"),
            "{reason}"
        );
        assert_eq!(via_router(&router, "two").1["version"], "v2");
        // A build step runs as the app's user; what it leaves is sealed: root's, read-only.
        let procfile = "build: chmod -R a+w . && echo made > built.txt\nrelease: echo migrated v2b\nweb: python3 app.py\n";
        let (status, body) = upload(&api, "two", &tarball("v2", Some(procfile)), &dir);
        assert_eq!(status, 201, "{body}");
        let current = body["version"].as_i64().unwrap();
        let build = dir.join("data/app/builds").join(body["build"].as_str().unwrap());
        for file in ["built.txt", "app.py", "Procfile"] {
            let meta = std::fs::metadata(build.join(file)).unwrap();
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
            assert_eq!(mode & 0o022, 0, "{file} is writable by others: {mode:o}");
            if nix::unistd::geteuid().is_root() {
                assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0, "{file}");
            }
        }
        let (_, log) = call(&api, "GET", "/apps/two/logs?tail=50", None);
        let log = log.as_str().unwrap();
        let migrated = log.find("release: migrated v2b").expect("release ran");
        let serving = log
            .rfind(&format!("app-server: v{current} serves traffic"))
            .expect("serves");
        assert!(
            migrated < serving,
            "release: runs before the switch:\n{log}"
        );
        // Releases that never served stay in the history, marked, and cannot be rolled back to.
        let (_, releases) = call(&api, "GET", "/apps/two/releases", None);
        let failed: Vec<i64> = releases
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["failure"].is_string())
            .map(|r| r["version"].as_i64().unwrap())
            .collect();
        assert_eq!(
            failed.len(),
            2,
            "health check and release command: {releases}"
        );
        let (status, body) = call(
            &api,
            "POST",
            "/apps/two/rollback",
            Some(&format!(r#"{{"version":{}}}"#, failed[0])),
        );
        assert_eq!(status, 422, "{body}");

        // Follow the log live while the app restarts: the restart's lines arrive as events.
        let follow_url = format!("{api}/apps/two/logs?tail=1&follow=true");
        let mut follower = std::process::Command::new("curl")
            .args(["-sN", "--max-time", "4", "-H", AUTH, &follow_url])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let port_before = via_router(&router, "two").1["port"].clone();
        let (status, body) = call(&api, "POST", "/apps/two/restart", None);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["release"], current);
        assert_eq!(body["status"], "restarted");
        let (status, after) = via_router(&router, "two");
        assert_eq!(status, 200);
        assert_ne!(after["port"], port_before, "new processes serve");
        let mut events = String::new();
        follower
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut events)
            .unwrap();
        let _ = follower.wait();
        assert!(events.contains("data: "), "{events}");
        assert!(
            events.contains(&format!("web.1: starting v{current} on port")),
            "{events}"
        );
        assert!(events.contains("listening on port"), "app output: {events}");
        assert!(
            events.contains(&format!("app-server: v{current} serves traffic")),
            "{events}"
        );
        assert!(events.contains("web.1: stopped (replaced)"), "{events}");

        // A crash loop: restarted again and again, further apart, and shown as such.
        let (status, body) = call(
            &api,
            "PUT",
            "/apps/one/config",
            Some(r#"{"CRASH_AFTER":"0.3"}"#),
        );
        assert_eq!(status, 200, "{body}");
        std::thread::sleep(Duration::from_millis(2500));
        let (_, app) = call(&api, "GET", "/apps/one", None);
        let process = &app["processes"][0];
        assert!(process["restarts"].as_u64().unwrap() >= 2, "{app}");
        assert!(
            process["last_exit"].as_str().unwrap().contains('3'),
            "{app}"
        );
        let (_, log) = call(&api, "GET", "/apps/one/logs?tail=200", None);
        let log = log.as_str().unwrap();
        assert!(log.contains("web.1: exited"), "{log}");
        assert!(log.contains("restarting in 1s"), "backoff grows: {log}");

        // Deleting an app frees its domain and its logs.
        let (status, _) = call(&api, "DELETE", "/apps/one", None);
        assert_eq!(status, 204);
        assert_eq!(get_host(&router, "www.example.test").0, 404);
        let (status, _) = call(
            &api,
            "PATCH",
            "/apps/two",
            Some(r#"{"domains":["www.example.test"]}"#),
        );
        assert_eq!(status, 200);
        assert_eq!(get_host(&router, "www.example.test").1["version"], "v2");
        assert!(!dir.join("data/app/logs/one.log").exists());
    })
    .await
    .unwrap();
    role.stop().await.unwrap();
}
