//! Promotion: the exact build released on one app-server (staging) is sent to another
//! (production) and released there with that server's own config, without building again.

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions

use common::testing::{RunningRole, TestConfig};
use common::{Environment, Role};

mod support;
use support::{call, open_to_apps, tarball, upload, via_router};

#[tokio::test(flavor = "multi_thread")]
async fn a_build_is_promoted_with_the_same_hash_and_the_targets_config() {
    let staging = TestConfig::new(Environment::Development);
    let production = TestConfig::new(Environment::Development);
    open_to_apps(staging.dir.path());
    open_to_apps(production.dir.path());
    let from = RunningRole::start(Role::App, &staging, app_server::run).await;
    let to = RunningRole::start(Role::App, &production, app_server::run).await;
    let from_api = format!("http://{}", from.addr("api"));
    let to_api = format!("http://{}", to.addr("api"));
    let to_router = format!("http://{}", to.addr("http"));
    let from_router = format!("http://{}", from.addr("http"));
    let dir = staging.dir.path().to_path_buf();
    let production_data = production.data_dir();

    tokio::task::spawn_blocking(move || {
        for (api, greeting) in [(&from_api, "from staging"), (&to_api, "from production")] {
            let (status, _) = call(api, "POST", "/apps", Some(r#"{"name":"hello"}"#));
            assert_eq!(status, 201);
            let config = format!(r#"{{"GREETING":"{greeting}"}}"#);
            let (status, _) = call(api, "PUT", "/apps/hello/config", Some(&config));
            assert_eq!(status, 200);
        }
        // The build step runs once, on staging; its output is part of the build.
        let procfile =
            "build: echo built on $(hostname) at $(date +%s%N) > BUILT\nweb: python3 app.py\n";
        let (status, body) = upload(&from_api, "hello", &tarball("v1", Some(procfile)), &dir);
        assert_eq!(status, 201, "{body}");
        let build = body["build"].as_str().unwrap().to_owned();

        // Nothing to promote to yet, and a wrong token: refused with the reason.
        let promote = |token: &str, app: &str| {
            call(
                &from_api,
                "POST",
                "/apps/hello/promote",
                Some(&format!(
                    r#"{{"to":"{to_api}","token":"{token}","app":"{app}"}}"#
                )),
            )
        };
        let (status, body) = promote("wrong", "hello");
        assert_eq!(status, 502, "{body}");
        assert!(body["error"].as_str().unwrap().contains("401"), "{body}");
        let (status, body) = promote("dev", "missing");
        assert_eq!(status, 502, "{body}");
        assert!(body["error"].as_str().unwrap().contains("404"), "{body}");

        let (status, body) = promote("dev", "hello");
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["promoted"]["build"], build.as_str());
        assert_eq!(body["promoted"]["version"], 1);

        // Production runs the same build (same hash, same build output) with its own config.
        let (_, releases) = call(&to_api, "GET", "/apps/hello/releases", None);
        assert_eq!(releases[0]["build"], build.as_str());
        assert_eq!(releases[0]["config"]["GREETING"], "from production");
        let (status, there) = via_router(&to_router, "hello");
        assert_eq!(status, 200, "{there}");
        assert_eq!(there["greeting"], "from production");
        let built_there = there["built"].as_str().unwrap().to_owned();
        let (_, from_router_answer) = via_router(&from_router, "hello");
        assert_eq!(from_router_answer["built"].as_str().unwrap(), built_there);
        let log = std::fs::read_to_string(production_data.join("app/logs/hello.log")).unwrap();
        assert!(!log.contains("build:"), "production never builds:\n{log}");

        // Promoting again sends nothing new: the build is already there.
        let (status, body) = promote("dev", "hello");
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["promoted"]["version"], 2);

        // A received build is never read through a link, whatever it holds.
        let linked = {
            let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let mut builder = tar::Builder::new(gz);
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            header.set_mode(0o777);
            builder
                .append_link(&mut header, "Procfile", "/dev/zero")
                .unwrap();
            builder.into_inner().unwrap().finish().unwrap()
        };
        let digest = {
            use sha2::Digest as _;
            format!("{:x}", sha2::Sha256::digest(&linked))
        };
        let file = dir.join("linked.tar.gz");
        std::fs::write(&file, &linked).unwrap();
        let (status, body) = common::testing::curl(&[
            "-X",
            "PUT",
            "-H",
            support::AUTH,
            "-H",
            &format!("x-quartet-build-sha256: {digest}"),
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{to_api}/builds/{}", "b".repeat(64)),
        ]);
        assert_eq!(status, 422, "{body}");
        assert!(body.contains("no Procfile"), "{body}");

        // A build whose body does not match its digest is refused.
        let (status, body) = call(
            &to_api,
            "PUT",
            &format!("/builds/{}", "a".repeat(64)),
            Some("not a tarball"),
        );
        assert_eq!(status, 400, "{body}");
    })
    .await
    .unwrap();
    from.stop().await.unwrap();
    to.stop().await.unwrap();
}
