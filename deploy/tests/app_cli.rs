//! `quartet app …` against real app-servers, and `quartet app local` on a real app: what a
//! developer types, end to end.

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::testing::{Binary, RunningRole, TestConfig, curl};
use common::{Environment, Role};

const BIN: &str = env!("CARGO_BIN_EXE_quartet");

/// `quartet app ARGS` against `api`, in `cwd`; exit success, stdout, stderr.
fn quartet_app(api: &str, cwd: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(BIN)
        .arg("app")
        .args(args)
        .env("QUARTET_APP_API", api)
        .env("QUARTET_APP_TOKEN", "dev")
        .env_remove("QUARTET_APP")
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The fixture app in a folder of its own, named `folder`, at `version`.
fn app_folder(parent: &Path, folder: &str, version: &str) -> PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../app-server/tests/fixtures/hello");
    let dir = parent.join(folder);
    std::fs::create_dir_all(dir.join(".git")).unwrap();
    std::fs::write(dir.join(".git/HEAD"), "not uploaded").unwrap();
    for file in ["Procfile", "app.py"] {
        std::fs::copy(fixture.join(file), dir.join(file)).unwrap();
    }
    std::fs::write(dir.join("VERSION"), version).unwrap();
    dir
}

fn via_router(router: &str, app: &str) -> serde_json::Value {
    let (status, body) = curl(&["-H", &format!("Host: {app}.localhost"), router]);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_app_cli_drives_app_server_through_a_whole_cycle() {
    let staging = TestConfig::new(Environment::Development);
    let production = TestConfig::new(Environment::Development);
    for test in [&staging, &production] {
        std::fs::set_permissions(
            test.dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
    }
    let from = RunningRole::start(Role::App, &staging, app_server::run).await;
    let to = RunningRole::start(Role::App, &production, app_server::run).await;
    let api = format!("http://{}", from.addr("api"));
    let to_api = format!("http://{}", to.addr("api"));
    let router = format!("http://{}/", from.addr("http"));
    let to_router = format!("http://{}/", to.addr("http"));
    let work = staging.dir.path().to_path_buf();

    tokio::task::spawn_blocking(move || {
        let dir = app_folder(&work, "hello", "v1");
        let (ok, out, err) = quartet_app(&api, &work, &["create", "hello"]);
        assert!(ok, "{out}{err}");
        // The app is named after the folder when --app is not given.
        let (ok, out, err) = quartet_app(&api, &dir, &["deploy"]);
        assert!(ok, "{out}{err}");
        assert!(err.contains("-----> Packed 3 files"), "{err}");
        assert!(out.contains("-----> Procfile: web"), "{out}");
        assert!(out.contains("-----> Released v1 of hello"), "{out}");
        assert_eq!(via_router(&router, "hello")["version"], "v1");

        let (ok, out, err) = quartet_app(&api, &dir, &["config", "set", "GREETING=hi there"]);
        assert!(ok, "{out}{err}");
        assert!(out.contains("released v2"), "{out}");
        let (_, out, _) = quartet_app(&api, &dir, &["config"]);
        assert_eq!(out, "GREETING=hi there\n");
        assert_eq!(via_router(&router, "hello")["greeting"], "hi there");

        let (ok, out, _) = quartet_app(&api, &dir, &["scale", "web=2"]);
        assert!(ok, "{out}");
        let (_, out, _) = quartet_app(&api, &dir, &["info"]);
        assert!(
            out.contains("=== hello") && out.contains("Release:   v2"),
            "{out}"
        );
        assert_eq!(out.matches(" up ").count(), 2, "two web processes:\n{out}");

        let (ok, out, _) = quartet_app(&api, &work, &["rollback", "1", "--app", "hello"]);
        assert!(ok, "{out}");
        assert!(out.contains("released v3"), "{out}");
        let (_, out, _) = quartet_app(&api, &dir, &["releases"]);
        assert!(out.starts_with("v3 ") && out.contains("(current)"), "{out}");
        assert_eq!(out.lines().count(), 3, "{out}");
        let (ok, _, _) = quartet_app(&api, &dir, &["restart"]);
        assert!(ok);

        // Logs, and followed logs: a restart's lines arrive while following.
        let (_, out, _) = quartet_app(&api, &dir, &["logs", "-n", "200"]);
        assert!(out.contains("app-server: v3 serves traffic"), "{out}");
        let mut follower = Binary::spawn(
            Path::new(BIN),
            &[
                "app", "logs", "-f", "-n", "0", "--app", "hello", "--api", &api,
            ],
            &HashMap::new(),
            &work,
        );
        std::thread::sleep(Duration::from_millis(500));
        assert!(quartet_app(&api, &dir, &["restart"]).0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !follower.stdout().contains("v3 serves traffic") {
            assert!(Instant::now() < deadline, "{}", follower.stdout());
            std::thread::sleep(Duration::from_millis(50));
        }
        follower.signal("TERM");
        follower.wait_exit(Duration::from_secs(5));

        // Promotion to the other app-server, which has its own config.
        assert!(quartet_app(&to_api, &dir, &["create", "hello"]).0);
        let (ok, out, err) = quartet_app(
            &api,
            &dir,
            &["promote", "--to", &to_api, "--to-token", "dev"],
        );
        assert!(ok, "{out}{err}");
        assert!(out.contains("released v1 of hello"), "{out}");
        assert_eq!(via_router(&to_router, "hello")["version"], "v1");

        // Mistakes get a reason and a failing exit status.
        let (ok, _, err) = quartet_app(&api, &dir, &["destroy", "hello", "--confirm", "nope"]);
        assert!(!ok && err.contains("--confirm"), "{err}");
        let (ok, _, err) = quartet_app(&api, &dir, &["rollback", "99"]);
        assert!(!ok && err.contains("404"), "{err}");
        let broken = app_folder(&work, "broken", "v1");
        std::fs::write(broken.join("Procfile"), "web: python3 -c 'exit(3)'\n").unwrap();
        assert!(quartet_app(&api, &work, &["create", "broken"]).0);
        let (ok, out, err) = quartet_app(&api, &broken, &["deploy"]);
        assert!(!ok, "{out}");
        assert!(
            err.contains("the deploy failed: health check failed"),
            "{err}"
        );
        let (ok, _, err) = quartet_app("http://127.0.0.1:9", &dir, &["apps"]);
        assert!(!ok && err.contains("cannot reach app-server"), "{err}");

        let (ok, out, _) = quartet_app(&api, &dir, &["destroy", "hello", "--confirm", "hello"]);
        assert!(ok, "{out}");
        let (_, out, _) = quartet_app(&api, &dir, &["apps"]);
        assert_eq!(out, "broken\n");
    })
    .await
    .unwrap();
    from.stop().await.unwrap();
    to.stop().await.unwrap();
}

#[test]
fn app_local_runs_the_procfile_as_app_server_would() {
    let test = TestConfig::new(Environment::Development);
    std::fs::set_permissions(
        test.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let dir = app_folder(test.dir.path(), "hello", "local");
    std::fs::write(dir.join(".env"), "GREETING=from .env\nOTHER=1\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let port_text = port.to_string();
    let mut vars = HashMap::new();
    vars.insert(
        "SECRET_OF_THE_CALLER".to_owned(),
        "must not leak".to_owned(),
    );
    let mut local = Binary::spawn(
        Path::new(BIN),
        &["app", "local", ".", "--port", &port_text, "-e", "OTHER=2"],
        &vars,
        &dir,
    );
    assert!(
        local.wait_for_log("is up: http://127.0.0.1:", Duration::from_secs(20)),
        "{}",
        local.stderr()
    );
    let (status, body) = curl(&[&format!("http://127.0.0.1:{port}/")]);
    assert_eq!(status, 200, "{body}");
    let app: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(app["version"], "local");
    assert_eq!(app["greeting"], "from .env");
    assert_eq!(app["quartet_env"], "development");
    let env = app["env"].to_string();
    assert!(
        env.contains("OTHER") && !env.contains("SECRET_OF_THE_CALLER"),
        "{env}"
    );
    assert_ne!(
        app["port"], port_text,
        "the router is in front, as on app-server"
    );
    // The app's output, in app-server's log format, on stdout.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !local
        .stdout()
        .contains("web.1: hello local listening on port")
    {
        assert!(Instant::now() < deadline, "{}", local.stdout());
        std::thread::sleep(Duration::from_millis(50));
    }
    local.signal("TERM");
    let status = local.wait_exit(Duration::from_secs(15)).expect("exits");
    assert!(status.success(), "{}", local.stderr());
    let app_port: u16 = app["port"].as_str().unwrap().parse().unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", app_port)).is_err(),
        "the app stops with quartet app local"
    );
}
