//! The real `mail-server` binary: every listener bound, health, SMTP greeting on every SMTP
//! port (TLS first on 465), the IMAP and POP3 greetings (TLS first on 993 and 995).

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions

use std::path::Path;

use common::Environment;
use common::testing::{TestConfig, read_greeting, run_binary_lifecycle, tls_connect};
use tokio::io::AsyncReadExt;

const BIN: &str = env!("CARGO_BIN_EXE_mail-server");

#[test]
fn binds_every_listener_serves_health_and_stops_on_sigterm() {
    let test = TestConfig::new(Environment::Development);
    let ca = test.data_dir().join("tls/ca.pem");
    run_binary_lifecycle(Path::new(BIN), &test, 8, "mail http", None, |addrs| {
        let smtp = read_greeting(addrs["mail smtp"], b"", 512);
        assert!(
            smtp.starts_with(b"220 ") && smtp.ends_with(b" ESMTP Quartet\r\n"),
            "{}",
            String::from_utf8_lossy(&smtp)
        );
        let imap = read_greeting(addrs["mail imap"], b"", 512);
        assert!(
            imap.starts_with(b"* OK "),
            "{}",
            String::from_utf8_lossy(&imap)
        );
        let pop3 = read_greeting(addrs["mail pop3"], b"", 512);
        assert!(
            pop3.starts_with(b"+OK "),
            "{}",
            String::from_utf8_lossy(&pop3)
        );

        // Implicit-TLS ports speak TLS first, with the development certificate.
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let mut tls = tls_connect(addrs["mail submissions"], &ca)
                .await
                .expect("TLS handshake");
            let mut greeting = [0u8; 4];
            tls.read_exact(&mut greeting).await.expect("greeting");
            assert_eq!(&greeting, b"220 ");
            let mut tls = tls_connect(addrs["mail imaps"], &ca)
                .await
                .expect("TLS handshake");
            let mut greeting = [0u8; 5];
            tls.read_exact(&mut greeting).await.expect("greeting");
            assert_eq!(&greeting, b"* OK ");
            let mut tls = tls_connect(addrs["mail pop3s"], &ca)
                .await
                .expect("TLS handshake");
            let mut greeting = [0u8; 4];
            tls.read_exact(&mut greeting).await.expect("greeting");
            assert_eq!(&greeting, b"+OK ");
        });
    });
}

fn accounts_config(test: &TestConfig) {
    std::fs::write(
        test.config_dir().join("default.toml"),
        "[mail]\ndomains = [\"localhost\", \"example.test\"]\n\
         [[mail.accounts]]\naddress = \"alice@example.test\"\npassword = \"alice-pw\"\n",
    )
    .unwrap();
}

#[test]
fn every_acknowledged_message_survives_kill_9() {
    use common::testing::Binary;
    let test = TestConfig::new(Environment::Development);
    accounts_config(&test);
    let mut server = Binary::spawn(Path::new(BIN), &[], &test.child_env(), test.dir.path());
    let addrs = server.wait_for_listeners(8);
    let acknowledged = test.dir.path().join("acknowledged.txt");
    let mut client = std::process::Command::new("/usr/bin/python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/send_until_killed.py"
        ))
        .arg(addrs["mail smtp"].port().to_string())
        .arg(&acknowledged)
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    server.signal("KILL");
    server.wait_exit(std::time::Duration::from_secs(5));
    client.wait().unwrap();
    let sent: Vec<String> = std::fs::read_to_string(&acknowledged)
        .unwrap()
        .lines()
        .map(|id| id.trim_matches(['<', '>']).to_owned())
        .collect();
    assert!(
        sent.len() > 20,
        "only {} messages were acknowledged",
        sent.len()
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stored: std::collections::HashSet<String> = runtime.block_on(async {
        let store = mail_server::store::Store::open(&test.data_dir().join("mail"))
            .await
            .unwrap();
        let messages = store.messages("alice@example.test", "INBOX").await.unwrap();
        store.close().await;
        messages.into_iter().filter_map(|m| m.message_id).collect()
    });
    let lost: Vec<&String> = sent.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost: {lost:?}",
        lost.len(),
        sent.len()
    );
}

fn manage(test: &TestConfig, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write as _;
    let mut child = std::process::Command::new(BIN)
        .args(args)
        .env_clear()
        .envs(test.child_env())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if let (Some(mut pipe), Some(text)) = (child.stdin.take(), stdin) {
        pipe.write_all(text.as_bytes()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

const LOGIN_AND_SEND: &str = r#"
import smtplib, sys
port, user, password, to = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
smtp = smtplib.SMTP("127.0.0.1", port, timeout=10)
smtp.ehlo("client.test")
try:
    smtp.login(user, password)
    print("login ok")
except smtplib.SMTPAuthenticationError as e:
    print("login failed", e.smtp_code)
smtp.close()
smtp = smtplib.SMTP("127.0.0.1", int(sys.argv[5]), timeout=10)
try:
    smtp.sendmail("ann@remote.test", [to], "Subject: to %s\r\n\r\nx\r\n" % to)
    print("delivered")
except smtplib.SMTPRecipientsRefused as e:
    print("refused", list(e.recipients.values())[0][0])
smtp.close()
"#;

#[test]
fn accounts_and_aliases_are_managed_while_the_server_runs() {
    use common::testing::Binary;
    let test = TestConfig::new(Environment::Development);
    accounts_config(&test);
    let mut server = Binary::spawn(Path::new(BIN), &[], &test.child_env(), test.dir.path());
    let addrs = server.wait_for_listeners(8);
    let (ok, out) = manage(
        &test,
        &["accounts", "add", "carol@example.test"],
        Some("carol-pw\n"),
    );
    assert!(ok, "{out}");
    let (ok, out) = manage(
        &test,
        &["accounts", "add", "carol+x@example.test"],
        Some("x\n"),
    );
    assert!(!ok && out.contains("sub-addressing"), "{out}");
    let (ok, out) = manage(
        &test,
        &["accounts", "add", "carol@elsewhere.test"],
        Some("x\n"),
    );
    assert!(!ok && out.contains("not in a local domain"), "{out}");
    let (ok, out) = manage(
        &test,
        &["aliases", "add", "sales@example.test", "carol@example.test"],
        None,
    );
    assert!(ok, "{out}");
    let (ok, out) = manage(&test, &["accounts", "list"], None);
    assert!(
        ok && out.contains("alice@example.test\t(configuration)")
            && out.contains("carol@example.test"),
        "{out}"
    );
    // An alias for two accounts.
    for target in ["alice@example.test", "carol@example.test"] {
        let (ok, out) = manage(
            &test,
            &["aliases", "add", "team@example.test", target],
            None,
        );
        assert!(ok, "{out}");
    }
    let (ok, out) = manage(&test, &["aliases", "list"], None);
    assert!(
        ok && out.contains("team@example.test\talice@example.test")
            && out.contains("team@example.test\tcarol@example.test")
            && out.contains("sales@example.test\tcarol@example.test"),
        "{out}"
    );
    let (ok, out) = manage(&test, &["accounts", "hash"], Some("pw\n"));
    assert!(ok && out.starts_with("$argon2id$"), "{out}");

    let run = |user: &str, password: &str, to: &str| {
        let output = std::process::Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(LOGIN_AND_SEND)
            .args([
                addrs["mail submission"].port().to_string(),
                user.to_owned(),
                password.to_owned(),
                to.to_owned(),
                addrs["mail smtp"].port().to_string(),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(
        run("carol@example.test", "carol-pw", "sales@example.test"),
        "login ok\ndelivered\n"
    );
    assert_eq!(
        run("carol@example.test", "carol-pw", "team@example.test"),
        "login ok\ndelivered\n"
    );
    let (ok, out) = manage(&test, &["aliases", "remove", "team@example.test"], None);
    assert!(ok, "{out}");
    let (ok, out) = manage(&test, &["aliases", "list"], None);
    assert!(ok && !out.contains("team@"), "{out}");
    assert_eq!(
        run("carol@example.test", "carol-pw", "team@example.test"),
        "login ok\nrefused 550\n"
    );
    let (ok, out) = manage(&test, &["aliases", "remove", "team@example.test"], None);
    assert!(!ok && out.contains("no alias"), "{out}");
    assert_eq!(
        run("carol@example.test", "wrong", "nobody@example.test"),
        "login failed 535\nrefused 550\n"
    );
    // RCPT TO:<postmaster> is the first local domain's postmaster, once someone is.
    assert_eq!(
        run("carol@example.test", "carol-pw", "postmaster"),
        "login ok\nrefused 550\n"
    );
    let (ok, out) = manage(
        &test,
        &[
            "aliases",
            "add",
            "postmaster@localhost",
            "alice@example.test",
        ],
        None,
    );
    assert!(ok, "{out}");
    assert_eq!(
        run("carol@example.test", "carol-pw", "postmaster"),
        "login ok\ndelivered\n"
    );
    // A catch-all takes what no account or alias does.
    let (ok, out) = manage(
        &test,
        &["aliases", "add", "@example.test", "alice@example.test"],
        None,
    );
    assert!(ok, "{out}");
    assert_eq!(
        run("alice@example.test", "alice-pw", "nobody@example.test"),
        "login ok\ndelivered\n"
    );
    let (ok, out) = manage(
        &test,
        &["accounts", "passwd", "carol@example.test"],
        Some("new-pw\n"),
    );
    assert!(ok, "{out}");
    assert_eq!(
        run("carol@example.test", "new-pw", "carol+x@example.test"),
        "login ok\ndelivered\n"
    );
    let (ok, out) = manage(&test, &["accounts", "remove", "carol@example.test"], None);
    assert!(ok, "{out}");
    assert_eq!(
        run("carol@example.test", "new-pw", "sales@example.test"),
        "login failed 535\ndelivered\n"
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let alice = runtime.block_on(async {
        let store = mail_server::store::Store::open(&test.data_dir().join("mail"))
            .await
            .unwrap();
        let messages = store.messages("alice@example.test", "INBOX").await.unwrap();
        store.close().await;
        messages
    });
    // team@ (alice's copy), postmaster, and from the catch-all nobody@ and, once carol was
    // gone, sales@.
    assert_eq!(
        alice.len(),
        4,
        "team@, postmaster, then nobody@ and sales@ by the catch-all"
    );
    server.signal("TERM");
    server.wait_exit(std::time::Duration::from_secs(15));
}

/// "250 means durable", seen from the kernel's side: the binary runs under strace, and
/// between the 354 that invites each message and the 250 that acknowledges it there is an
/// fdatasync of the store's WAL that has returned. (`kill -9` alone cannot show this: the page
/// cache survives the process.)
#[test]
fn every_250_after_data_follows_an_fdatasync_of_the_store() {
    use common::testing::Binary;
    let test = TestConfig::new(Environment::Development);
    accounts_config(&test);
    let trace = test.dir.path().join("strace.txt");
    let pid_file = test.dir.path().join("mail-server.pid");
    let launch = format!("echo $$ > {}; exec {BIN}", pid_file.display());
    let trace_arg = trace.display().to_string();
    let mut server = Binary::spawn(
        Path::new("strace"),
        &[
            "-f",
            "-qq",
            "-y",
            "-s",
            "48",
            "-e",
            "trace=fdatasync,fsync,write,writev,sendto,sendmsg",
            "-e",
            "signal=none",
            "-o",
            &trace_arg,
            "sh",
            "-c",
            &launch,
        ],
        &test.child_env(),
        test.dir.path(),
    );
    let addrs = server.wait_for_listeners(8);
    let output = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30)
for n in range(3):
    s.sendmail("ann@remote.test", ["alice@example.test"], "Subject: %d\r\n\r\nbody %d\r\n" % (n, n))
s.quit()
# Then 20 sessions at once, each with one message, released together at DATA's end.
import threading
barrier = threading.Barrier(20)
failures = []
def one(n):
    try:
        c = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=60)
        c.ehlo("client.test")
        c.mail("ann@remote.test")
        c.rcpt("alice@example.test")
        barrier.wait()
        c.data("Subject: together %d\r\n\r\nbody\r\n" % n)
        c.quit()
    except Exception as e:
        failures.append(repr(e))
threads = [threading.Thread(target=one, args=(n,)) for n in range(20)]
[t.start() for t in threads]
[t.join() for t in threads]
print("sent" if not failures else failures)
"#,
        )
        .arg(addrs["mail smtp"].port().to_string())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "sent",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success());
    server.wait_exit(std::time::Duration::from_secs(15));

    let lines: Vec<String> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let invitations: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("\"354 "))
        .collect();
    let acknowledgements: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("\"250 2.0.0 OK: queued"))
        .collect();
    assert_eq!(invitations.len(), 23, "23 354s in the trace");
    assert_eq!(acknowledgements.len(), 23, "23 250s in the trace");
    // Group commit: the 20 messages that arrived together shared fsyncs.
    let syncs = lines
        .iter()
        .filter(|l| l.contains("fdatasync(") && l.contains("mail.db-wal"))
        .count();
    eprintln!("{syncs} fsyncs of the WAL for 23 messages");
    assert!(
        (4..23).contains(&syncs),
        "{syncs} fsyncs of the WAL for 23 messages"
    );
    // The first three came one at a time: each waited for its own.
    for (&invited, &acknowledged) in invitations.iter().zip(&acknowledgements).take(3) {
        assert!(invited < acknowledged);
        let window = &lines[invited..acknowledged];
        // The sync of the WAL begins in the window…
        let began = window
            .iter()
            .position(|l| l.contains("fdatasync(") && l.contains("mail.db-wal"))
            .unwrap_or_else(|| {
                panic!(
                    "no fdatasync of the WAL before the 250:\n{}",
                    window.join("\n")
                )
            });
        // …and has returned 0 before the 250 is written.
        assert!(
            window[began..]
                .iter()
                .any(|l| l.contains("fdatasync") && l.trim_end().ends_with("= 0")),
            "the fdatasync had not returned before the 250:\n{}",
            window.join("\n")
        );
    }
}
