//! The real `web-server` binary: `--check`, environments, signals and TLS as a user meets them.

use std::path::Path;
use std::time::Duration;

use common::Environment;
use common::testing::{Binary, TestConfig, curl, http_get_on, run_to_end, tls_connect};

const BIN: &str = env!("CARGO_BIN_EXE_web-server");

fn check(test: &TestConfig, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--check"];
    all.extend_from_slice(args);
    let output = run_to_end(Path::new(BIN), &all, &test.child_env(), test.dir.path());
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_prints_the_effective_configuration_and_exits_0() {
    let test = TestConfig::new(Environment::Development).set("web.http_listen", "127.0.0.1:18080");
    let (code, stdout, stderr) = check(&test, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("environment = \"development\""), "{stdout}");
    assert!(
        stdout.contains("http_listen = \"127.0.0.1:18080\""),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("variable {}", "QUARTET__WEB__HTTP_LISTEN")),
        "{stdout}"
    );
    // Secrets of every section are redacted, even the documented development ones.
    assert!(stdout.contains("api_token = \"[redacted]\""), "{stdout}");
    assert!(!stdout.contains("api_token = \"dev\""), "{stdout}");
}

#[test]
fn unknown_key_exits_2_naming_key_file_and_reason() {
    let test = TestConfig::new(Environment::Development);
    let file = test.dir.path().join("site.toml");
    std::fs::write(&file, "[web]\nhtp_listen = \"127.0.0.1:1\"\n").unwrap();
    let (code, _, stderr) = check(&test, &["--config", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("web.htp_listen: unknown key"), "{stderr}");
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("did you mean `web.http_listen`"),
        "{stderr}"
    );
}

#[test]
fn bad_address_exits_2_naming_the_variable() {
    let test = TestConfig::new(Environment::Development).set("web.https_listen", "localhost:https");
    let (code, _, stderr) = check(&test, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("web.https_listen: \"localhost:https\" is not an IP:PORT address"),
        "{stderr}"
    );
    assert!(
        stderr.contains("variable QUARTET__WEB__HTTPS_LISTEN"),
        "{stderr}"
    );
}

#[test]
fn bad_environment_name_exits_2_listing_the_valid_ones() {
    let test = TestConfig::new(Environment::Development);
    let (code, _, stderr) = check(&test, &["--env", "prod-eu"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("unknown environment \"prod-eu\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("development, staging, production"),
        "{stderr}"
    );
    assert!(stderr.contains("flag --env"), "{stderr}");
}

#[test]
fn production_without_certificates_refuses_to_start() {
    let test = TestConfig::new(Environment::Production);
    // Not only --check: a real start is refused with the same message and exit code.
    let output = run_to_end(Path::new(BIN), &[], &test.child_env(), test.dir.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("tls.cert: required in production"),
        "{stderr}"
    );
    assert!(stderr.contains("built-in default"), "{stderr}");
}

#[test]
fn a_variable_overrides_a_config_file() {
    let test = TestConfig::new(Environment::Staging);
    let (test, _ca) = test.with_generated_tls();
    std::fs::write(
        test.config_dir().join("staging.toml"),
        "[web]\nhttp_listen = \"127.0.0.1:11111\"\n",
    )
    .unwrap();
    let file = test.dir.path().join("extra.toml");
    std::fs::write(&file, "[web]\nhttp_listen = \"127.0.0.1:22222\"\n").unwrap();
    let (code, stdout, stderr) = check(&test, &["--config", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    // TestConfig sets every listener through a variable, which beats both files.
    assert!(stdout.contains("http_listen = \"127.0.0.1:0\""), "{stdout}");

    let test = TestConfig {
        vars: test
            .vars
            .clone()
            .into_iter()
            .filter(|(k, _)| k != "QUARTET__WEB__HTTP_LISTEN")
            .collect(),
        ..test
    };
    let (code, stdout, _) = check(&test, &["--config", file.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("http_listen = \"127.0.0.1:22222\""),
        "{stdout}"
    );
    assert!(stdout.contains("staging.toml"), "{stdout}");
}

#[test]
fn sigterm_drains_and_exits_0_within_10_seconds() {
    let test = TestConfig::new(Environment::Development);
    let mut server = Binary::spawn(Path::new(BIN), &[], &test.child_env(), test.dir.path());
    let addrs = server.wait_for_listeners(2);
    let http = addrs["web http"];
    let (status, body) = curl(&[&format!("http://{http}/healthz")]);
    assert_eq!(status, 200, "{body}");
    let (status, metrics) = curl(&[&format!("http://{http}/metrics")]);
    assert_eq!(status, 200);
    assert!(metrics.contains("quartet_build_info{"), "{metrics}");
    assert!(metrics.contains("role=\"web\""), "{metrics}");

    // Neither an idle keep-alive connection (one request answered, then silence) nor a client
    // that opened the HTTPS port and never started its handshake may hold shutdown up.
    let mut idle = std::net::TcpStream::connect(http).unwrap();
    {
        use std::io::{Read, Write};
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 512];
        let n = idle.read(&mut buf).unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    let silent = std::net::TcpStream::connect(addrs["web https"]).unwrap();
    let started = std::time::Instant::now();
    server.signal("TERM");
    let exit = server
        .wait_exit(Duration::from_secs(10))
        .expect("exited within 10s");
    assert_eq!(exit.code(), Some(0), "{}", server.stderr());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop((idle, silent));
}

#[tokio::test(flavor = "multi_thread")]
async fn https_is_trusted_through_the_generated_development_ca() {
    let test = TestConfig::new(Environment::Development);
    let mut server = Binary::spawn(Path::new(BIN), &[], &test.child_env(), test.dir.path());
    let addrs = server.wait_for_listeners(2);
    let https = addrs["web https"];
    let ca = test.data_dir().join("tls/ca.pem");
    assert!(
        server.wait_for_log("development CA", Duration::from_secs(5)),
        "{}",
        server.stderr()
    );
    assert!(ca.exists(), "the CA is kept in the data dir");

    // A client that trusts only that CA completes the handshake, over HTTP/1.1 and HTTP/2.
    let mut tls = tls_connect(https, &ca)
        .await
        .expect("handshake with the dev CA");
    assert_eq!(http_get_on(&mut tls, "/healthz").await.unwrap(), 200);
    let ca_arg = ca.to_str().unwrap();
    let url = format!("https://localhost:{}/healthz", https.port());
    let resolve = format!("localhost:{}:127.0.0.1", https.port());
    let (status, _) = curl(&["--cacert", ca_arg, "--resolve", &resolve, "--http2", &url]);
    assert_eq!(status, 200);
    let version = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_version}", "--http2"])
        .args(["--cacert", ca_arg, "--resolve", &resolve, &url])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout),
        "2",
        "HTTP/2 negotiated by ALPN"
    );

    // A client that trusts another CA refuses it.
    let other = TestConfig::new(Environment::Development);
    let other_pki = common::tls::ensure_dev_certificates(&other.data_dir()).unwrap();
    assert!(tls_connect(https, &other_pki.ca_cert).await.is_err());

    // The certificate survives a restart: same CA file, not regenerated.
    let before = std::fs::read(&ca).unwrap();
    server.signal("TERM");
    server.wait_exit(Duration::from_secs(10));
    let mut again = Binary::spawn(Path::new(BIN), &[], &test.child_env(), test.dir.path());
    again.wait_for_listeners(2);
    assert_eq!(before, std::fs::read(&ca).unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_swaps_the_certificate_without_dropping_connections() {
    let test = TestConfig::new(Environment::Development);
    let first = common::tls::ensure_dev_certificates(&test.dir.path().join("first")).unwrap();
    let second = common::tls::ensure_dev_certificates(&test.dir.path().join("second")).unwrap();
    let live_cert = test.dir.path().join("live-cert.pem");
    let live_key = test.dir.path().join("live-key.pem");
    std::fs::copy(&first.cert, &live_cert).unwrap();
    std::fs::copy(&first.key, &live_key).unwrap();
    let test = test
        .set("tls.cert", live_cert.to_str().unwrap())
        .set("tls.key", live_key.to_str().unwrap());

    let mut server = Binary::spawn(Path::new(BIN), &[], &test.child_env(), test.dir.path());
    let https = server.wait_for_listeners(2)["web https"];
    let mut open = tls_connect(https, &first.ca_cert)
        .await
        .expect("first certificate");
    assert_eq!(http_get_on(&mut open, "/healthz").await.unwrap(), 200);

    // Swap in the second pair and reload.
    std::fs::copy(&second.cert, &live_cert).unwrap();
    std::fs::copy(&second.key, &live_key).unwrap();
    server.signal("HUP");
    assert!(
        server.wait_for_log("TLS certificate reloaded", Duration::from_secs(5)),
        "{}",
        server.stderr()
    );
    let mut fresh = tls_connect(https, &second.ca_cert)
        .await
        .expect("new handshakes get the new certificate");
    assert_eq!(http_get_on(&mut fresh, "/healthz").await.unwrap(), 200);
    assert!(
        tls_connect(https, &first.ca_cert).await.is_err(),
        "the old certificate is gone"
    );
    // The connection opened before the reload still works.
    assert_eq!(http_get_on(&mut open, "/healthz").await.unwrap(), 200);

    // A broken pair is rejected and the working one stays.
    std::fs::write(&live_key, "not a key").unwrap();
    server.signal("HUP");
    assert!(
        server.wait_for_log("TLS certificate not reloaded", Duration::from_secs(5)),
        "{}",
        server.stderr()
    );
    let mut after = tls_connect(https, &second.ca_cert)
        .await
        .expect("still the second certificate");
    assert_eq!(http_get_on(&mut after, "/healthz").await.unwrap(), 200);

    server.signal("TERM");
    assert_eq!(
        server
            .wait_exit(Duration::from_secs(10))
            .and_then(|s| s.code()),
        Some(0)
    );
}
