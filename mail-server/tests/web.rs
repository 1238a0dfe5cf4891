//! The web inbox and its JSON API against a running mail-server: curl for the API (messages,
//! search, parts, HTML policy, read/unread, delete, server-sent events, sessions and CSRF),
//! and headless Chromium, driven over WebDriver, for the page itself.

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::testing::{RunningRole, TestConfig};
use common::{Environment, Role};

mod support;
use support::{python, send, test_config};

const NEWSLETTER: &str = "From: News <news@remote.test>\r\n\
To: alice@example.test\r\n\
Subject: Weekly news\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\
\r\n\
--outer\r\n\
Content-Type: multipart/alternative; boundary=\"alt\"\r\n\
\r\n\
--alt\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
This week: the garden party.\r\n\
--alt\r\n\
Content-Type: text/html; charset=utf-8\r\n\
\r\n\
<p>This week: the <b>garden party</b>.<img src=\"https://tracker.example/pixel.gif\"></p>\
<script>alert(1)</script>\r\n\
--alt--\r\n\
--outer\r\n\
Content-Type: text/csv; name=\"rsvp.csv\"\r\n\
Content-Disposition: attachment; filename=\"rsvp.csv\"\r\n\
\r\n\
name,coming\r\n\
alice,yes\r\n\
--outer--\r\n";

fn deliver(smtp: SocketAddr, ca: &Path, to: &str, body: &str) {
    let out = send(
        smtp,
        "plain",
        None,
        "news@remote.test",
        &[to],
        ca,
        Some(body),
    );
    assert!(out.starts_with("sent"), "{out}");
}

/// curl with `args`; the status code, the headers and the body.
fn curl(args: &[&str]) -> (u16, String, String) {
    let output = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (rest, code) = text.rsplit_once('\n').unwrap();
    let (headers, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    (
        code.trim().parse().unwrap_or(0),
        headers.to_owned(),
        body.to_owned(),
    )
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|err| panic!("{err}: {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_json_api_in_development() {
    let test = test_config(Environment::Development, "");
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    let smtp = role.addr("smtp");
    let http = role.addr("http");
    let ca = test.data_dir().join("tls/ca.pem");
    let base = format!("http://{http}/api/v1");
    tokio::task::spawn_blocking(move || {
        deliver(smtp, &ca, "alice@example.test", NEWSLETTER);
        deliver(
            smtp,
            &ca,
            "bob@example.test",
            "From: carol@remote.test\r\nSubject: Plain hello\r\n\r\nHello Bob.\r\n",
        );
        // Development: every mailbox, newest first.
        let (code, _, body) = curl(&[&format!("{base}/messages")]);
        assert_eq!(code, 200, "{body}");
        let list = json(&body);
        assert_eq!(list["total"], 2, "{list}");
        assert_eq!(list["messages"][0]["subject"], "Plain hello");
        assert_eq!(list["messages"][1]["account"], "alice@example.test");
        // Search.
        for (query, expected) in [
            ("from:news", 1),
            ("subject:\"weekly news\"", 1),
            ("has:attachment", 1),
            ("is:unread", 2),
            ("garden", 1),
            ("nothing-like-this", 0),
            ("after:2000-01-01 before:2100-01-01", 2),
        ] {
            let url = format!("{base}/messages?query={}", urlencode(query));
            let (_, _, body) = curl(&[&url]);
            assert_eq!(json(&body)["total"], expected, "{query}: {body}");
        }
        let id = list["messages"][1]["id"].as_i64().unwrap();
        // One message: headers, text, HTML, attachments.
        let (code, _, body) = curl(&[&format!("{base}/messages/{id}")]);
        assert_eq!(code, 200);
        let message = json(&body);
        assert_eq!(message["text"], "This week: the garden party.");
        assert_eq!(message["html"], true);
        assert_eq!(message["attachments"][0]["filename"], "rsvp.csv");
        assert!(
            message["headers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h[0] == "Subject" && h[1] == "Weekly news")
        );
        let part = message["attachments"][0]["part"].as_i64().unwrap();
        let (code, headers, body) = curl(&[&format!("{base}/messages/{id}/parts/{part}")]);
        assert_eq!(code, 200);
        // The CRLF before the boundary belongs to the boundary (RFC 2046).
        assert_eq!(body, "name,coming\r\nalice,yes");
        let headers = headers.to_ascii_lowercase();
        assert!(headers.contains("content-disposition: attachment; filename=\"rsvp.csv\""));
        assert!(headers.contains("x-content-type-options: nosniff"));
        // HTML: no scripts and no remote content unless asked.
        let (_, headers, body) = curl(&[&format!("{base}/messages/{id}/html")]);
        assert!(body.contains("<b>garden party</b>"));
        let policy = headers
            .lines()
            .find(|l| {
                l.to_ascii_lowercase()
                    .starts_with("content-security-policy")
            })
            .unwrap()
            .to_owned();
        assert!(policy.contains("default-src 'none'") && policy.contains("sandbox"));
        assert!(policy.contains("img-src data:;"), "{policy}");
        let (_, headers, _) = curl(&[&format!("{base}/messages/{id}/html?remote=1")]);
        assert!(headers.contains("img-src * data:"), "{headers}");
        let (_, _, raw) = curl(&[&format!("{base}/messages/{id}/raw")]);
        assert!(raw.starts_with("Return-Path: <news@remote.test>\r\nReceived: "));
        // Read, unread, delete.
        let patch = |seen: bool| {
            curl(&[
                "-X",
                "PATCH",
                "-H",
                "Content-Type: application/json",
                "-d",
                &format!("{{\"seen\":{seen}}}"),
                &format!("{base}/messages/{id}"),
            ])
        };
        assert_eq!(patch(true).0, 200);
        let (_, _, body) = curl(&[&format!("{base}/messages?query=is:read")]);
        assert_eq!(json(&body)["total"], 1);
        assert_eq!(patch(false).0, 200);
        let (_, _, body) = curl(&[&format!("{base}/messages?query=is:read")]);
        assert_eq!(json(&body)["total"], 0);
        let (code, _, _) = curl(&["-X", "DELETE", &format!("{base}/messages/{id}")]);
        assert_eq!(code, 204);
        let (code, _, _) = curl(&[&format!("{base}/messages/{id}")]);
        assert_eq!(code, 404);
        // Malformed input: clear errors, nothing lost.
        let (code, _, _) = curl(&[&format!("{base}/messages/not-a-number")]);
        assert_eq!(code, 400);
        let (code, _, _) = curl(&[
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/json",
            "-d",
            "{\"seen\":",
            &format!("{base}/messages/1"),
        ]);
        assert_eq!(code, 400);

        // Server-sent events: a delivery is announced.
        let mut events = Command::new("curl")
            .args(["-s", "-N", "--max-time", "10", &format!("{base}/events")])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        deliver(
            smtp,
            &ca,
            "alice@example.test",
            "Subject: ping\r\n\r\nping\r\n",
        );
        let mut reader = BufReader::new(events.stdout.take().unwrap());
        let mut line = String::new();
        while !line.starts_with("event: change") {
            line.clear();
            assert!(reader.read_line(&mut line).unwrap() > 0, "stream ended");
        }
        let _ = events.kill();
        let _ = events.wait();
    })
    .await
    .unwrap();
    role.stop().await.unwrap();
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn staging_sessions_csrf_and_isolation() {
    let hash = |password: &str| mail_server::store::hash_password(password).unwrap();
    let test = TestConfig::new(Environment::Staging);
    std::fs::write(
        test.config_dir().join("default.toml"),
        format!(
            "[mail]\ndomains = [\"example.test\"]\n\
             [[mail.accounts]]\naddress = \"alice@example.test\"\npassword_hash = \"{}\"\n\
             [[mail.accounts]]\naddress = \"bob@example.test\"\npassword_hash = \"{}\"\n",
            hash("alice-pw"),
            hash("bob-pw")
        ),
    )
    .unwrap();
    let (test, ca) = test.set("db.admin_password", "unused").with_generated_tls();
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    let smtp = role.addr("smtp");
    let http = role.addr("http");
    let jar = tempfile::tempdir().unwrap();
    tokio::task::spawn_blocking(move || {
        deliver(
            smtp,
            &ca,
            "alice@example.test",
            "From: carol@remote.test\r\nSubject: For Alice\r\n\r\nSecret.\r\n",
        );
        let base = format!("https://localhost:{}/api/v1", http.port());
        let ca = ca.display().to_string();
        let cookies = jar.path().join("cookies").display().to_string();
        let with_tls = |extra: &[&str]| {
            let mut args = vec!["--cacert", &ca, "-b", &cookies, "-c", &cookies];
            args.extend_from_slice(extra);
            curl(&args)
        };
        // Nobody logged in: 401, with a Basic challenge for API clients but not for the
        // inbox page (whose own form asks).
        let (code, headers, _) = with_tls(&[&format!("{base}/messages")]);
        assert_eq!(code, 401);
        assert!(
            headers
                .to_ascii_lowercase()
                .contains("www-authenticate: basic")
        );
        let (code, headers, _) =
            with_tls(&["-H", "X-Quartet-Inbox: 1", &format!("{base}/messages")]);
        assert_eq!(code, 401);
        assert!(!headers.to_ascii_lowercase().contains("www-authenticate"));
        let (code, _, _) = with_tls(&[&format!("{base}/session")]);
        assert_eq!(code, 401);
        // Wrong password, then the right one: a Secure, HttpOnly, SameSite=Strict cookie.
        let login = |password: &str| {
            with_tls(&[
                "-H",
                "Content-Type: application/json",
                "-d",
                &format!("{{\"address\":\"alice@example.test\",\"password\":\"{password}\"}}"),
                &format!("{base}/login"),
            ])
        };
        assert_eq!(login("wrong").0, 401);
        let (code, headers, body) = login("alice-pw");
        assert_eq!(code, 200, "{body}");
        let cookie = headers
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("set-cookie"))
            .unwrap()
            .to_owned();
        for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
            assert!(cookie.contains(attribute), "{cookie}");
        }
        let csrf = json(&body)["csrf"].as_str().unwrap().to_owned();
        let (code, _, body) = with_tls(&[&format!("{base}/messages")]);
        assert_eq!(code, 200);
        let list = json(&body);
        assert_eq!(list["total"], 1);
        let id = list["messages"][0]["id"].as_i64().unwrap();
        // A change without the CSRF token is refused; with it, done.
        let patch = |token: &str| {
            with_tls(&[
                "-X",
                "PATCH",
                "-H",
                "Content-Type: application/json",
                "-H",
                &format!("X-CSRF-Token: {token}"),
                "-d",
                "{\"seen\":true}",
                &format!("{base}/messages/{id}"),
            ])
        };
        assert_eq!(patch("forged").0, 403);
        assert_eq!(patch(&csrf).0, 200);
        // Bob (HTTP Basic) sees nothing of Alice's.
        let bob = |url: String| curl(&["--cacert", &ca, "-u", "bob@example.test:bob-pw", &url]);
        let (code, _, body) = bob(format!("{base}/messages"));
        assert_eq!(code, 200);
        assert_eq!(json(&body)["total"], 0);
        assert_eq!(bob(format!("{base}/messages/{id}")).0, 404);
        assert_eq!(bob(format!("{base}/messages/{id}/raw")).0, 404);
        // A change sent from another site's page is refused, whatever the credentials.
        let (code, _, _) = curl(&[
            "--cacert",
            &ca,
            "-u",
            "alice@example.test:alice-pw",
            "-X",
            "DELETE",
            "-H",
            "Sec-Fetch-Site: cross-site",
            &format!("{base}/messages/{id}"),
        ]);
        assert_eq!(code, 403);
        let (code, _, _) = curl(&[
            "--cacert",
            &ca,
            "-u",
            "alice@example.test:alice-pw",
            "-X",
            "POST",
            "-H",
            "Origin: https://evil.example",
            &format!("{base}/queue/1/retry"),
        ]);
        assert_eq!(code, 403);
        // Logging out ends the session.
        let (code, _, _) = with_tls(&["-X", "POST", &format!("{base}/logout")]);
        assert_eq!(code, 204);
        let (code, _, _) = with_tls(&[&format!("{base}/messages")]);
        assert_eq!(code, 401);
    })
    .await
    .unwrap();
    role.stop().await.unwrap();
}

/// Drives headless Chromium through chromedriver's WebDriver API: open the inbox, see a
/// message arrive without reloading, open it, save a screenshot.
const BROWSER: &str = r##"
import base64, json, os, smtplib, subprocess, sys, tempfile, time, urllib.request
inbox, smtp_port, driver_port, screenshot = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request("http://127.0.0.1:%d%s" % (driver_port, path), data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)["value"]

def wait(what, test, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = test()
        if value:
            return value
        time.sleep(0.2)
    print("FAILED: timed out waiting for", what); sys.exit(1)

driver = subprocess.Popen(["chromedriver", "--port=%d" % driver_port], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
profile = tempfile.mkdtemp()
try:
    for _ in range(100):
        try:
            call("GET", "/status"); break
        except Exception:
            time.sleep(0.1)
    session = call("POST", "/session", {"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--window-size=1400,900",
            "--user-data-dir=" + profile]}}}})["sessionId"]
    s = "/session/" + session
    def find_all(css):
        return call("POST", s + "/elements", {"using": "css selector", "value": css})
    def text(element):
        return call("GET", s + "/element/%s/text" % list(element.values())[0])
    call("POST", s + "/url", {"url": inbox})
    rows = wait("the first message in the list", lambda: find_all("#messages tbody tr.message"))
    first = text(rows[0])
    if "Welcome" not in first:
        print("FAILED: unexpected first row", first); sys.exit(1)
    # A message arrives over SMTP; the page shows it without being reloaded.
    smtp = smtplib.SMTP("127.0.0.1", smtp_port, timeout=10)
    smtp.sendmail("friend@remote.test", ["alice@example.test"],
                  "From: Friend <friend@remote.test>\r\nTo: alice@example.test\r\n"
                  "Subject: Arrived while you watched\r\n\r\nHello from the browser test.\r\n")
    smtp.quit()
    def arrived():
        for row in find_all("#messages tbody tr.message"):
            if "Arrived while you watched" in text(row):
                return row
    row = wait("the new message to appear", arrived)
    call("POST", s + "/element/%s/click" % list(row.values())[0], {})
    subject = wait("the message view", lambda: [e for e in find_all("#view-subject") if text(e) == "Arrived while you watched"])
    body = wait("the message text", lambda: [e for e in find_all("#view-text") if "Hello from the browser test." in text(e)])
    # Opening it marked it read.
    wait("the row to show as read", lambda: [r for r in find_all("#messages tbody tr.message:not(.unread)") if "Arrived" in text(r)])
    png = base64.b64decode(call("GET", s + "/screenshot"))
    with open(screenshot, "wb") as f:
        f.write(png)
    call("DELETE", s)
    print("ok", len(png))
finally:
    driver.terminate()
"##;

#[tokio::test(flavor = "multi_thread")]
async fn headless_chromium_sees_mail_arrive_and_opens_it() {
    let test = test_config(Environment::Development, "");
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    let smtp = role.addr("smtp");
    let http = role.addr("http");
    let ca = test.data_dir().join("tls/ca.pem");
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-inbox.png");
    let _ = std::fs::remove_file(&screenshot);
    let driver_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let shot = screenshot.clone();
    let (passed, out) = tokio::task::spawn_blocking(move || {
        deliver(
            smtp,
            &ca,
            "alice@example.test",
            "From: Quartet <hello@remote.test>\r\nSubject: Welcome\r\n\r\nFirst message.\r\n",
        );
        let started = Instant::now();
        let outcome = python(
            BROWSER,
            &[
                format!("http://{http}/"),
                smtp.port().to_string(),
                driver_port.to_string(),
                shot.display().to_string(),
            ],
        );
        eprintln!("browser run took {:?}", started.elapsed());
        outcome
    })
    .await
    .unwrap();
    assert!(passed && out.contains("ok "), "{out}");
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
    eprintln!("screenshot: {}", screenshot.display());
    role.stop().await.unwrap();
}
