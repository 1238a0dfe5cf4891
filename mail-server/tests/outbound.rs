//! The outbound queue against a local SMTP sink playing the smarthost: delivery, a permanent
//! refusal and a temporary one until expiry (each bounced to the sender), and a queue that
//! survives a restart.

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions

use std::time::{Duration, Instant};

use common::testing::{RunningRole, TestConfig};
use common::{Environment, Role};
use mail_server::store::Store;

mod support;
use support::{inbox, send, sink};

/// Production with a relay on `relay_port`, a short retry schedule and an Ed25519 DKIM key;
/// returns the DNS TXT record for the key too.
fn production(relay_port: u16) -> (TestConfig, std::path::PathBuf, String) {
    use base64::Engine as _;
    let hash = mail_server::store::hash_password("alice-pw").unwrap();
    let test = TestConfig::new(Environment::Production);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let key_file = test.dir.path().join("dkim.pem");
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let record = format!(
        "v=DKIM1; k=ed25519; p={}",
        base64::engine::general_purpose::STANDARD.encode(key.public_key_raw())
    );
    std::fs::write(
        test.config_dir().join("default.toml"),
        format!(
            "[mail]\ndomains = [\"example.test\"]\nhostname = \"mx.example.test\"\n\
             retry_intervals = [\"1s\"]\nmax_queue_time = \"4s\"\n\
             [mail.relay]\nhost = \"127.0.0.1\"\nport = {relay_port}\ntls = \"none\"\n\
             [mail.dkim]\nselector = \"q1\"\nprivate_key = \"{}\"\n\
             [[mail.accounts]]\naddress = \"alice@example.test\"\npassword_hash = \"{hash}\"\n",
            key_file.display()
        ),
    )
    .unwrap();
    let (test, ca) = test.set("db.admin_password", "unused").with_generated_tls();
    (test, ca, record)
}

/// dkimpy's verdict on `message`, with `record` as the TXT record of q1._domainkey.example.test.
fn dkim_verifies(message: &str, record: &str) -> String {
    const VERIFY: &str = r#"
import dkim, sys
message, record = sys.stdin.buffer.read(), sys.argv[1].encode()
def dns(name, timeout=5):
    return record if name == b"q1._domainkey.example.test." else None
print("valid" if dkim.verify(message, dnsfunc=dns) else "invalid")
"#;
    use std::io::Write as _;
    let mut child = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(VERIFY)
        .arg(record)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(message.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Points a [`production`] configuration made with port 1 (nothing listening) at `port`.
fn reach_the_relay(test: &TestConfig, port: u16) {
    let config = test.config_dir().join("default.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("port = 1\n", &format!("port = {port}\n")),
    )
    .unwrap();
}

async fn queue(test: &TestConfig) -> Vec<mail_server::store::QueuedRecipient> {
    let store = Store::open(&test.data_dir().join("mail")).await.unwrap();
    let queue = store.queue().await.unwrap();
    store.close().await;
    queue
}

#[tokio::test(flavor = "multi_thread")]
async fn delivery_retries_bounces_and_a_queue_that_survives_restarts() {
    let (relay, received) = sink().await;
    let (test, ca, record) = production(relay.port());
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    let submission = role.addr("submission");
    let ca2 = ca.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        send(
            submission,
            "starttls",
            Some(("alice@example.test", "alice-pw")),
            "alice@example.test",
            &["ok@far.test", "perm@far.test", "temp@far.test"],
            &ca2,
            Some("From: alice@example.test\r\nSubject: out\r\nMessage-ID: <out@example.test>\r\n\r\nHello\nworld\r\n"),
        )
    })
    .await
    .unwrap();
    assert_eq!(outcome, "sent []");

    // Delivered through the smarthost, one transaction per recipient.
    wait_for("the delivery", async || {
        !received.lock().unwrap().is_empty()
    })
    .await;
    let delivered = received.lock().unwrap().clone();
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    let (from, to, message) = &delivered[0];
    assert_eq!(
        (from.as_str(), to.as_str()),
        ("alice@example.test", "ok@far.test")
    );
    assert!(
        message.contains("\r\nReceived: from client.test"),
        "{message}"
    );
    assert!(
        !message.contains("Return-Path"),
        "queued copies carry no Return-Path"
    );
    // Production signs what leaves; an independent verifier (dkimpy) agrees.
    assert!(
        message.starts_with("DKIM-Signature: v=1; a=ed25519-sha256"),
        "{message}"
    );
    assert!(message.contains("d=example.test") && message.contains("s=q1"));
    assert_eq!(dkim_verifies(message, &record), "valid");
    assert_eq!(
        dkim_verifies(&message.replace("Subject: out", "Subject: 0ut"), &record),
        "invalid",
        "a changed header breaks the signature"
    );

    // 550: bounced at once; 451: retried every second (retry_intervals), bounced after
    // max_queue_time (4 s).
    let mut temp_attempts = Vec::new();
    wait_for("two bounces", async || {
        if let Some(entry) = queue(&test)
            .await
            .into_iter()
            .find(|q| q.recipient == "temp@far.test")
            && temp_attempts.last() != Some(&(entry.attempts, entry.next_attempt))
        {
            temp_attempts.push((entry.attempts, entry.next_attempt));
        }
        inbox(&test, "alice@example.test", "INBOX").await.len() == 2
    })
    .await;
    // Seen waiting between attempts: the count grows, the next attempt about a second on.
    let attempts: Vec<i64> = temp_attempts.iter().map(|(a, _)| *a).collect();
    assert!(
        attempts.windows(2).all(|w| w[0] <= w[1]) && attempts.iter().max() >= Some(&2),
        "{temp_attempts:?}"
    );
    for pair in temp_attempts.windows(2) {
        let ((a0, next0), (a1, next1)) = (pair[0], pair[1]);
        if a1 == a0 + 1 {
            assert!((1..=2).contains(&(next1 - next0)), "{temp_attempts:?}");
        }
    }
    let bounces = inbox(&test, "alice@example.test", "INBOX").await;
    assert!(
        bounces[0].starts_with("Return-Path: <>\r\n"),
        "{}",
        bounces[0]
    );
    assert!(bounces[0].contains("Final-Recipient: rfc822; perm@far.test"));
    assert!(bounces[0].contains("Status: 5.1.1"));
    assert!(
        bounces[0].contains("Message-ID: <out@example.test>"),
        "the original headers"
    );
    assert!(bounces[1].contains("Final-Recipient: rfc822; temp@far.test"));
    assert!(bounces[1].contains("gave up after"), "{}", bounces[1]);
    wait_for("an empty queue", async || queue(&test).await.is_empty()).await;
    role.stop().await.unwrap();

    // With the smarthost down, mail waits in the queue, across a restart.
    let (test, ca, _) = production(1); // nothing listens on port 1
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    let submission = role.addr("submission");
    let ca2 = ca.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        send(
            submission,
            "starttls",
            Some(("alice@example.test", "alice-pw")),
            "alice@example.test",
            &["later@far.test"],
            &ca2,
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(outcome, "sent []");
    wait_for("a failed attempt", async || {
        queue(&test).await.first().is_some_and(|q| q.attempts >= 1)
    })
    .await;
    // The queue over HTTP: Basic with the account (its own entries only), TLS in production.
    let port = role.addr("http").port();
    let api = format!("https://localhost:{port}/api/v1/queue");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let ca_text = ca.to_str().unwrap().to_owned();
    let (listing, anonymous, wrong, retried, missing, garbage) =
        tokio::task::spawn_blocking(move || {
            let call = |args: &[&str]| {
                let mut all = vec!["--cacert", &ca_text, "--resolve", &resolve];
                all.extend_from_slice(args);
                common::testing::curl(&all)
            };
            (
                call(&["-u", "alice@example.test:alice-pw", &api]),
                call(&[&api]),
                call(&["-u", "alice@example.test:nope", &api]),
                call(&[
                    "-u",
                    "alice@example.test:alice-pw",
                    "-X",
                    "POST",
                    &format!("{api}/1/retry"),
                ]),
                call(&[
                    "-u",
                    "alice@example.test:alice-pw",
                    "-X",
                    "DELETE",
                    &format!("{api}/999"),
                ]),
                call(&[
                    "-u",
                    "alice@example.test:alice-pw",
                    "-X",
                    "POST",
                    &format!("{api}/not-a-number/retry"),
                ]),
            )
        })
        .await
        .unwrap();
    assert_eq!(listing.0, 200, "{}", listing.1);
    assert!(
        listing.1.contains("\"recipient\":\"later@far.test\"")
            && listing.1.contains("\"status\":\"pending\""),
        "{}",
        listing.1
    );
    assert_eq!(anonymous.0, 401);
    assert_eq!(wrong.0, 401);
    assert_eq!(retried.0, 200, "{}", retried.1);
    assert_eq!(missing.0, 404);
    assert_eq!(garbage.0, 400, "{}", garbage.1);
    role.stop().await.unwrap();
    // The same queue from the command line, with the server stopped.
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_mail-server"))
            .args(args)
            .env_clear()
            .envs(test.child_env())
            .output()
            .unwrap();
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    };
    let (ok, out) = cli(&["queue", "list"]);
    assert!(
        ok && out.contains("pending\talice@example.test -> later@far.test"),
        "{out}"
    );
    let (ok, out) = cli(&["queue", "retry", "1"]);
    assert!(ok && out.contains("due now"), "{out}");
    let (ok, out) = cli(&["queue", "delete", "42"]);
    assert!(!ok && out.contains("no entry 42"), "{out}");
    let waiting = queue(&test).await;
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].status, "pending");
    assert!(
        waiting[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("127.0.0.1"),
        "{waiting:?}"
    );
    // Back up with the smarthost reachable: the waiting message goes out.
    reach_the_relay(&test, relay.port());
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    wait_for("the delivery after restart", async || {
        received
            .lock()
            .unwrap()
            .iter()
            .any(|(_, to, _)| to == "later@far.test")
    })
    .await;
    wait_for("an empty queue", async || queue(&test).await.is_empty()).await;
    role.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn delivery_to_each_domains_mx() {
    use support::{Answer, dns};
    let (mx, received) = sink().await;
    let resolver = dns(
        vec![
            ("far.test", 15, Answer::Mx(10, "mx1.far.test")),
            ("mx1.far.test", 1, Answer::A([127, 0, 0, 1])),
            // No MX: the domain itself is the exchanger (RFC 5321 §5.1).
            ("nomx.test", 1, Answer::A([127, 0, 0, 1])),
            // Null MX (RFC 7505): no mail, at once.
            ("nullmx.test", 15, Answer::Mx(0, ".")),
        ],
        vec!["gone.test"],
    )
    .await;
    let (test, ca, _) = production(1);
    // No relay: each domain's MX, found through the test's DNS server, on the sink's port.
    let config = test.config_dir().join("default.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(
        "[mail.relay]\nhost = \"127.0.0.1\"\nport = 1\ntls = \"none\"\n",
        "",
    );
    std::fs::write(&config, text).unwrap();
    let test = test
        .set("mail.dns_server", resolver.to_string())
        .set("mail.mx_port", mx.port().to_string());
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    let submission = role.addr("submission");
    let outcome = tokio::task::spawn_blocking(move || {
        send(
            submission,
            "starttls",
            Some(("alice@example.test", "alice-pw")),
            "alice@example.test",
            &["a@far.test", "b@nomx.test", "c@nullmx.test", "d@gone.test"],
            &ca,
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(outcome, "sent []");
    wait_for("two deliveries", async || {
        received.lock().unwrap().len() == 2
    })
    .await;
    let mut delivered: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, to, _)| to.clone())
        .collect();
    delivered.sort();
    assert_eq!(delivered, ["a@far.test", "b@nomx.test"]);
    wait_for("two bounces", async || {
        inbox(&test, "alice@example.test", "INBOX").await.len() == 2
    })
    .await;
    let bounces = inbox(&test, "alice@example.test", "INBOX").await.join("\n");
    assert!(
        bounces.contains("Final-Recipient: rfc822; c@nullmx.test"),
        "{bounces}"
    );
    assert!(
        bounces.contains("does not accept mail (null MX)"),
        "{bounces}"
    );
    assert!(
        bounces.contains("Final-Recipient: rfc822; d@gone.test"),
        "{bounces}"
    );
    assert!(
        bounces.contains("domain gone.test does not exist"),
        "{bounces}"
    );
    role.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_smarthost_with_starttls_or_tls_and_credentials() {
    // The smarthost is another mail-server: its submission ports, AUTH, its own CA.
    let smarthost = TestConfig::new(Environment::Development);
    std::fs::write(
        smarthost.config_dir().join("default.toml"),
        "[mail]\ndomains = [\"relay.test\"]\n\
         [[mail.accounts]]\naddress = \"relayuser@relay.test\"\npassword = \"relay-pw\"\n\
         [[mail.accounts]]\naddress = \"carol@relay.test\"\npassword = \"carol-pw\"\n",
    )
    .unwrap();
    let relay = RunningRole::start(Role::Mail, &smarthost, mail_server::run).await;
    let relay_ca = smarthost.data_dir().join("tls/ca.pem");
    // The smarthost lets its user send as alice@example.test (submission checks the sender).
    let store = Store::open(&smarthost.data_dir().join("mail"))
        .await
        .unwrap();
    store
        .add_alias("alice@example.test", "relayuser@relay.test")
        .await
        .unwrap();
    store.close().await;
    for (port, tls) in [
        (relay.addr("submission").port(), "starttls"),
        (relay.addr("submissions").port(), "tls"),
    ] {
        let (test, ca, _) = production(1);
        let config = test.config_dir().join("default.toml");
        let text = std::fs::read_to_string(&config).unwrap().replace(
            "[mail.relay]\nhost = \"127.0.0.1\"\nport = 1\ntls = \"none\"\n",
            &format!(
                "[mail.relay]\nhost = \"localhost\"\nport = {port}\ntls = \"{tls}\"\n\
                 username = \"relayuser@relay.test\"\npassword = \"relay-pw\"\nca_file = \"{}\"\n",
                relay_ca.display()
            ),
        );
        std::fs::write(&config, text).unwrap();
        let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
        let submission = role.addr("submission");
        let outcome = tokio::task::spawn_blocking(move || {
            send(
                submission,
                "starttls",
                Some(("alice@example.test", "alice-pw")),
                "alice@example.test",
                &["carol@relay.test"],
                &ca,
                Some(&format!("Subject: via {tls}\r\n\r\nhello\r\n")),
            )
        })
        .await
        .unwrap();
        assert_eq!(outcome, "sent []");
        let expected = format!("Subject: via {tls}");
        wait_for("the relayed message", async || {
            inbox(&smarthost, "carol@relay.test", "INBOX")
                .await
                .iter()
                .any(|m| m.contains(&expected))
        })
        .await;
        role.stop().await.unwrap();
    }
    // Both arrived authenticated and encrypted, signed by the sending server.
    let carol = inbox(&smarthost, "carol@relay.test", "INBOX").await;
    assert_eq!(carol.len(), 2);
    for message in &carol {
        assert!(message.contains("with ESMTPSA id "), "{message}");
        assert!(
            message.contains("DKIM-Signature: v=1; a=ed25519-sha256"),
            "{message}"
        );
    }
    relay.stop().await.unwrap();
}

/// A queue filled in production and then served by a development instance (a copied store, a
/// laptop with production's data): development sends nothing, whatever is queued, and
/// captures it for dev@localhost instead. Also deleting a real entry, over HTTP and with the
/// command line, sends nothing and bounces nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_queue_moved_to_development_sends_nothing_and_deleted_entries_stay_unsent() {
    let (relay, received) = sink().await;
    let (mut test, ca, _) = production(1); // the smarthost is down
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    let submission = role.addr("submission");
    let ca2 = ca.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut outcomes = Vec::new();
        for to in ["kept@far.test", "by-http@far.test", "by-cli@far.test"] {
            outcomes.push(send(
                submission,
                "starttls",
                Some(("alice@example.test", "alice-pw")),
                "alice@example.test",
                &[to],
                &ca2,
                Some(&format!(
                    "From: alice@example.test\r\nTo: {to}\r\nSubject: for {to}\r\n\r\nHello\r\n"
                )),
            ));
        }
        outcomes
    })
    .await
    .unwrap();
    assert!(outcome.iter().all(|o| o == "sent []"), "{outcome:?}");
    wait_for("three failed attempts", async || {
        let queue = queue(&test).await;
        queue.len() == 3 && queue.iter().all(|q| q.attempts >= 1)
    })
    .await;
    let id_of = async |test: &TestConfig, to: &str| {
        queue(test)
            .await
            .iter()
            .find(|q| q.recipient == to)
            .map(|q| q.queue_id)
            .unwrap()
    };

    // Deleted over HTTP: 204, gone, no bounce.
    let by_http = id_of(&test, "by-http@far.test").await;
    let port = role.addr("http").port();
    let url = format!("https://localhost:{port}/api/v1/queue/{by_http}");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let ca_text = ca.to_str().unwrap().to_owned();
    let deleted = tokio::task::spawn_blocking(move || {
        common::testing::curl(&[
            "--cacert",
            &ca_text,
            "--resolve",
            &resolve,
            "-u",
            "alice@example.test:alice-pw",
            "-X",
            "DELETE",
            &url,
        ])
    })
    .await
    .unwrap();
    assert_eq!(deleted.0, 204, "{}", deleted.1);
    assert_eq!(queue(&test).await.len(), 2);
    role.stop().await.unwrap();

    // Deleted with the command line, the server stopped.
    let by_cli = id_of(&test, "by-cli@far.test").await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mail-server"))
        .args(["queue", "delete", &by_cli.to_string()])
        .env_clear()
        .envs(test.child_env())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let left = queue(&test).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].recipient, "kept@far.test");

    // The same data under development, with the smarthost reachable now: nothing is sent;
    // the message lands in dev@localhost's capture mailbox and the entry closes.
    reach_the_relay(&test, relay.port());
    test.environment = Environment::Development;
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    wait_for("the capture", async || {
        !inbox(&test, "dev@localhost", "Captured").await.is_empty()
    })
    .await;
    let captured = inbox(&test, "dev@localhost", "Captured").await;
    assert_eq!(captured.len(), 1);
    assert!(
        captured[0].contains("Subject: for kept@far.test"),
        "{}",
        captured[0]
    );
    wait_for("an empty queue", async || queue(&test).await.is_empty()).await;
    // Give a wrong send every chance to show, then check the smarthost saw nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(received.lock().unwrap().is_empty(), "development sent mail");
    assert!(
        inbox(&test, "alice@example.test", "INBOX").await.is_empty(),
        "no bounce for deleted or captured mail"
    );
    role.stop().await.unwrap();
}
