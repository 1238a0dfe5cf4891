//! A real Python app through upload, build, release, routing, redeploy, a failing release,
//! and a restart of app-server.

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions

use common::testing::{RunningRole, TestConfig, curl};
use common::{Environment, Role};

mod support;
use support::{AUTH, tarball, upload, via_router};

#[tokio::test(flavor = "multi_thread")]
async fn upload_release_route_redeploy_refuse_and_restore() {
    let test = TestConfig::new(Environment::Development);
    // Apps run as an unprivileged user when the tests run as root: let it reach the builds.
    std::fs::set_permissions(
        test.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let role = RunningRole::start(Role::App, &test, app_server::run).await;
    let api = format!("http://{}", role.addr("api"));
    let router = format!("http://{}", role.addr("http"));
    let dir = test.dir.path().to_path_buf();

    let (api2, router2, dir2) = (api.clone(), router.clone(), dir.clone());
    tokio::task::spawn_blocking(move || {
        let (api, router, dir) = (api2, router2, dir2);
        let (status, _) = curl(&[
            "-X",
            "POST",
            "-H",
            AUTH,
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"name":"hello"}"#,
            &format!("{api}/apps"),
        ]);
        assert_eq!(status, 201);
        assert_eq!(via_router(&router, "hello").0, 404, "nothing deployed yet");

        let started = std::time::Instant::now();
        let (status, body) = upload(&api, "hello", &tarball("v1", None), &dir);
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["version"], 1);
        assert_eq!(body["build"].as_str().unwrap().len(), 64, "content hash");
        eprintln!("upload to first release: {:?}", started.elapsed());

        let (status, app) = via_router(&router, "hello");
        assert_eq!(status, 200, "{app}");
        assert_eq!(app["version"], "v1");
        assert_eq!(app["quartet_env"], "development");
        assert_eq!(app["host"], format!("hello.localhost"));
        assert_eq!(app["forwarded_for"], "127.0.0.1");
        assert_ne!(app["uid"], 0, "apps never run as root");
        // Nothing of app-server's environment leaks into the app.
        let env: Vec<&str> = app["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for name in &env {
            assert!(
                [
                    "HOME",
                    "LANG",
                    "PATH",
                    "PORT",
                    "QUARTET_ENV",
                    "PWD",
                    "SHLVL",
                    "LC_CTYPE"
                ]
                .contains(name),
                "leaked {name}: {env:?}"
            );
        }

        // A redeploy, as the CLI does it: the build's progress streams, then one JSON line.
        let file = dir.join("v2.tar.gz");
        std::fs::write(&file, tarball("v2", None)).unwrap();
        let (status, text) = curl(&[
            "-X",
            "POST",
            "-H",
            AUTH,
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{api}/apps/hello/builds"),
        ]);
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("-----> Procfile: web"), "{text}");
        assert!(text.contains("-----> Releasing v2"), "{text}");
        let last: serde_json::Value =
            serde_json::from_str(text.trim_end().lines().last().unwrap()).unwrap();
        assert_eq!(last["status"], "released", "{text}");
        assert_eq!(last["version"], 2);
        assert_eq!(via_router(&router, "hello").1["version"], "v2");

        // Config vars: a new release whose processes see them; null removes one.
        let put = |body: &str| {
            let (status, body) = curl(&[
                "-X",
                "PUT",
                "-H",
                AUTH,
                "-H",
                "Content-Type: application/json",
                "-d",
                body,
                &format!("{api}/apps/hello/config"),
            ]);
            (
                status,
                serde_json::from_str::<serde_json::Value>(&body).unwrap(),
            )
        };
        let (status, body) = put(r#"{"GREETING":"hi there","EXTRA":"1"}"#);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["release"], 3);
        assert_eq!(via_router(&router, "hello").1["greeting"], "hi there");
        let (status, body) = put(r#"{"EXTRA":null}"#);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["config"], serde_json::json!({"GREETING": "hi there"}));
        assert_eq!(body["release"], 4);
        let (status, _) = put(r#"{"PORT":"1"}"#);
        assert_eq!(status, 422, "PORT is app-server's to set");

        // Rollback to v1: its build and its (empty) config, as a new release.
        let (status, body) = curl(&[
            "-X",
            "POST",
            "-H",
            AUTH,
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"version":1}"#,
            &format!("{api}/apps/hello/rollback"),
        ]);
        assert_eq!(status, 201, "{body}");
        let (_, app) = via_router(&router, "hello");
        assert_eq!(app["version"], "v1");
        assert_eq!(app["greeting"], serde_json::Value::Null);
        // And forward again to release 4's build and config.
        let (status, _) = curl(&[
            "-X",
            "POST",
            "-H",
            AUTH,
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"version":4}"#,
            &format!("{api}/apps/hello/rollback"),
        ]);
        assert_eq!(status, 201);
        assert_eq!(via_router(&router, "hello").1["greeting"], "hi there");

        // Scale to two web processes: both serve, load-balanced.
        let (status, body) = curl(&[
            "-X",
            "PUT",
            "-H",
            AUTH,
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"web":2}"#,
            &format!("{api}/apps/hello/formation"),
        ]);
        assert_eq!(status, 200, "{body}");
        let ports: std::collections::HashSet<String> = (0..6)
            .map(|_| {
                via_router(&router, "hello").1["port"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(ports.len(), 2, "{ports:?}");

        // Kill one with SIGKILL: it is restarted on its port and answers again within a second.
        let (_, status_body) = curl(&["-H", AUTH, &format!("{api}/apps/hello")]);
        let status_json: serde_json::Value = serde_json::from_str(&status_body).unwrap();
        let port = status_json["processes"][0]["port"].as_u64().unwrap() as u16;
        let pid = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ss -ltnpH 'sport = :{port}' | sed -n 's/.*pid=\\([0-9]*\\).*/\\1/p' | head -1"
            ))
            .output()
            .unwrap();
        let pid = String::from_utf8_lossy(&pid.stdout).trim().to_owned();
        assert!(!pid.is_empty(), "no pid for port {port}");
        let killed = std::time::Instant::now();
        assert!(
            std::process::Command::new("kill")
                .args(["-9", &pid])
                .status()
                .unwrap()
                .success()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                killed.elapsed() < std::time::Duration::from_secs(3),
                "not back after 3s"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!("back after kill -9 in {:?}", killed.elapsed());
        let (_, status_body) = curl(&["-H", AUTH, &format!("{api}/apps/hello")]);
        assert!(status_body.contains("\"restarts\":1"), "{status_body}");
        let (status, body) = curl(&[
            "-X",
            "PUT",
            "-H",
            AUTH,
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"web":1}"#,
            &format!("{api}/apps/hello/formation"),
        ]);
        assert_eq!(status, 200, "{body}");

        // The app's log holds every process's output, by process name.
        let (status, log) = curl(&["-H", AUTH, &format!("{api}/apps/hello/logs?tail=50")]);
        assert_eq!(status, 200);
        assert!(
            log.contains("web.1: exited"),
            "the kill is in the log:\n{log}"
        );

        // A release that never accepts connections is refused; the running one keeps serving.
        let broken = tarball("v3", Some("web: python3 -c 'import sys; sys.exit(3)'\n"));
        let (status, body) = upload(&api, "hello", &broken, &dir);
        assert_eq!(status, 422, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("health check failed"),
            "{body}"
        );
        assert_eq!(via_router(&router, "hello").1["version"], "v2");

        // A malicious archive is refused with nothing written outside the builds.
        let evil = {
            let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let mut builder = tar::Builder::new(gz);
            let mut header = tar::Header::new_gnu();
            header.set_size(1);
            header.set_mode(0o644);
            let name = header.as_old_mut().name.as_mut();
            name[..12].copy_from_slice(b"../../escape");
            header.set_cksum();
            builder.append(&header, &b"x"[..]).unwrap();
            builder.into_inner().unwrap().finish().unwrap()
        };
        let (status, body) = upload(&api, "hello", &evil, &dir);
        assert_eq!(status, 422, "{body}");
        assert!(!dir.join("data/escape").exists() && !dir.join("escape").exists());

        let (status, body) = curl(&["-H", AUTH, &format!("{api}/apps/hello/releases")]);
        assert_eq!(status, 200);
        let releases: serde_json::Value = serde_json::from_str(&body).unwrap();
        let current: Vec<i64> = releases
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["current"] == true)
            .map(|r| r["version"].as_i64().unwrap())
            .collect();
        assert_eq!(current, [6], "{releases}");
        assert_eq!(via_router(&router, "nope").0, 404);
    })
    .await
    .unwrap();
    role.stop().await.unwrap();

    // A new app-server brings the current release back.
    let role = RunningRole::start(Role::App, &test, app_server::run).await;
    let router = format!("http://{}", role.addr("http"));
    let (status, app) = tokio::task::spawn_blocking(move || via_router(&router, "hello"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{app}");
    assert_eq!(app["version"], "v2");
    let port: u16 = app["port"].as_str().unwrap().parse().unwrap();
    role.stop().await.unwrap();
    // Stopping app-server stops the app's processes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the app outlived app-server"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_entries_run_at_their_time_with_output_in_the_log() {
    let test = TestConfig::new(Environment::Development);
    std::fs::set_permissions(
        test.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let role = RunningRole::start(Role::App, &test, app_server::run).await;
    let api = format!("http://{}", role.addr("api"));
    let dir = test.dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let (status, _) = curl(&[
            "-X",
            "POST",
            "-H",
            AUTH,
            "-d",
            r#"{"name":"clock"}"#,
            &format!("{api}/apps"),
        ]);
        assert_eq!(status, 201);
        let procfile = "web: python3 app.py\ntick: * * * * * echo tick-ran for $GREETING\n";
        curl(&[
            "-X",
            "PUT",
            "-H",
            AUTH,
            "-d",
            r#"{"GREETING":"the schedule"}"#,
            &format!("{api}/apps/clock/config"),
        ]);
        let (status, body) = upload(&api, "clock", &tarball("v1", Some(procfile)), &dir);
        assert_eq!(status, 201, "{body}");

        let (_, body) = curl(&["-H", AUTH, &format!("{api}/apps/clock")]);
        let app: serde_json::Value = serde_json::from_str(&body).unwrap();
        let schedule = &app["schedules"][0];
        assert_eq!(schedule["name"], "tick");
        assert_eq!(schedule["schedule"], "* * * * *");
        let next = schedule["next_run"].as_i64().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(next > now && next <= now + 60, "next {next}, now {now}");

        // Wait for it to run (at most a minute), then find its output in the app's log.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(75);
        loop {
            let (_, log) = curl(&["-H", AUTH, &format!("{api}/apps/clock/logs")]);
            if log.contains("tick: tick-ran for the schedule") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the schedule never ran:\n{log}"
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        let (_, body) = curl(&["-H", AUTH, &format!("{api}/apps/clock")]);
        let app: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(app["schedules"][0]["last_result"], "succeeded", "{app}");
    })
    .await
    .unwrap();
    role.stop().await.unwrap();
}
