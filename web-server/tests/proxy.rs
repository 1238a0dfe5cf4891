//! The reverse proxy with a real upstream over real sockets.

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions

mod support;

use std::time::Duration;

use common::Environment;
use support::{Upstream, curl_async as curl, json, start};

#[tokio::test(flavor = "multi_thread")]
async fn forwards_with_forwarding_headers_and_longest_prefix() {
    let api = Upstream::start("api").await;
    let v2 = Upstream::start("v2").await;
    let toml = format!(
        r#"
[[web.sites]]
root = "{{ROOT}}"
[[web.sites.proxy]]
path = "/api"
upstreams = ["http://{}"]
[[web.sites.proxy]]
path = "/api/v2"
upstreams = ["http://{}"]
strip_prefix = true
"#,
        api.addr, v2.addr
    );
    let web = start(
        Environment::Development,
        &[("index.html", b"static")],
        &toml,
        &[],
    )
    .await;

    let reply = curl(&[
        "-H",
        "Host: shop.example.test",
        "-H",
        "X-Forwarded-For: 203.0.113.7",
        &web.url("/api/items?page=2"),
    ])
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let echo = json(&reply);
    assert_eq!(echo["upstream"], "api");
    assert_eq!(echo["path"], "/api/items?page=2");
    let headers = &echo["headers"];
    assert_eq!(
        headers["host"], "shop.example.test",
        "the original Host is kept"
    );
    assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "shop.example.test");
    assert_eq!(
        headers["forwarded"],
        "for=127.0.0.1;proto=http;host=\"shop.example.test\""
    );

    // Longest prefix wins, and strip_prefix removes it.
    let v2_reply = json(&curl(&[&web.url("/api/v2/users")]).await);
    assert_eq!(v2_reply["upstream"], "v2");
    assert_eq!(v2_reply["path"], "/users");

    // Paths outside any route are static files; `/apix` is not under `/api`.
    assert_eq!(curl(&[&web.url("/")]).await.text(), "static");
    assert_eq!(curl(&[&web.url("/apix")]).await.status, 404);

    // Over HTTPS the upstream hears proto=https.
    let port = web.https().port();
    let tls = curl(&[
        "--cacert",
        web.ca().to_str().unwrap(),
        "--resolve",
        &format!("localhost:{port}:127.0.0.1"),
        &format!("https://localhost:{port}/api/x"),
    ])
    .await;
    assert_eq!(json(&tls)["headers"]["x-forwarded-proto"], "https");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_going_down_and_coming_back() {
    let first = Upstream::start("first").await;
    let second = Upstream::start("second").await;
    let (first_addr, second_addr) = (first.addr, second.addr);
    let toml = format!(
        r#"
[[web.sites]]
root = "{{ROOT}}"
error_pages = {{ 502 = "down.html" }}
[[web.sites.proxy]]
path = "/"
upstreams = ["http://{first_addr}", "http://{second_addr}"]
health_check = "/health"
health_interval_secs = 1
"#
    );
    let web = start(
        Environment::Development,
        &[("down.html", b"<h1>we will be right back</h1>")],
        &toml,
        &[],
    )
    .await;
    let who = |reply: &support::Reply| json(reply)["upstream"].as_str().unwrap_or("").to_owned();

    // Round-robin across both.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(who(&curl(&[&web.url("/x")]).await));
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // One goes down: every request still succeeds, on the other.
    first.stop();
    for _ in 0..6 {
        let reply = curl(&[&web.url("/x")]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(who(&reply), "second");
    }

    // Both down: 502 with the site's error page.
    second.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let down = curl(&[&web.url("/x")]).await;
    assert_eq!(down.status, 502);
    assert_eq!(down.text(), "<h1>we will be right back</h1>");

    // The first comes back on the same address; the health check finds it.
    let _revived = Upstream::start_on(first_addr, "first").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let reply = curl(&[&web.url("/x")]).await;
        if reply.status == 200 {
            assert_eq!(who(&reply), "first");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "upstream never came back"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_upstream_gets_a_504() {
    let slow = Upstream::start("slow").await;
    let toml = format!(
        r#"
[[web.sites]]
root = "{{ROOT}}"
[[web.sites.proxy]]
path = "/"
upstreams = ["http://{}"]
"#,
        slow.addr
    );
    let web = start(
        Environment::Development,
        &[],
        &toml,
        &[("web.proxy_response_timeout_secs", "1")],
    )
    .await;
    let started = std::time::Instant::now();
    let reply = curl(&[&web.url("/slow")]).await;
    assert_eq!(reply.status, 504);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_upgrades_pass_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::start("ws").await;
    let toml = format!(
        r#"
[[web.sites]]
root = "{{ROOT}}"
[[web.sites.proxy]]
path = "/ws"
upstreams = ["http://{}"]
"#,
        upstream.addr
    );
    let web = start(Environment::Development, &[], &toml, &[]).await;
    let mut stream = tokio::net::TcpStream::connect(web.http()).await.unwrap();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "{}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    // Bytes flow both ways through the tunnel.
    stream.write_all(b"ping over the tunnel").await.unwrap();
    let mut echo = [0u8; 20];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echo))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&echo, b"ping over the tunnel");
}
