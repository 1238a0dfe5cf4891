//! SMTP against a running mail-server with real clients: Python's smtplib, swaks, and raw
//! sockets for what clients never send (smuggling payloads, pipelined batches, garbage).

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::testing::{RunningRole, TestConfig};
use common::{Environment, Role};
use mail_server::store::Store;

mod support;
use support::{inbox, python, send, sink, test_config};

/// A raw SMTP conversation: writes `input` at once, reads until the server closes or `wait`.
fn raw(addr: SocketAddr, input: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    stream.write_all(input).unwrap();
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn receive_submission_and_refusals_with_smtplib() {
    let test = test_config(Environment::Development, "")
        .set("mail.max_recipients", "3")
        .set("mail.max_message_bytes", "20000");
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    let smtp = role.addr("smtp");
    let submission = role.addr("submission");
    let submissions = role.addr("submissions");
    let ca = test.data_dir().join("tls/ca.pem");

    let outcomes = tokio::task::spawn_blocking(move || {
        vec![
            // Plain receive for a local account, and +tag sub-addressing.
            send(
                smtp,
                "plain",
                None,
                "ann@remote.test",
                &["alice@example.test", "Bob+news@example.test"],
                &ca,
                None,
            ),
            // STARTTLS on port 25.
            send(
                smtp,
                "starttls",
                None,
                "ann@remote.test",
                &["alice@example.test"],
                &ca,
                None,
            ),
            // Unknown user, and open relay.
            send(
                smtp,
                "plain",
                None,
                "ann@remote.test",
                &["nobody@example.test"],
                &ca,
                None,
            ),
            send(
                smtp,
                "plain",
                None,
                "ann@remote.test",
                &["victim@elsewhere.test"],
                &ca,
                None,
            ),
            // Too many recipients: the fourth gets 452.
            send(
                smtp,
                "plain",
                None,
                "ann@remote.test",
                &[
                    "alice@example.test",
                    "bob@example.test",
                    "alice+a@example.test",
                    "alice+b@example.test",
                ],
                &ca,
                None,
            ),
            // Oversize (SIZE is 20000 here).
            send(
                smtp,
                "plain",
                None,
                "ann@remote.test",
                &["alice@example.test"],
                &ca,
                Some(&format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(30_000))),
            ),
            // Submission: AUTH after STARTTLS, then anywhere (captured in development).
            send(
                submission,
                "starttls",
                Some(("alice@example.test", "alice-pw")),
                "alice@example.test",
                &["carol@elsewhere.test"],
                &ca,
                None,
            ),
            // Implicit TLS (465).
            send(
                submissions,
                "ssl",
                Some(("bob@example.test", "bob-pw")),
                "bob+lists@example.test",
                &["bob@example.test"],
                &ca,
                None,
            ),
            // Sender that is not the account's.
            send(
                submission,
                "starttls",
                Some(("alice@example.test", "alice-pw")),
                "bob@example.test",
                &["carol@elsewhere.test"],
                &ca,
                None,
            ),
            // Wrong password.
            send(
                submission,
                "starttls",
                Some(("alice@example.test", "wrong")),
                "alice@example.test",
                &["carol@elsewhere.test"],
                &ca,
                None,
            ),
            // Submission without AUTH.
            send(
                submission,
                "starttls",
                None,
                "alice@example.test",
                &["carol@elsewhere.test"],
                &ca,
                None,
            ),
        ]
    })
    .await
    .unwrap();
    let expected = [
        "sent []",
        "sent []",
        "refused [('nobody@example.test', 550)]",
        "refused [('victim@elsewhere.test', 554)]",
        "sent [('alice+b@example.test', (452, b'4.5.3 Too many recipients'))]",
        "sender refused 552",
        "sent []",
        "sent []",
        "sender refused 553",
        "auth failed 535",
        "sender refused 530",
    ];
    for (outcome, expected) in outcomes.iter().zip(expected) {
        assert_eq!(outcome, expected, "all: {outcomes:#?}");
    }

    let alice = inbox(&test, "alice@example.test", "INBOX").await;
    assert_eq!(alice.len(), 3, "{alice:#?}");
    assert!(
        alice[0].starts_with(
            "Return-Path: <ann@remote.test>\r\nReceived: from client.test ([127.0.0.1])"
        ),
        "{}",
        alice[0]
    );
    assert!(alice[0].contains("with ESMTP id "));
    assert!(alice[1].contains("with ESMTPS id "), "{}", alice[1]);
    assert!(alice[0].ends_with("Subject: Hello\r\nMessage-ID: <hello@test>\r\n\r\nHi there.\r\n"));
    let bob = inbox(&test, "bob@example.test", "INBOX").await;
    assert_eq!(
        bob.len(),
        3,
        "+tag, the third recipient, and the submission to himself"
    );
    assert!(bob[2].contains("with ESMTPSA id "), "{}", bob[2]);
    // Development: mail for elsewhere is captured in dev@localhost's mailbox, never sent.
    let captured = inbox(&test, "dev@localhost", "Captured").await;
    assert_eq!(captured.len(), 1);
    assert!(captured[0].contains("Return-Path: <alice@example.test>"));
    let store = Store::open(&test.data_dir().join("mail")).await.unwrap();
    assert!(
        store.queued().await.unwrap().is_empty(),
        "nothing queued in development"
    );
    store.close().await;
    role.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn smuggling_pipelining_and_garbage() {
    let test = test_config(Environment::Development, "");
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    let smtp = role.addr("smtp");
    let envelope =
        "EHLO evil.test\r\nMAIL FROM:<ann@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n";
    let smuggled = "MAIL FROM:<admin@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n";
    let outcomes = tokio::task::spawn_blocking(move || {
        let mut outcomes = Vec::new();
        for separator in ["\n.\n", "\r\n.\n", "\n.\r\n", "\r.\r\n"] {
            let input =
                format!("{envelope}Subject: first\r\n\r\nbody{separator}{smuggled}QUIT\r\n");
            outcomes.push(raw(smtp, input.as_bytes(), Duration::from_secs(3)));
        }
        // A pipelined batch: every reply, in order.
        outcomes.push(raw(
            smtp,
            format!("{envelope}Subject: piped\r\n\r\nok\r\n.\r\nNOOP\r\nRSET\r\nQUIT\r\n")
                .as_bytes(),
            Duration::from_secs(3),
        ));
        // Garbage and an over-long line: errors, then the session goes on.
        outcomes.push(raw(
            smtp,
            format!(
                "\x00\x01\x02\r\nMAIL FROM:<ann@remote.test>\r\n{}\r\nNOOP\r\nQUIT\r\n",
                "A".repeat(10_000)
            )
            .as_bytes(),
            Duration::from_secs(3),
        ));
        outcomes
    })
    .await
    .unwrap();
    // Bare LF or CR (reject mode): refused, connection closed, nothing stored or smuggled.
    for outcome in &outcomes[..4] {
        assert!(outcome.contains("554 5.5.2 Bare <LF> or <CR>"), "{outcome}");
        assert!(
            !outcome.contains("221") && !outcome.contains("250 2.0.0 OK"),
            "closed, not answered further: {outcome}"
        );
    }
    let piped: Vec<&str> = outcomes[4].lines().map(|l| &l[..3]).collect();
    assert_eq!(
        piped
            .iter()
            .filter(|c| !c.starts_with("250"))
            .copied()
            .collect::<Vec<_>>(),
        ["220", "354", "221"],
        "{}",
        outcomes[4]
    );
    assert!(
        outcomes[5].contains("500 5.5.1") || outcomes[5].contains("501 "),
        "{}",
        outcomes[5]
    );
    assert!(
        outcomes[5].contains("503 5.5.1 Say EHLO first"),
        "{}",
        outcomes[5]
    );
    assert!(
        outcomes[5].contains("500 5.5.2 Line too long"),
        "{}",
        outcomes[5]
    );
    assert!(outcomes[5].contains("221 2.0.0"), "{}", outcomes[5]);

    let alice = inbox(&test, "alice@example.test", "INBOX").await;
    assert_eq!(alice.len(), 1, "the pipelined one only");
    assert!(
        inbox(&test, "bob@example.test", "INBOX").await.is_empty(),
        "nothing smuggled to bob"
    );
    role.stop().await.unwrap();

    // `normalize`: the same payloads are one message each, with the rest as its text.
    let test = test_config(Environment::Development, "").set("mail.bare_lf", "normalize");
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    let smtp = role.addr("smtp");
    let outcomes = tokio::task::spawn_blocking(move || {
        ["\n.\n", "\r\n.\n", "\n.\r\n", "\r.\r\n"]
            .iter()
            .map(|separator| {
                let input =
                    format!("{envelope}Subject: first\r\n\r\nbody{separator}{smuggled}QUIT\r\n");
                raw(smtp, input.as_bytes(), Duration::from_secs(3))
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for outcome in &outcomes {
        assert_eq!(
            outcome.matches("250 2.0.0 OK: queued").count(),
            1,
            "{outcome}"
        );
    }
    let alice = inbox(&test, "alice@example.test", "INBOX").await;
    assert_eq!(alice.len(), 4);
    for message in &alice {
        assert!(
            !message.contains('\n') || !message.replace("\r\n", "").contains('\n'),
            "only CRLF: {message:?}"
        );
    }
    assert!(inbox(&test, "bob@example.test", "INBOX").await.is_empty());
    role.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn swaks_and_the_staging_rules() {
    let (relay, received) = sink().await;
    let hash = mail_server::store::hash_password("carol-pw").unwrap();
    let test = TestConfig::new(Environment::Staging);
    std::fs::write(
        test.config_dir().join("default.toml"),
        format!(
            "[mail]\ndomains = [\"example.test\"]\nstaging_allowlist = [\"*@partner.test\"]\n\
             [mail.relay]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n\
             [[mail.accounts]]\naddress = \"carol@example.test\"\npassword_hash = \"{hash}\"\n",
            relay.port()
        ),
    )
    .unwrap();
    let (test, ca) = test.set("db.admin_password", "unused").with_generated_tls();
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    let submission = role.addr("submission");
    let outcomes = tokio::task::spawn_blocking(move || {
        let swaks = |args: &[&str]| {
            let output = Command::new("swaks")
                .args([
                    "--server",
                    "127.0.0.1",
                    "--port",
                    &submission.port().to_string(),
                ])
                .args(["--helo", "client.test", "--timeout", "10"])
                .args(args)
                .output()
                .unwrap();
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        };
        vec![
            // Outside development, AUTH is not offered before TLS.
            swaks(&[
                "--from",
                "carol@example.test",
                "--to",
                "dan@partner.test",
                "--auth",
                "PLAIN",
                "--auth-user",
                "carol@example.test",
                "--auth-password",
                "carol-pw",
            ]),
            // With STARTTLS: allowlisted recipient queued, the other captured.
            swaks(&[
                "--from",
                "carol@example.test",
                "--to",
                "dan@partner.test,eve@else.test",
                "--tls",
                "--tls-ca-path",
                ca.to_str().unwrap(),
                "--tls-verify",
                "--auth",
                "PLAIN",
                "--auth-user",
                "carol@example.test",
                "--auth-password",
                "carol-pw",
            ]),
            // AUTH LOGIN, to a captured recipient.
            swaks(&[
                "--from",
                "carol@example.test",
                "--to",
                "frank@else.test",
                "--tls",
                "--tls-ca-path",
                ca.to_str().unwrap(),
                "--tls-verify",
                "--auth",
                "LOGIN",
                "--auth-user",
                "carol@example.test",
                "--auth-password",
                "carol-pw",
            ]),
        ]
    })
    .await
    .unwrap();
    assert!(!outcomes[0].contains("AUTH PLAIN"), "{}", outcomes[0]);
    assert!(
        outcomes[0].contains("Host did not advertise authentication")
            || outcomes[0].contains("538"),
        "{}",
        outcomes[0]
    );
    assert!(outcomes[1].contains("235 2.7.0"), "{}", outcomes[1]);
    assert!(
        outcomes[2].contains("334 VXNlcm5hbWU6") && outcomes[2].contains("235 2.7.0"),
        "{}",
        outcomes[2]
    );
    assert!(
        outcomes[1].contains("250 2.0.0 OK: queued as"),
        "{}",
        outcomes[1]
    );
    // The allowlisted recipient went out through the relay; the other did not.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while received.lock().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing reached the relay"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, to, _)| to.clone())
        .collect();
    assert_eq!(sent, ["dan@partner.test"]);
    let captured = inbox(&test, "carol@example.test", "Captured").await;
    assert_eq!(
        captured.len(),
        2,
        "eve@ and frank@else.test are not on the allowlist"
    );
    role.stop().await.unwrap();
}

/// Commands pipelined after STARTTLS, before the handshake, must not count once TLS is on.
const STARTTLS_INJECTION: &str = r#"
import socket, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
sock = socket.create_connection(("127.0.0.1", port), timeout=10)
f = sock.makefile("rb")
f.readline()
sock.sendall(b"EHLO client.test\r\nSTARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
while True:
    line = f.readline()
    if line.startswith(b"220 "):
        break
ctx = ssl.create_default_context(cafile=ca)
tls = ctx.wrap_socket(sock, server_hostname="localhost")
t = tls.makefile("rb")
tls.sendall(b"EHLO client.test\r\n")
while not t.readline().startswith(b"250 "):
    pass
tls.sendall(b"RCPT TO:<alice@example.test>\r\n")
print(t.readline().decode().strip())
tls.sendall(b"QUIT\r\n")
"#;

#[tokio::test(flavor = "multi_thread")]
async fn starttls_injection_connection_and_error_limits() {
    let test = test_config(Environment::Development, "")
        .set("mail.max_connections_per_ip", "2")
        .set("mail.max_errors", "3")
        .set("mail.command_timeout_secs", "1");
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    let smtp = role.addr("smtp");
    let ca = test.data_dir().join("tls/ca.pem");
    let (injection, third, errors, idle) = tokio::task::spawn_blocking(move || {
        let (_, injection) = python(
            STARTTLS_INJECTION,
            &[smtp.port().to_string(), ca.display().to_string()],
        );
        // Two connections held open; the third from the same address is turned away.
        let first = TcpStream::connect(smtp).unwrap();
        let second = TcpStream::connect(smtp).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let third = raw(smtp, b"", Duration::from_secs(2));
        drop((first, second));
        std::thread::sleep(Duration::from_millis(300));
        // Three errors end a session.
        let errors = raw(
            smtp,
            b"BOGUS\r\nBOGUS\r\nBOGUS\r\nNOOP\r\n",
            Duration::from_secs(2),
        );
        // A client silent past mail.command_timeout_secs is told and disconnected.
        let idle = {
            let mut stream = TcpStream::connect(smtp).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut all = Vec::new();
            let _ = stream.read_to_end(&mut all);
            String::from_utf8_lossy(&all).into_owned()
        };
        (injection, third, errors, idle)
    })
    .await
    .unwrap();
    assert_eq!(
        injection.trim(),
        "503 5.5.1 Need MAIL before RCPT",
        "the MAIL sent before the handshake was dropped"
    );
    assert!(
        third.starts_with("421 4.7.0 Too many connections"),
        "{third}"
    );
    assert!(errors.contains("421 4.7.0 Too many errors"), "{errors}");
    assert!(
        !errors.contains("250 2.0.0 OK"),
        "NOOP after the limit: {errors}"
    );
    assert!(
        idle.starts_with("220 ") && idle.contains("421 4.4.2 Idle too long"),
        "{idle}"
    );
    role.stop().await.unwrap();
}

/// What EHLO offers, SMTPUTF8 and 8BITMIME accepted, the size limit met after DATA (when the
/// client declared no SIZE), the session time limit, and slowed logins on submission.
#[tokio::test(flavor = "multi_thread")]
async fn extensions_size_after_data_session_limit_and_slowed_logins() {
    let test = test_config(Environment::Development, "")
        .set("mail.max_message_bytes", "2000")
        .set("mail.session_timeout_secs", "4");
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    let (smtp, submission) = (role.addr("smtp"), role.addr("submission"));
    let (ehlo, utf8, oversize, session, logins) = tokio::task::spawn_blocking(move || {
        let ehlo = raw(smtp, b"EHLO client.test\r\nQUIT\r\n", Duration::from_secs(2));
        let utf8 = raw(
            smtp,
            "EHLO client.test\r\nMAIL FROM:<ü@remote.test> SMTPUTF8 BODY=8BITMIME\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
                .as_bytes(),
            Duration::from_secs(1),
        );
        // No SIZE declared: the limit is met while the message comes in, the rest is read and
        // dropped, the session goes on.
        let mut big = b"EHLO client.test\r\nMAIL FROM:<ann@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n".to_vec();
        big.extend_from_slice(b"Subject: big\r\n\r\n");
        for _ in 0..100 {
            big.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
        }
        big.extend_from_slice(b".\r\nNOOP\r\nQUIT\r\n");
        let oversize = raw(smtp, &big, Duration::from_secs(2));
        // Busy but past mail.session_timeout_secs: told and disconnected.
        let session = {
            let started = Instant::now();
            let mut stream = TcpStream::connect(smtp).unwrap();
            stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let mut all = Vec::new();
            let mut buf = [0u8; 1024];
            let mut closed = false;
            while started.elapsed() < Duration::from_secs(8) && !closed {
                if stream.write_all(b"NOOP\r\n").is_err() {
                    closed = true; // the server had closed: the write met a reset
                    break;
                }
                let until = Instant::now() + Duration::from_millis(400);
                while Instant::now() < until {
                    match stream.read(&mut buf) {
                        Ok(0) => {
                            closed = true;
                            break;
                        }
                        Ok(n) => all.extend_from_slice(&buf[..n]),
                        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {
                            closed = true;
                            break;
                        }
                        Err(_) => {}
                    }
                }
            }
            (String::from_utf8_lossy(&all).into_owned(), started.elapsed(), closed)
        };
        let (_, logins) = python(
            r#"
import base64, smtplib, sys, time
port = int(sys.argv[1])
def plain(password):
    # One AUTH PLAIN each (smtplib's login() would try LOGIN too after a refusal).
    return "PLAIN " + base64.b64encode(b"\0alice@example.test\0" + password).decode()
out = []
started = time.monotonic()
for _ in range(3):
    s = smtplib.SMTP("127.0.0.1", port, timeout=30)
    s.ehlo("client.test")
    out.append(str(s.docmd("AUTH", plain(b"wrong"))[0]))
    s.close()
out.append("%.1f" % (time.monotonic() - started))
s = smtplib.SMTP("127.0.0.1", port, timeout=30)
s.ehlo("client.test")
out.append(str(s.docmd("AUTH", plain(b"alice-pw"))[0]))
s.quit()
print(" ".join(out))
"#,
            &[submission.port().to_string()],
        );
        (ehlo, utf8, oversize, session, logins)
    })
    .await
    .unwrap();
    for extension in [
        "250-PIPELINING",
        "8BITMIME",
        "SMTPUTF8",
        "SIZE 2000",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
    ] {
        assert!(ehlo.contains(extension), "{extension} in {ehlo}");
    }
    assert!(!ehlo.contains("AUTH"), "no AUTH on port 25: {ehlo}");
    assert!(
        utf8.matches("250 2.1.").count() == 2 && utf8.contains("354"),
        "{utf8}"
    );
    assert!(oversize.contains("552 5.3.4"), "{oversize}");
    let after = oversize.split("552 5.3.4").nth(1).unwrap_or("");
    assert!(after.contains("250"), "NOOP after the refusal: {oversize}");
    assert!(
        inbox(&test, "alice@example.test", "INBOX").await.is_empty(),
        "nothing stored"
    );
    let (text, took, closed) = session;
    assert!(closed, "still open after {took:?}: {text}");
    assert!(text.contains("421 4.4.2"), "{text}");
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(7),
        "{took:?}"
    );
    // 535 each time, slowed (0.5 s, 1 s, 2 s), then the right password works.
    let words: Vec<&str> = logins.split_whitespace().collect();
    assert_eq!(words[..3], ["535", "535", "535"], "{logins}");
    let seconds: f64 = words[3].parse().unwrap();
    assert!(seconds >= 3.0, "three failures took {seconds} s");
    assert_eq!(words[4], "235", "{logins}");
    role.stop().await.unwrap();
}

/// dev@localhost/dev exists in development only: a staging start on the same data removes
/// it, logging in with it fails, and the command line refuses to create it again.
#[tokio::test(flavor = "multi_thread")]
async fn the_development_account_exists_only_in_development() {
    let hash = mail_server::store::hash_password("carol-pw").unwrap();
    let mut test = TestConfig::new(Environment::Development);
    std::fs::write(
        test.config_dir().join("default.toml"),
        format!(
            "[mail]\ndomains = [\"example.test\", \"localhost\"]\n\
             [[mail.accounts]]\naddress = \"carol@example.test\"\npassword_hash = \"{hash}\"\n"
        ),
    )
    .unwrap();
    let has_dev = async |test: &TestConfig| {
        let store = Store::open(&test.data_dir().join("mail")).await.unwrap();
        let has = store.has_account("dev@localhost").await.unwrap();
        store.close().await;
        has
    };
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    role.stop().await.unwrap();
    assert!(has_dev(&test).await, "development creates it");

    test.environment = Environment::Staging;
    let (test, ca) = test.set("db.admin_password", "unused").with_generated_tls();
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    assert!(!has_dev(&test).await, "staging removes it");
    let submissions = role.addr("submissions");
    let login = tokio::task::spawn_blocking(move || {
        python(
            r#"
import smtplib, ssl, sys
context = ssl.create_default_context(cafile=sys.argv[2])
s = smtplib.SMTP_SSL("localhost", int(sys.argv[1]), context=context, timeout=10)
try:
    s.login("dev@localhost", "dev")
    print("accepted")
except smtplib.SMTPAuthenticationError as e:
    print(e.smtp_code)
"#,
            &[submissions.port().to_string(), ca.display().to_string()],
        )
    })
    .await
    .unwrap();
    assert_eq!(login.1.trim(), "535", "{login:?}");
    role.stop().await.unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_mail-server"))
        .args(["accounts", "add", "dev@localhost"])
        .env_clear()
        .envs(test.child_env())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success() && text.contains("development's account"),
        "{text}"
    );
}
