//! IMAP against a running mail-server with real clients: Python's imaplib (every command a
//! mail client sends), curl's `imap://` and `imaps://`, mutt in batch mode, and raw sockets for
//! IDLE and for what clients never send.

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::testing::{RunningRole, TestConfig};
use common::{Environment, Role};

mod support;
use support::{python, send};

const ACCOUNTS: &str = r#"
[mail]
domains = ["localhost", "example.test"]

[[mail.accounts]]
address = "alice@example.test"
password = "alice-pw"

[[mail.accounts]]
address = "bob@example.test"
password = "bob-pw"
"#;

fn test_config(environment: Environment) -> TestConfig {
    let test = TestConfig::new(environment);
    std::fs::write(test.config_dir().join("default.toml"), ACCOUNTS).unwrap();
    test
}

const MULTIPART: &str = "From: Carol <carol@remote.test>\r\n\
To: alice@example.test\r\n\
Subject: Quarterly report\r\n\
Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <report@remote.test>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"XX\"\r\n\
\r\n\
--XX\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
The numbers are in.\r\n\
--XX\r\n\
Content-Type: application/pdf; name=\"q3.pdf\"\r\n\
Content-Disposition: attachment; filename=\"q3.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
JVBERi0xLjQK\r\n\
--XX--\r\n";

/// Delivers `count` plain messages and the multipart one to alice over SMTP.
fn deliver(smtp: SocketAddr, ca: &std::path::Path, count: usize) {
    for n in 0..count {
        let body = format!(
            "From: Dan <dan@remote.test>\r\nTo: alice@example.test\r\nSubject: Note {n}\r\n\
             Message-ID: <note{n}@remote.test>\r\n\r\nPlain note number {n}.\r\n"
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
    let out = send(
        smtp,
        "plain",
        None,
        "carol@remote.test",
        &["alice@example.test"],
        ca,
        Some(MULTIPART),
    );
    assert!(out.starts_with("sent"), "{out}");
}

/// Every command a mail client uses, through imaplib; prints `ok` or what went wrong.
const IMAPLIB_SESSION: &str = r#"
import imaplib, ssl, sys, re
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
def check(cond, what):
    if not cond:
        print("FAILED:", what); sys.exit(1)

m = imaplib.IMAP4("127.0.0.1", port)
caps = m.capabilities
check("IMAP4REV1" in caps and "STARTTLS" in caps and "IDLE" in caps, caps)
m.starttls(ssl_context=ctx)
check("AUTH=PLAIN" in m.capabilities, m.capabilities)
typ, _ = m.login("alice@example.test", "alice-pw")
check(typ == "OK", "login")

typ, data = m.list()
names = [d.decode() for d in data]
check(any('"INBOX"' in n or ' INBOX' in n for n in names), names)
check(any("\\Sent" in n and "Sent" in n for n in names), names)
typ, data = m.namespace()
check(typ == "OK" and b'"/"' in data[0], data)

typ, data = m.select("INBOX")
check(typ == "OK" and data[0] == b"4", ("select", data))
check(m.untagged_responses.get("UIDVALIDITY"), m.untagged_responses)

typ, data = m.fetch("1:*", "(UID FLAGS RFC822.SIZE INTERNALDATE)")
check(typ == "OK" and len(data) == 4, data)
check(all(b"FLAGS" in d and b"UID" in d for d in data), data)

typ, data = m.fetch("4", "(ENVELOPE BODYSTRUCTURE)")
text = data[0].decode() if isinstance(data[0], bytes) else data[0][0].decode()
check('"Quarterly report"' in text, text)
check('"carol" "remote.test"' in text, text)
check('"MIXED"' in text.upper() and '"PDF"' in text.upper() and '"ATTACHMENT"' in text.upper(), text)

typ, data = m.fetch("4", "(BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])")
parts = [d for d in data if isinstance(d, tuple)]
# A short part comes as a quoted string, the others as literals.
check(b'BODY[1] "The numbers are in."' in parts[0][0], parts)
check(b"application/pdf" in parts[0][1], parts)
check(parts[1][1] == b"From: Carol <carol@remote.test>\r\nSubject: Quarterly report\r\n\r\n", parts)
typ, data = m.fetch("4", "(FLAGS)")
check(b"\\Seen" not in data[0], ("peek must not set \\Seen", data))
typ, data = m.fetch("1", "(BODY[]<0.10>)")
check(b'BODY[]<0> "Return-Pat"' in data[0], data)
typ, data = m.fetch("1", "(FLAGS)")
check(b"\\Seen" in data[0], ("BODY[] sets \\Seen", data))
typ, data = m.fetch("2", "(RFC822)")
check(b"Plain note number 1." in data[0][1], data)

typ, data = m.search(None, "UNSEEN")
check(data[0].split() == [b"3", b"4"], ("unseen", data))
typ, data = m.search(None, 'FROM', 'carol', 'SUBJECT', 'quarterly')
check(data[0] == b"4", ("search", data))
typ, data = m.search(None, 'BODY', '"number 2"')
check(data[0] == b"3", ("body search", data))
typ, data = m.uid("SEARCH", None, "ALL")
uids = data[0].split()
check(len(uids) == 4, uids)
typ, data = m.search(None, 'OR', 'SEEN', 'LARGER', '500')
check(data[0].split() == [b"1", b"2", b"4"], ("or", data))

typ, data = m.store("3", "+FLAGS", "(\\Flagged $Important)")
check(b"\\Flagged" in data[0] and b"$Important" in data[0], data)
typ, data = m.uid("STORE", uids[2], "-FLAGS.SILENT", "(\\Flagged)")
check(typ == "OK", data)
typ, data = m.fetch("3", "(FLAGS)")
check(b"\\Flagged" not in data[0] and b"$Important" in data[0], data)

typ, data = m.create("Work/2026")
check(typ == "OK", data)
typ, data = m.list('""', "Work/%")
check(len(data) == 1 and b"Work/2026" in data[0], data)
typ, data = m.copy("1:2", "Work/2026")
check(typ == "OK" and b"COPYUID" in data[0], data)
typ, data = m.status("Work/2026", "(MESSAGES UNSEEN UIDNEXT)")
check(b"MESSAGES 2" in data[0] and b"UNSEEN 0" in data[0], data)
typ, data = m._simple_command("MOVE", "2", "Archive")
check(typ == "NO" and b"TRYCREATE" in str(m.untagged_responses).encode() or typ == "NO", (typ, data))
m.create("Archive")
typ, data = m._simple_command("MOVE", "2", "Archive")
check(typ == "OK", (typ, data))
check(m.untagged_responses.pop("EXPUNGE", None) == [b"2"], m.untagged_responses)
typ, data = m.select("INBOX")
check(data[0] == b"3", ("after move", data))

typ, data = m.store("1", "+FLAGS", "(\\Deleted)")
typ, data = m.expunge()
check(data == [b"1"], ("expunge", data))
typ, data = m.select("INBOX")
check(data[0] == b"2", data)

msg = b"From: alice@example.test\r\nSubject: Draft reply\r\n\r\nWork in progress.\r\n"
typ, data = m.append("Drafts", "(\\Draft \\Seen)", None, msg)
check(typ == "OK" and b"APPENDUID" in data[0], data)
typ, data = m.select("Drafts", readonly=True)
check(data[0] == b"1", data)
typ, data = m.fetch("1", "(FLAGS BODY.PEEK[TEXT])")
check(b"\\Draft" in data[0][0] and data[0][1] == b"Work in progress.\r\n", data)
typ, data = m.store("1", "+FLAGS", "(\\Deleted)")
check(typ == "NO", ("read-only store", typ))

typ, data = m.rename("Work/2026", "Projects/2026")
check(typ == "OK", data)
typ, data = m.list('""', "*")
listed = b" ".join(data)
check(b"Projects/2026" in listed and b"Work/2026" not in listed, listed)
typ, data = m.subscribe("Projects/2026")
typ, data = m.unsubscribe("Archive")
typ, data = m.lsub('""', "*")
listed = b" ".join(data)
check(b"Projects/2026" in listed and b"Archive" not in listed, listed)
typ, data = m.delete("Projects/2026")
check(typ == "OK", data)
typ, data = m.delete("INBOX")
check(typ == "NO", data)
typ, data = m.select("Nope")
check(typ == "NO", data)
m.select("INBOX")
typ, data = m.close()
check(typ == "OK", data)
m.logout()
print("ok")
"#;

#[tokio::test(flavor = "multi_thread")]
async fn imaplib_runs_a_whole_client_session() {
    let test = test_config(Environment::Development);
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    let smtp = role.addr("smtp");
    let imap = role.addr("imap");
    let ca = test.data_dir().join("tls/ca.pem");
    let ca_for_python = ca.clone();
    let (passed, out) = tokio::task::spawn_blocking(move || {
        deliver(smtp, &ca, 3);
        python(
            IMAPLIB_SESSION,
            &[imap.port().to_string(), ca_for_python.display().to_string()],
        )
    })
    .await
    .unwrap();
    assert!(passed && out.trim_end().ends_with("ok"), "{out}");
    role.stop().await.unwrap();
}

/// A raw IMAP connection for what imaplib cannot do (IDLE) or never sends.
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
        let greeting = raw.line();
        assert!(greeting.starts_with("* OK"), "{greeting}");
        raw
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line
    }

    fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).unwrap();
    }

    /// Sends a tagged command; returns every line up to and including the tagged reply.
    fn command(&mut self, tag: &str, command: &str) -> Vec<String> {
        self.send(&format!("{tag} {command}\r\n"));
        self.until(tag)
    }

    fn until(&mut self, tag: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line();
            assert!(!line.is_empty(), "connection closed after {lines:?}");
            let done = line.starts_with(&format!("{tag} "));
            lines.push(line);
            if done {
                return lines;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_pushes_new_mail_and_sessions_see_each_other() {
    let test = test_config(Environment::Development);
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    let smtp = role.addr("smtp");
    let imap = role.addr("imap");
    let ca = test.data_dir().join("tls/ca.pem");
    tokio::task::spawn_blocking(move || {
        deliver(smtp, &ca, 1);
        let mut first = Raw::connect(imap);
        let mut second = Raw::connect(imap);
        for raw in [&mut first, &mut second] {
            let login = raw.command("a1", "LOGIN alice@example.test alice-pw");
            assert!(login.last().unwrap().starts_with("a1 OK"), "{login:?}");
            let select = raw.command("a2", "SELECT INBOX");
            assert!(select.iter().any(|l| l == "* 2 EXISTS\r\n"), "{select:?}");
        }

        // IDLE: a message delivered over SMTP is announced without the client asking.
        first.send("i1 IDLE\r\n");
        assert!(first.line().starts_with("+ "));
        let started = Instant::now();
        let out = send(
            smtp,
            "plain",
            None,
            "erin@remote.test",
            &["alice@example.test"],
            &ca,
            None,
        );
        assert!(out.starts_with("sent"), "{out}");
        let pushed = first.line();
        assert_eq!(pushed, "* 3 EXISTS\r\n");
        assert!(started.elapsed() < Duration::from_secs(4), "pushed at once");
        // Another session's flag change and expunge reach the idling one too.
        let stored = second.command("b1", "STORE 1 +FLAGS (\\Deleted)");
        assert!(stored.last().unwrap().starts_with("b1 OK"), "{stored:?}");
        let mut seen = Vec::new();
        while !seen
            .iter()
            .any(|l: &String| l.contains("FETCH (FLAGS (\\Deleted"))
        {
            seen.push(first.line());
        }
        let expunged = second.command("b2", "EXPUNGE");
        assert!(
            expunged.contains(&"* 1 EXPUNGE\r\n".to_owned()),
            "{expunged:?}"
        );
        let mut seen = Vec::new();
        while !seen.contains(&"* 1 EXPUNGE\r\n".to_owned()) {
            seen.push(first.line());
        }
        first.send("DONE\r\n");
        let done = first.until("i1");
        assert!(done.last().unwrap().starts_with("i1 OK"), "{done:?}");
        let fetched = first.command("a3", "FETCH 1:* (UID)");
        assert_eq!(
            fetched.iter().filter(|l| l.starts_with("* ")).count(),
            2,
            "{fetched:?}"
        );

        // A synchronising literal gets its continuation; a non-synchronising one (LITERAL+)
        // does not need it.
        first.send("a4 APPEND INBOX {22}\r\n");
        assert!(first.line().starts_with("+ "));
        first.send("Subject: lit\r\n\r\nbody\r\n\r\n");
        let appended = first.until("a4");
        assert!(
            appended.last().unwrap().contains("APPENDUID"),
            "{appended:?}"
        );
        let appended = first.command("a5", "APPEND INBOX {22+}\r\nSubject: lit\r\n\r\nbody\r\n");
        assert!(
            appended.last().unwrap().contains("APPENDUID"),
            "{appended:?}"
        );

        // Garbage gets BAD with the tag when there is one, and the session goes on.
        let bad = first.command("a6", "FROBNICATE now");
        assert!(bad.last().unwrap().starts_with("a6 BAD"), "{bad:?}");
        first.send("\r\n");
        assert!(first.line().starts_with("* BAD"));
        let fetch_bad = first
            .command("a7", "FETCH 1:* (BODY[")
            .last()
            .cloned()
            .unwrap();
        assert!(fetch_bad.starts_with("a7 BAD"), "{fetch_bad}");
        let noop = first.command("a8", "NOOP");
        assert!(noop.last().unwrap().starts_with("a8 OK"), "{noop:?}");
        let logout = first.command("a9", "LOGOUT");
        assert!(logout.iter().any(|l| l.starts_with("* BYE")), "{logout:?}");
        let mut rest = String::new();
        let _ = first.reader.read_to_string(&mut rest);
        assert!(rest.is_empty(), "closed after LOGOUT: {rest}");
    })
    .await
    .unwrap();
    role.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn staging_wants_tls_and_brakes_on_wrong_passwords() {
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
    let imap = role.addr("imap");
    let imaps = role.addr("imaps");
    tokio::task::spawn_blocking(move || {
        // LOGINDISABLED and no AUTH=PLAIN before TLS; LOGIN refused.
        let mut raw = Raw::connect(imap);
        let capability = raw.command("a", "CAPABILITY");
        assert!(
            capability[0].contains("LOGINDISABLED") && capability[0].contains("STARTTLS"),
            "{capability:?}"
        );
        assert!(!capability[0].contains("AUTH=PLAIN"), "{capability:?}");
        let login = raw.command("b", "LOGIN alice@example.test alice-pw");
        assert!(login.last().unwrap().starts_with("b NO"), "{login:?}");
        let login = raw.command(
            "c",
            "AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABhbGljZS1wdw==",
        );
        assert!(login.last().unwrap().starts_with("c NO"), "{login:?}");
    })
    .await
    .unwrap();

    // Inside TLS (curl's imaps://, and imap:// with STARTTLS required), logins work; wrong
    // passwords are refused, slower each time.
    let ca_arg = ca.display().to_string();
    let list = |url: String, password: &str| {
        let output = std::process::Command::new("curl")
            .args(["-s", "--cacert", &ca_arg, "--ssl-reqd", "-u"])
            .arg(format!("alice@example.test:{password}"))
            .arg(url)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (code, out) = list(format!("imaps://localhost:{}/", imaps.port()), "alice-pw");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("INBOX") && out.contains("\\Sent"), "{out}");
    let (code, out) = list(format!("imap://localhost:{}/", imap.port()), "alice-pw");
    assert_eq!(code, Some(0), "{out}");
    let started = Instant::now();
    for _ in 0..3 {
        let (code, _) = list(format!("imaps://localhost:{}/", imaps.port()), "wrong");
        assert_eq!(code, Some(67), "login denied");
    }
    // 0.5 s + 1 s + 2 s of brakes.
    assert!(
        started.elapsed() >= Duration::from_millis(3000),
        "{:?}",
        started.elapsed()
    );
    role.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn mutt_in_batch_mode_sends_and_files_its_copy_over_imap() {
    let test = test_config(Environment::Development);
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    let imaps = role.addr("imaps");
    let submissions = role.addr("submissions");
    let ca = test.data_dir().join("tls/ca.pem");
    let home = tempfile::tempdir().unwrap();
    let muttrc = home.path().join("muttrc");
    std::fs::write(
        &muttrc,
        format!(
            "set ssl_ca_certificates_file = \"{ca}\"\n\
             set folder = \"imaps://alice%40example.test@localhost:{imaps}/\"\n\
             set imap_pass = \"alice-pw\"\n\
             set smtp_url = \"smtps://alice%40example.test@localhost:{submissions}/\"\n\
             set smtp_pass = \"alice-pw\"\n\
             set from = \"alice@example.test\"\n\
             set record = \"=Sent\"\n\
             set copy = yes\n",
            ca = ca.display(),
            imaps = imaps.port(),
            submissions = submissions.port(),
        ),
    )
    .unwrap();
    let output = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new("mutt")
            .args(["-n", "-F"])
            .arg(&muttrc)
            .args(["-s", "Sent from mutt", "bob@example.test"])
            .env("HOME", home.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"Hello Bob, from mutt.\n")
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    let received = support::inbox(&test, "bob@example.test", "INBOX").await;
    assert_eq!(received.len(), 1, "{received:?}");
    assert!(
        received[0].contains("Subject: Sent from mutt"),
        "{}",
        received[0]
    );
    assert!(received[0].contains("Hello Bob, from mutt."));
    // mutt's copy, filed with APPEND over IMAP.
    let sent = support::inbox(&test, "alice@example.test", "Sent").await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].contains("Subject: Sent from mutt"), "{}", sent[0]);
    role.stop().await.unwrap();
}
