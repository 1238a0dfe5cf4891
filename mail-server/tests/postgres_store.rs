//! `mail.store = "postgres://…"`: two mail-servers sharing one store on a PostgreSQL 15 that
//! the test starts itself; mail received by either is in the same mailboxes, with UIDs that
//! never collide; and IMAP, POP3 and the web API on such a store.

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions

use common::config::Backend;
use common::testing::{PostgresCluster, RunningRole, TestConfig};
use common::{Environment, Role};
use mail_server::store::Store;

mod support;
use support::{IMAPLIB_SESSION, deliver, python, send};

const ACCOUNTS: &str = "[mail]\ndomains = [\"example.test\"]\n\
    [[mail.accounts]]\naddress = \"alice@example.test\"\npassword = \"alice-pw\"\n\
    [[mail.accounts]]\naddress = \"bob@example.test\"\npassword = \"bob-pw\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn two_servers_share_one_postgresql_store() {
    let cluster = tokio::task::spawn_blocking(PostgresCluster::start)
        .await
        .unwrap();
    let url = cluster.url("postgres");
    let instance = || {
        let test = TestConfig::new(Environment::Development).set("mail.store", &url);
        std::fs::write(test.config_dir().join("default.toml"), ACCOUNTS).unwrap();
        test
    };
    let (first, second) = (instance(), instance());
    let a = RunningRole::start(Role::Mail, &first, mail_server::run).await;
    let b = RunningRole::start(Role::Mail, &second, mail_server::run).await;
    let (smtp_a, smtp_b) = (a.addr("smtp"), b.addr("smtp"));
    let ca = first.data_dir().join("tls/ca.pem");
    let outcomes = tokio::task::spawn_blocking(move || {
        // Alternating servers, from two threads at once: the writers race for UIDs.
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let ca = ca.clone();
                std::thread::spawn(move || {
                    (0..5)
                        .map(|i| {
                            let server = if (t + i) % 2 == 0 { smtp_a } else { smtp_b };
                            send(
                                server,
                                "plain",
                                None,
                                "ann@remote.test",
                                &["alice@example.test", "bob@example.test"],
                                &ca,
                                None,
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(outcomes.iter().all(|o| o == "sent []"), "{outcomes:?}");

    let store = Store::open_backend(&first.data_dir().join("unused"), &Backend::new(&url))
        .await
        .unwrap();
    for account in ["alice@example.test", "bob@example.test"] {
        let messages = store.messages(account, "INBOX").await.unwrap();
        let uids: Vec<i64> = messages.iter().map(|m| m.uid).collect();
        assert_eq!(uids, (1..=10).collect::<Vec<_>>(), "{account}: {uids:?}");
        assert!(messages.iter().all(|m| {
            String::from_utf8_lossy(&m.raw)
                .starts_with("Return-Path: <ann@remote.test>\r\nReceived: ")
        }),);
    }
    // The accounts both servers know are the same rows.
    let accounts: Vec<String> = store
        .accounts()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.address)
        .collect();
    assert_eq!(
        accounts,
        ["alice@example.test", "bob@example.test", "dev@localhost"]
    );
    store.close().await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn imap_pop3_and_the_web_api_on_a_postgresql_store() {
    let cluster = tokio::task::spawn_blocking(PostgresCluster::start)
        .await
        .unwrap();
    let test = TestConfig::new(Environment::Development).set("mail.store", cluster.url("postgres"));
    std::fs::write(test.config_dir().join("default.toml"), ACCOUNTS).unwrap();
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    let (smtp, imap, pop3, http) = (
        role.addr("smtp"),
        role.addr("imap"),
        role.addr("pop3"),
        role.addr("http"),
    );
    let ca = test.data_dir().join("tls/ca.pem");
    tokio::task::spawn_blocking(move || {
        // The whole imaplib session (flags, copies, moves, expunges, appends, renames).
        deliver(smtp, &ca, 3);
        let (passed, out) = python(
            IMAPLIB_SESSION,
            &[imap.port().to_string(), ca.display().to_string()],
        );
        assert!(passed && out.trim_end().ends_with("ok"), "{out}");
        // The web API's search, body text included.
        let search = |query: &str| {
            let output = std::process::Command::new("curl")
                .args(["-s", "-G", "--data-urlencode"])
                .arg(format!("query={query}"))
                .arg(format!("http://{http}/api/v1/messages"))
                .output()
                .unwrap();
            let body: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            body["total"].as_i64().unwrap()
        };
        assert_eq!(search("numbers are in"), 1);
        assert_eq!(search("from:carol has:attachment"), 1);
        // POP3 deletes at QUIT.
        let script = r#"
import poplib, sys
p = poplib.POP3("127.0.0.1", int(sys.argv[1]), timeout=10)
p.user("bob@example.test"); p.pass_("bob-pw")
print(p.stat()[0]); p.dele(1); print(p.quit())
"#;
        let out = send(
            smtp,
            "plain",
            None,
            "x@remote.test",
            &["bob@example.test"],
            &ca,
            None,
        );
        assert!(out.starts_with("sent"), "{out}");
        let (passed, out) = python(script, &[pop3.port().to_string()]);
        assert!(
            passed && out.starts_with("1\n") && out.contains("1 messages deleted"),
            "{out}"
        );
    })
    .await
    .unwrap();
    role.stop().await.unwrap();
}
