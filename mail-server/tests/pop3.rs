//! POP3 against a running mail-server with real clients: Python's poplib, curl's `pop3://` and
//! `pop3s://`, and a raw socket for AUTH PLAIN and what clients never send.

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::testing::{RunningRole, TestConfig};
use common::{Environment, Role};

mod support;
use support::{inbox, python, send, test_config};

fn deliver(smtp: SocketAddr, ca: &std::path::Path, count: usize) {
    for n in 1..=count {
        let body = format!(
            "From: dan@remote.test\r\nSubject: Note {n}\r\nMessage-ID: <n{n}@remote.test>\r\n\r\n\
             Line one of {n}.\r\n.starts with a dot\r\nLine three.\r\n"
        );
        let out = send(
            smtp,
            "plain",
            None,
            "dan@remote.test",
            &["alice@example.test"],
            ca,
            Some(&body),
        );
        assert!(out.starts_with("sent"), "{out}");
    }
}

/// A poplib session: STLS, login, STAT/LIST/UIDL/RETR/TOP, DELE then RSET, DELE then QUIT.
const POPLIB_SESSION: &str = r#"
import poplib, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
def check(cond, what):
    if not cond:
        print("FAILED:", what); sys.exit(1)

p = poplib.POP3("127.0.0.1", port, timeout=10)
caps = p.capa()
check("STLS" in caps and "UIDL" in caps and "TOP" in caps, caps)
p.stls(context=ctx)
check("SASL" in p.capa() and "STLS" not in p.capa(), p.capa())
p.user("alice@example.test")
p.pass_("alice-pw")
count, size = p.stat()
check(count == 3, (count, size))
resp, listing, _ = p.list()
check(len(listing) == 3, listing)
check(sum(int(l.split()[1]) for l in listing) == size, (listing, size))
resp, uidl, _ = p.uidl()
check(len(set(u.split()[1] for u in uidl)) == 3, uidl)
resp, lines, octets = p.retr(2)
check(b"Subject: Note 2" in lines and b".starts with a dot" in lines, lines)
check(lines[0].startswith(b"Return-Path:"), lines[0])
resp, lines, _ = p.top(3, 1)
check(lines[-1] == b"Line one of 3." and lines[-2] == b"", lines[-3:])
p.dele(1)
check(p.stat()[0] == 2, "DELE hides the message")
try:
    p.retr(1)
    check(False, "RETR of a deleted message")
except poplib.error_proto as e:
    check(b"deleted" in str(e).encode(), e)
p.rset()
check(p.stat()[0] == 3, "RSET brings it back")
p.dele(1)
p.dele(3)
print(p.quit())
print("ok")
"#;

#[tokio::test(flavor = "multi_thread")]
async fn poplib_retrieves_and_deletes_at_quit_only() {
    let test = test_config(Environment::Development, "");
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    let smtp = role.addr("smtp");
    let pop3 = role.addr("pop3");
    let pop3s = role.addr("pop3s");
    let ca = test.data_dir().join("tls/ca.pem");
    let ca_path = ca.clone();
    tokio::task::spawn_blocking(move || deliver(smtp, &ca_path, 3))
        .await
        .unwrap();

    // A session that drops without QUIT deletes nothing.
    let dropped = tokio::task::spawn_blocking(move || {
        let mut raw = Raw::connect(pop3);
        assert!(raw.command("USER alice@example.test").starts_with("+OK"));
        assert!(
            raw.command("PASS alice-pw")
                .starts_with("+OK Logged in, 3 messages")
        );
        assert!(raw.command("DELE 1").starts_with("+OK"));
        assert!(raw.command("DELE 1").starts_with("-ERR"));
        // What clients never send: an error each, and the session goes on.
        for garbage in [
            "FROBNICATE",
            "RETR 99",
            "RETR x",
            "TOP 2",
            "LIST 0",
            "USER again",
        ] {
            assert!(raw.command(garbage).starts_with("-ERR"), "{garbage}");
        }
        assert!(
            raw.command(&"X".repeat(10_000))
                .starts_with("-ERR Line too long")
        );
        assert!(raw.command("NOOP").starts_with("+OK"));
        drop(raw);
    });
    dropped.await.unwrap();
    assert_eq!(inbox(&test, "alice@example.test", "INBOX").await.len(), 3);

    let ca_path = ca.clone();
    let (passed, out) = tokio::task::spawn_blocking(move || {
        python(
            POPLIB_SESSION,
            &[pop3.port().to_string(), ca_path.display().to_string()],
        )
    })
    .await
    .unwrap();
    assert!(passed && out.trim_end().ends_with("ok"), "{out}");
    assert!(out.contains("2 messages deleted"), "{out}");
    let left = inbox(&test, "alice@example.test", "INBOX").await;
    assert_eq!(left.len(), 1, "{left:#?}");
    assert!(left[0].contains("Subject: Note 2"));

    // curl over implicit TLS: the listing and a message.
    let url = format!("pop3s://localhost:{}/", pop3s.port());
    let ca_arg = ca.display().to_string();
    let base = [
        "-s",
        "--cacert",
        &ca_arg,
        "-u",
        "alice@example.test:alice-pw",
    ];
    let listing = std::process::Command::new("curl")
        .args(base)
        .arg(&url)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert!(listing.starts_with("1 "), "{listing}");
    let message = std::process::Command::new("curl")
        .args(base)
        .arg(format!("{url}1"))
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&message.stdout).into_owned();
    assert!(
        message.contains("Subject: Note 2") && message.contains("\n.starts with a dot"),
        "{message}"
    );
    // The message RETR read is \Seen for IMAP (and the web inbox).
    let imap = role.addr("imap");
    let flags = std::process::Command::new("curl")
        .args([
            "-s",
            "-u",
            "alice@example.test:alice-pw",
            "-X",
            "FETCH 1 (FLAGS)",
        ])
        .arg(format!("imap://127.0.0.1:{}/INBOX", imap.port()))
        .output()
        .unwrap();
    let flags = String::from_utf8_lossy(&flags.stdout).into_owned();
    assert!(flags.contains("\\Seen"), "{flags}");
    role.stop().await.unwrap();
}

struct Raw {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut raw = Self {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        assert!(raw.line().starts_with("+OK"));
        raw
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line
    }

    fn command(&mut self, command: &str) -> String {
        self.writer
            .write_all(format!("{command}\r\n").as_bytes())
            .unwrap();
        self.line()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn staging_wants_tls_for_logins() {
    let hash = mail_server::store::hash_password("alice-pw").unwrap();
    let test = TestConfig::new(Environment::Staging);
    std::fs::write(
        test.config_dir().join("default.toml"),
        format!(
            "[mail]\ndomains = [\"example.test\"]\n\
             [[mail.accounts]]\naddress = \"alice@example.test\"\npassword_hash = \"{hash}\"\n"
        ),
    )
    .unwrap();
    let (test, ca) = test.set("db.admin_password", "unused").with_generated_tls();
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    let pop3 = role.addr("pop3");
    let pop3s = role.addr("pop3s");
    let ca_arg = ca.display().to_string();
    tokio::task::spawn_blocking(move || {
        // Plaintext: no USER, no SASL in CAPA; USER and AUTH refused.
        let mut raw = Raw::connect(pop3);
        raw.writer.write_all(b"CAPA\r\n").unwrap();
        let mut capa = Vec::new();
        loop {
            let line = raw.line();
            if line == ".\r\n" || line.is_empty() {
                break;
            }
            capa.push(line);
        }
        assert!(capa.contains(&"STLS\r\n".to_owned()), "{capa:?}");
        assert!(!capa.contains(&"USER\r\n".to_owned()), "{capa:?}");
        assert!(
            raw.command("USER alice@example.test")
                .starts_with("-ERR [AUTH]")
        );
        let plain = "AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABhbGljZS1wdw==";
        assert!(raw.command(plain).starts_with("-ERR [AUTH]"));

        // Inside TLS: curl with STLS required, and AUTH PLAIN over implicit TLS.
        for url in [
            format!("pop3://localhost:{}/", pop3.port()),
            format!("pop3s://localhost:{}/", pop3s.port()),
        ] {
            let output = std::process::Command::new("curl")
                .args(["-s", "--cacert", &ca_arg, "--ssl-reqd", "--login-options"])
                .arg("AUTH=PLAIN")
                .args(["-u", "alice@example.test:alice-pw"])
                .arg(&url)
                .output()
                .unwrap();
            assert_eq!(output.status.code(), Some(0), "{url}: {output:?}");
        }
        let output = std::process::Command::new("curl")
            .args(["-s", "--cacert", &ca_arg, "-u", "alice@example.test:wrong"])
            .arg(format!("pop3s://localhost:{}/", pop3s.port()))
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(67), "login denied: {output:?}");
    })
    .await
    .unwrap();
    role.stop().await.unwrap();
}
