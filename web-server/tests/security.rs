//! What the web role refuses: escapes from the root, abusive requests, plaintext in
//! production, and requests without credentials.

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::Environment;
use support::{curl_async as curl, start};

const SITE: &str = r#"
[[web.sites]]
root = "{ROOT}"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn nothing_escapes_the_root_in_any_encoding() {
    let web = start(
        Environment::Development,
        &[("index.html", b"home"), ("a/b.txt", b"b")],
        SITE,
        &[],
    )
    .await;
    // A secret next to the root, and a symlink inside the root pointing at it.
    let secret = web.test.dir.path().join("secret.txt");
    std::fs::write(&secret, "TOP SECRET").unwrap();
    std::os::unix::fs::symlink(&secret, web.root.join("link.txt")).unwrap();
    std::os::unix::fs::symlink(web.test.dir.path(), web.root.join("linkdir")).unwrap();

    for probe in [
        "/../secret.txt",
        "/a/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/a/%2e%2e/%2e%2e/secret.txt",
        "/%252e%252e/secret.txt",
        "/%252e%252e%252fsecret.txt",
        "/..%2fsecret.txt",
        "/..%5csecret.txt",
        "/..\\secret.txt",
        "/a%00.txt",
        "/link.txt",
        "/linkdir/secret.txt",
        "/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/....//secret.txt",
    ] {
        let reply = curl(&["--path-as-is", &web.url(probe)]).await;
        assert!(
            [400, 403, 404].contains(&reply.status),
            "{probe}: {} {}",
            reply.status,
            reply.text()
        );
        assert!(
            !reply.text().contains("TOP SECRET"),
            "{probe} leaked the secret"
        );
        assert!(
            !reply.text().contains("root:"),
            "{probe} leaked /etc/passwd"
        );
    }
    // The symlink escape is refused explicitly, not merely missing.
    assert_eq!(curl(&[&web.url("/link.txt")]).await.status, 403);
    // Inside the root, normal paths still work.
    assert_eq!(curl(&[&web.url("/a/b.txt")]).await.text(), "b");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_site_may_allow_symlinks_that_leave_the_root() {
    let toml = r#"
[[web.sites]]
root = "{ROOT}"
allow_symlink_escape = true
"#;
    let web = start(
        Environment::Development,
        &[("index.html", b"home")],
        toml,
        &[],
    )
    .await;
    let shared = web.test.dir.path().join("shared.txt");
    std::fs::write(&shared, "shared file").unwrap();
    std::os::unix::fs::symlink(&shared, web.root.join("shared.txt")).unwrap();
    assert_eq!(curl(&[&web.url("/shared.txt")]).await.text(), "shared file");
    // `..` is still refused: the option is about symlinks only.
    assert_eq!(
        curl(&["--path-as-is", &web.url("/../shared.txt")])
            .await
            .status,
        400
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_is_closed_within_the_header_timeout() {
    let web = start(
        Environment::Development,
        &[("index.html", b"home")],
        SITE,
        &[("web.header_timeout_secs", "1")],
    )
    .await;
    let addr = web.http();
    let result = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let started = Instant::now();
        // One header byte every 300 ms: never a complete head.
        for chunk in [
            "GET / HTTP/1.1\r\n",
            "Host: x\r\n",
            "X-a: 1\r\n",
            "X-b: 2\r\n",
            "X-c: 3\r\n",
            "X-d: 4\r\n",
        ] {
            if stream.write_all(chunk.as_bytes()).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        (
            started.elapsed(),
            String::from_utf8_lossy(&reply).into_owned(),
        )
    })
    .await
    .unwrap();
    let (elapsed, reply) = result;
    assert!(elapsed < Duration::from_secs(4), "closed after {elapsed:?}");
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_are_closed_within_the_header_timeout() {
    let web = start(
        Environment::Development,
        &[("index.html", b"home")],
        SITE,
        &[("web.header_timeout_secs", "1")],
    )
    .await;
    let (http, https) = (web.http(), web.https());
    let elapsed = tokio::task::spawn_blocking(move || {
        // One client says nothing at all; another completes nothing of a TLS handshake.
        [http, https].map(|addr| {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(15)))
                .unwrap();
            let started = Instant::now();
            let mut buf = Vec::new();
            let _ = stream.read_to_end(&mut buf);
            started.elapsed()
        })
    })
    .await
    .unwrap();
    assert!(
        elapsed[0] < Duration::from_secs(3),
        "plain: {:?}",
        elapsed[0]
    );
    // The TLS handshake has its own 10 s limit.
    assert!(
        elapsed[1] < Duration::from_secs(12),
        "tls: {:?}",
        elapsed[1]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let web = start(
        Environment::Development,
        &[("index.html", b"home")],
        SITE,
        &[("web.max_connections", "1")],
    )
    .await;
    let addr = web.http();
    tokio::task::spawn_blocking(move || {
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut first = std::net::TcpStream::connect(addr).unwrap();
        first.write_all(request).unwrap();
        let mut buf = [0u8; 1024];
        assert!(first.read(&mut buf).unwrap() > 0);
        // The only slot is held by the idle keep-alive connection: a second client waits.
        let mut second = std::net::TcpStream::connect(addr).unwrap();
        second.write_all(request).unwrap();
        second
            .set_read_timeout(Some(Duration::from_millis(800)))
            .unwrap();
        assert!(
            second.read(&mut buf).is_err(),
            "served beyond max_connections"
        );
        // Once the first leaves, the second is served.
        drop(first);
        second
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = second.read(&mut buf).unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_http2_connections_are_closed_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let web = start(
        Environment::Development,
        &[("index.html", b"home")],
        SITE,
        &[("web.header_timeout_secs", "1")],
    )
    .await;
    let connector = common::testing::tls_connector_with_alpn(&web.ca(), &[b"h2"]);
    let tcp = tokio::net::TcpStream::connect(web.https()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // The client preface and an empty SETTINGS frame, then silence.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let started = Instant::now();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "the idle HTTP/2 connection was not closed");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

fn raw_request(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut reply = vec![0u8; 4096];
    let n = stream.read(&mut reply).unwrap_or(0);
    String::from_utf8_lossy(&reply[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_ambiguous_requests_get_protocol_errors() {
    let web = start(
        Environment::Development,
        &[("index.html", b"home")],
        SITE,
        &[
            ("web.max_uri_bytes", "100"),
            ("web.max_header_bytes", "8192"),
        ],
    )
    .await;
    let addr = web.http();
    let replies = tokio::task::spawn_blocking(move || {
        let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(200));
        let big_headers = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(20_000));
        // CL+TE with a smuggled second request behind the chunked body's end.
        let cl_te = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
        let two_cl = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde";
        let garbage = "\x16\x03\x01 not http at all\r\n\r\n";
        let mut replies = [long_uri, big_headers, two_cl.to_owned(), garbage.to_owned()]
            .map(|request| raw_request(addr, request.as_bytes()))
            .to_vec();
        // Read everything the server sends for the CL+TE request until it closes.
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(cl_te.as_bytes()).unwrap();
        let mut all = Vec::new();
        let _ = stream.read_to_end(&mut all);
        replies.push(String::from_utf8_lossy(&all).into_owned());
        replies
    })
    .await
    .unwrap();
    assert!(replies[0].starts_with("HTTP/1.1 414"), "{}", replies[0]);
    assert!(replies[1].starts_with("HTTP/1.1 431"), "{}", replies[1]);
    assert!(replies[2].starts_with("HTTP/1.1 400"), "{}", replies[2]);
    assert!(
        replies[3].is_empty() || replies[3].starts_with("HTTP/1.1 400"),
        "{}",
        replies[3]
    );
    // CL+TE: refused with 400 and the connection closed, so the request hidden behind the
    // chunked body is never read.
    let cl_te = &replies[4];
    assert!(cl_te.starts_with("HTTP/1.1 400"), "{cl_te}");
    assert_eq!(cl_te.matches("HTTP/1.1 ").count(), 1, "{cl_te}");
    assert!(
        cl_te.to_ascii_lowercase().contains("connection: close"),
        "{cl_te}"
    );
    // And the server is still fine.
    assert_eq!(curl(&[&web.url("/")]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn production_redirects_http_to_https_and_sends_hsts() {
    let web = start(
        Environment::Production,
        &[("index.html", b"home")],
        SITE,
        &[],
    )
    .await;
    let redirect = curl(&["-H", "Host: example.test", &web.url("/docs/page?q=1&r=2")]).await;
    assert_eq!(redirect.status, 301);
    assert_eq!(
        redirect.header("location"),
        Some(
            format!(
                "https://example.test:{}/docs/page?q=1&r=2",
                web.https().port()
            )
            .as_str()
        )
    );
    // ACME challenges and health checks stay on plain HTTP.
    assert_eq!(
        curl(&[&web.url("/.well-known/acme-challenge/token")])
            .await
            .status,
        404
    );
    assert_eq!(curl(&[&web.url("/healthz")]).await.status, 200);

    let ca = web.test.dir.path().join("pki/tls/ca.pem");
    let port = web.https().port();
    let https = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &format!("localhost:{port}:127.0.0.1"),
        &format!("https://localhost:{port}/"),
    ])
    .await;
    assert_eq!(https.status, 200, "{}", https.text());
    assert_eq!(
        https.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    assert_eq!(https.header("x-content-type-options"), Some("nosniff"));
}

#[tokio::test(flavor = "multi_thread")]
async fn header_rules_set_and_remove_headers_by_glob() {
    let toml = r#"
[[web.sites]]
root = "{ROOT}"
[[web.sites.headers]]
glob = "/assets/**"
set = { "cache-control" = "public, max-age=31536000, immutable" }
[[web.sites.headers]]
glob = "/embed/*"
set = { "x-frame-options" = "", "content-security-policy" = "frame-ancestors *" }
"#;
    let web = start(
        Environment::Development,
        &[
            ("assets/js/app.js", b"1"),
            ("embed/widget.html", b"w"),
            ("index.html", b"i"),
        ],
        toml,
        &[],
    )
    .await;
    let asset = curl(&[&web.url("/assets/js/app.js")]).await;
    assert_eq!(
        asset.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let embed = curl(&[&web.url("/embed/widget.html")]).await;
    assert_eq!(embed.header("x-frame-options"), None, "removed by the site");
    assert_eq!(
        embed.header("content-security-policy"),
        Some("frame-ancestors *")
    );
    let index = curl(&[&web.url("/index.html")]).await;
    assert_eq!(index.header("cache-control"), None);
    assert_eq!(index.header("x-frame-options"), Some("SAMEORIGIN"));
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_and_redirects() {
    let hash = bcrypt::hash("correct horse", 4).unwrap();
    let toml = format!(
        r#"
[[web.sites]]
root = "{{ROOT}}"
[[web.sites.auth]]
path = "/admin"
realm = "staff"
users = {{ alice = "{hash}" }}
[[web.sites.redirects]]
from = "/old/*"
to = "/new/"
[[web.sites.redirects]]
from = "/moved"
to = "https://elsewhere.test/"
status = 308
"#
    );
    let web = start(
        Environment::Development,
        &[
            ("admin/index.html", b"admin area"),
            ("new/page.html", b"new"),
        ],
        &toml,
        &[],
    )
    .await;
    let anonymous = curl(&[&web.url("/admin/")]).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        anonymous.header("www-authenticate"),
        Some("Basic realm=\"staff\", charset=\"UTF-8\"")
    );
    assert_eq!(
        curl(&["-u", "alice:wrong", &web.url("/admin/")])
            .await
            .status,
        401
    );
    assert_eq!(
        curl(&["-u", "bob:correct horse", &web.url("/admin/")])
            .await
            .status,
        401
    );
    let ok = curl(&["-u", "alice:correct horse", &web.url("/admin/")]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.text(), "admin area");
    // No other spelling of the protected path gets past the rule.
    for probe in [
        "//admin/",
        "/./admin/",
        "/%61dmin/",
        "/admin//",
        "/x/../admin/",
        "/ADMIN/../admin/",
    ] {
        let reply = curl(&["--path-as-is", &web.url(probe)]).await;
        assert!(
            reply.status == 401 || reply.status == 400,
            "{probe}: {} {}",
            reply.status,
            reply.text()
        );
        assert!(!reply.text().contains("admin area"), "{probe}");
    }
    // Outside the protected path, no credentials are needed.
    assert_eq!(curl(&[&web.url("/new/page.html")]).await.status, 200);

    let prefix = curl(&[&web.url("/old/page.html?x=1")]).await;
    assert_eq!(prefix.status, 301);
    assert_eq!(prefix.header("location"), Some("/new/page.html?x=1"));
    let exact = curl(&[&web.url("/moved")]).await;
    assert_eq!(exact.status, 308);
    assert_eq!(exact.header("location"), Some("https://elsewhere.test/"));
}

#[test]
fn plain_passwords_and_bad_rules_fail_the_check_with_their_keys() {
    let test = common::testing::TestConfig::new(Environment::Development);
    std::fs::write(
        test.config_dir().join("development.toml"),
        r#"
[[web.sites]]
root = "/definitely/not/here"
[[web.sites.auth]]
path = "/admin"
users = { alice = "hunter2" }
[[web.sites.proxy]]
path = "api"
upstreams = ["http://127.0.0.1:1"]
[[web.sites.redirects]]
from = "/a"
to = "/b"
status = 200
"#,
    )
    .unwrap();
    let output = common::testing::run_to_end(
        std::path::Path::new(env!("CARGO_BIN_EXE_web-server")),
        &["--check"],
        &test.child_env(),
        test.dir.path(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for expected in [
        "web.sites[0].root: /definitely/not/here is not a readable directory",
        "web.sites[0].auth[0].users.alice: is not an argon2",
        "web.sites[0].proxy[0].path: must start with /",
        "web.sites[0].redirects[0].status",
        "development.toml",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?}:\n{stderr}");
    }
    assert!(!stderr.contains("hunter2"), "the password is not echoed");
}
