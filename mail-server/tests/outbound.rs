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

fn production(relay_port: u16) -> (TestConfig, std::path::PathBuf) {
    let hash = mail_server::store::hash_password("alice-pw").unwrap();
    let test = TestConfig::new(Environment::Production);
    std::fs::write(
        test.config_dir().join("default.toml"),
        format!(
            "[mail]\ndomains = [\"example.test\"]\nhostname = \"mx.example.test\"\n\
             retry_intervals = [\"1s\"]\nmax_queue_time = \"4s\"\n\
             [mail.relay]\nhost = \"127.0.0.1\"\nport = {relay_port}\ntls = \"none\"\n\
             [[mail.accounts]]\naddress = \"alice@example.test\"\npassword_hash = \"{hash}\"\n"
        ),
    )
    .unwrap();
    test.set("db.admin_password", "unused").with_generated_tls()
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
    let (test, ca) = production(relay.port());
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
        message.starts_with("Received: from client.test"),
        "{message}"
    );
    assert!(
        !message.contains("Return-Path"),
        "queued copies carry no Return-Path"
    );

    // 550: bounced at once; 451: retried every second, bounced after max_queue_time.
    wait_for("two bounces", async || {
        inbox(&test, "alice@example.test", "INBOX").await.len() == 2
    })
    .await;
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
    let (test, ca) = production(1); // nothing listens on port 1
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
    role.stop().await.unwrap();
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
    let config = test.config_dir().join("default.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("port = 1\n", &format!("port = {}\n", relay.port())),
    )
    .unwrap();
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
