//! Several sites by host and SNI, HTTP/2, reload on SIGHUP, the access log and metrics.

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Environment;
use common::testing::{Binary, TestConfig, http_get_on, tls_connect};
use support::{curl_async as curl, start};

/// A CA and a leaf for `hosts`, written under `dir`: (ca.pem, cert.pem, key.pem).
fn pki(dir: &Path, hosts: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    std::fs::create_dir_all(dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names, or clients take the leaf for a self-signed certificate.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("Test CA for {}", hosts[0]));
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params =
        CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>()).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, hosts[0]);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, leaf_key.serialize_pem()).unwrap();
    paths
}

#[tokio::test(flavor = "multi_thread")]
async fn sites_by_host_with_their_own_certificates_over_http2() {
    let scratch = tempfile::tempdir().unwrap();
    let (ca_a, cert_a, key_a) = pki(&scratch.path().join("a"), &["a.test", "www.a.test"]);
    let (ca_b, cert_b, key_b) = pki(&scratch.path().join("b"), &["*.b.test"]);
    let toml = format!(
        r#"
[[web.sites]]
hosts = ["a.test", "www.a.test"]
root = "{{ROOT}}/a"
tls = {{ cert = "{}", key = "{}" }}
[[web.sites]]
hosts = ["*.b.test"]
root = "{{ROOT}}/b"
tls = {{ cert = "{}", key = "{}" }}
[[web.sites]]
root = "{{ROOT}}/default"
"#,
        cert_a.display(),
        key_a.display(),
        cert_b.display(),
        key_b.display()
    );
    let web = start(
        Environment::Development,
        &[
            ("a/index.html", b"site a"),
            ("b/index.html", b"site b"),
            ("default/index.html", b"default site"),
        ],
        &toml,
        &[],
    )
    .await;

    // Plain HTTP: chosen by Host.
    assert_eq!(
        curl(&["-H", "Host: www.a.test", &web.url("/")])
            .await
            .text(),
        "site a"
    );
    assert_eq!(
        curl(&["-H", "Host: shop.b.test:8080", &web.url("/")])
            .await
            .text(),
        "site b"
    );
    assert_eq!(
        curl(&["-H", "Host: unknown.test", &web.url("/")])
            .await
            .text(),
        "default site"
    );

    // HTTPS: each site's certificate by SNI, verified by its own CA, over HTTP/2.
    let port = web.https().port();
    for (host, ca, expected) in [
        ("a.test", &ca_a, "site a"),
        ("shop.b.test", &ca_b, "site b"),
    ] {
        let reply = curl(&[
            "--http2",
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &format!("{host}:{port}:127.0.0.1"),
            &format!("https://{host}:{port}/"),
        ])
        .await;
        assert_eq!(reply.status, 200, "{host}");
        assert_eq!(reply.text(), expected);
        assert_eq!(reply.http_version, "2", "{host} over HTTP/2");
    }
    // Any other name gets the role's (development) certificate.
    let reply = curl(&[
        "--cacert",
        web.ca().to_str().unwrap(),
        "--resolve",
        &format!("localhost:{port}:127.0.0.1"),
        &format!("https://localhost:{port}/"),
    ])
    .await;
    assert_eq!(reply.text(), "default site");

    // Metrics count requests by site and status.
    let metrics = curl(&[&web.url("/metrics")]).await.text();
    assert!(
        metrics.contains("quartet_web_requests_total{site=\"a.test\",status=\"200\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("quartet_web_request_duration_seconds_bucket{"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_sites_without_dropping_connections() {
    let test = TestConfig::new(Environment::Development);
    let root = test.dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), "v1").unwrap();
    let config = test.config_dir().join("development.toml");
    let site = |extra: &str| format!("[[web.sites]]\nroot = \"{}\"\n{extra}", root.display());
    std::fs::write(&config, site("")).unwrap();

    let mut server = Binary::spawn(
        Path::new(env!("CARGO_BIN_EXE_web-server")),
        &[],
        &test.child_env(),
        test.dir.path(),
    );
    let addrs = server.wait_for_listeners(2);
    let (http, https) = (addrs["web http"], addrs["web https"]);
    let ca = test.data_dir().join("tls/ca.pem");
    let mut open = tls_connect(https, &ca).await.unwrap();
    assert_eq!(http_get_on(&mut open, "/").await.unwrap(), 200);
    assert_eq!(curl(&[&format!("http://{http}/moved")]).await.status, 404);

    // Add a redirect and reload.
    std::fs::write(
        &config,
        site("[[web.sites.redirects]]\nfrom = \"/moved\"\nto = \"/\"\n"),
    )
    .unwrap();
    server.signal("HUP");
    assert!(
        server.wait_for_log("sites reloaded", Duration::from_secs(5)),
        "{}",
        server.stderr()
    );
    let moved = curl(&[&format!("http://{http}/moved")]).await;
    assert_eq!(moved.status, 301);
    // The connection opened before the reload still works.
    assert_eq!(http_get_on(&mut open, "/").await.unwrap(), 200);

    // A broken configuration is refused and the running one stays.
    std::fs::write(
        &config,
        site("[[web.sites.redirects]]\nfrom = \"/x\"\nto = \"/\"\nstatus = 200\n"),
    )
    .unwrap();
    server.signal("HUP");
    assert!(
        server.wait_for_log("configuration not reloaded", Duration::from_secs(5)),
        "{}",
        server.stderr()
    );
    assert_eq!(curl(&[&format!("http://{http}/moved")]).await.status, 301);

    // The access log: one combined-format line per request in development.
    assert!(
        server.wait_for_log("\"GET /moved HTTP/1.1\" 301", Duration::from_secs(5)),
        "{}",
        server.stderr()
    );

    server.signal("TERM");
    assert_eq!(
        server
            .wait_exit(Duration::from_secs(10))
            .and_then(|s| s.code()),
        Some(0)
    );
}
