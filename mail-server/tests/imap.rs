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
use support::{IMAPLIB_SESSION, deliver, python, send, test_config};

#[tokio::test(flavor = "multi_thread")]
async fn imaplib_runs_a_whole_client_session() {
    let test = test_config(Environment::Development, "");
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

    /// Logged in as alice with INBOX selected; the SELECT's lines.
    fn alice_in_inbox(addr: SocketAddr) -> (Self, Vec<String>) {
        let mut raw = Self::connect(addr);
        let login = raw.command("a1", "LOGIN alice@example.test alice-pw");
        assert!(login.last().unwrap().starts_with("a1 OK"), "{login:?}");
        let select = raw.command("a2", "SELECT INBOX");
        assert!(select.last().unwrap().starts_with("a2 OK"), "{select:?}");
        (raw, select)
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
    let test = test_config(Environment::Development, "");
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    let smtp = role.addr("smtp");
    let imap = role.addr("imap");
    let ca = test.data_dir().join("tls/ca.pem");
    tokio::task::spawn_blocking(move || {
        deliver(smtp, &ca, 1);
        let (mut first, select) = Raw::alice_in_inbox(imap);
        assert!(select.iter().any(|l| l == "* 2 EXISTS\r\n"), "{select:?}");
        let (mut second, _) = Raw::alice_in_inbox(imap);

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

        // A large literal (memory from the shared budget while it arrives).
        let big = format!("Subject: big\r\n\r\n{}\r\n", "y".repeat(300_000));
        let appended = first.command("a5b", &format!("APPEND INBOX {{{}+}}\r\n{big}", big.len()));
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
    let test = test_config(Environment::Development, "");
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

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_changes_limits_and_refusals() {
    let test = test_config(Environment::Development, "").set("mail.max_message_bytes", "100000");
    let role = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    let smtp = role.addr("smtp");
    let imap = role.addr("imap");
    let ca = test.data_dir().join("tls/ca.pem");
    tokio::task::spawn_blocking(move || {
        deliver(smtp, &ca, 1);
        let (mut first, _) = Raw::alice_in_inbox(imap);
        let (mut second, _) = Raw::alice_in_inbox(imap);
        let ok = |lines: &[String], tag: &str| {
            assert!(
                lines.last().unwrap().starts_with(&format!("{tag} OK")),
                "{lines:?}"
            );
        };

        // Flags change on the store's current flags: one session's \Flagged survives the
        // other's STORE made from an older view.
        ok(
            &second.command("c1", "STORE 1 +FLAGS.SILENT (\\Flagged)"),
            "c1",
        );
        let stored = first.command("c2", "STORE 1 +FLAGS (\\Answered)");
        assert!(
            stored
                .iter()
                .any(|l| l.contains("\\Flagged") && l.contains("\\Answered")),
            "{stored:?}"
        );

        // EXPUNGE removes what is \Deleted now, not what the session last saw.
        ok(
            &second.command("d1", "STORE 1 +FLAGS.SILENT (\\Deleted)"),
            "d1",
        );
        let noop = first.command("d2", "NOOP");
        assert!(noop.iter().any(|l| l.contains("\\Deleted")), "{noop:?}");
        ok(
            &second.command("d3", "STORE 1 -FLAGS.SILENT (\\Deleted)"),
            "d3",
        );
        let expunged = first.command("d4", "EXPUNGE");
        assert!(
            !expunged
                .iter()
                .any(|l| l.ends_with("EXPUNGE\r\n") && l.starts_with("* ")),
            "{expunged:?}"
        );
        let status = first.command("d5", "STATUS INBOX (MESSAGES)");
        assert!(status[0].contains("MESSAGES 2"), "{status:?}");

        // \Recent and unknown \Flags are not the client's to set.
        let bad = first.command("e1", "STORE 1 +FLAGS (\\Recent)");
        assert!(bad.last().unwrap().starts_with("e1 BAD"), "{bad:?}");
        let bad = first.command("e2", "APPEND INBOX (\\Bogus) {3+}\r\nx\r\n");
        assert!(bad.last().unwrap().starts_with("e2 BAD"), "{bad:?}");

        // A literal over mail.max_message_bytes is refused before it is sent.
        first.send("e3 APPEND INBOX {200000}\r\n");
        let refused = first.line();
        assert!(refused.starts_with("e3 BAD"), "{refused}");

        // A mailbox made again gets a new UIDVALIDITY, even within the same second.
        let validity = |raw: &mut Raw, tag: &str| {
            let status = raw.command(tag, "STATUS Again (UIDVALIDITY)");
            status[0].clone()
        };
        ok(&first.command("f1", "CREATE Again"), "f1");
        let before = validity(&mut first, "f2");
        ok(&first.command("f3", "DELETE Again"), "f3");
        ok(&first.command("f4", "CREATE Again"), "f4");
        let after = validity(&mut first, "f5");
        assert_ne!(before, after);

        // LIST patterns: many wildcards answer at once; an over-long one is refused.
        let started = Instant::now();
        let pattern = format!("{}X", "*%".repeat(300));
        ok(
            &first.command("g1", &format!("LIST \"\" \"{pattern}\"")),
            "g1",
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        let long = first.command("g2", &format!("LIST \"\" \"{}\"", "*".repeat(2000)));
        assert!(long.last().unwrap().starts_with("g2 BAD"), "{long:?}");

        // Sequence sets repeated many times cost one range.
        let many = vec!["1:*"; 20_000].join(",");
        let fetched = first.command("g3", &format!("FETCH {many} (UID)"));
        assert_eq!(fetched.iter().filter(|l| l.starts_with("* ")).count(), 2);

        // A header longer than the first bytes read for header fetches is read whole.
        let long = format!(
            "X-Long: {}\r\nSubject: long header\r\n\r\nbody\r\n",
            "a".repeat(20_000)
        );
        let appended = first.command("k1", &format!("APPEND INBOX {{{}+}}\r\n{long}", long.len()));
        ok(&appended, "k1");
        let fetched = first.command(
            "k2",
            "FETCH * (ENVELOPE BODY.PEEK[HEADER.FIELDS (SUBJECT)])",
        );
        assert!(
            fetched.iter().any(|l| l == "Subject: long header\r\n"),
            "{fetched:?}"
        );
        assert!(fetched[0].contains("\"long header\""), "{:?}", fetched[0]);

        // AUTHENTICATE PLAIN, with the response in the command (SASL-IR) and after a "+".
        let plain = "AGFsaWNlQGV4YW1wbGUudGVzdABhbGljZS1wdw=="; // \0alice@example.test\0alice-pw
        let mut third = Raw::connect(imap);
        ok(
            &third.command("i1", &format!("AUTHENTICATE PLAIN {plain}")),
            "i1",
        );
        let mut fourth = Raw::connect(imap);
        fourth.send("j1 AUTHENTICATE PLAIN\r\n");
        assert!(fourth.line().starts_with("+"));
        fourth.send(&format!("{plain}\r\n"));
        ok(&fourth.until("j1"), "j1");
        // UID EXPUNGE removes only the \Deleted messages in its set; CHECK, RFC822.HEADER,
        // UNSELECT.
        ok(&fourth.command("j2", "SELECT INBOX"), "j2");
        ok(
            &fourth.command("j3", "STORE 1:* +FLAGS.SILENT (\\Deleted)"),
            "j3",
        );
        let uids = fourth.command("j4", "UID SEARCH ALL");
        let uids: Vec<String> = uids[0]
            .trim_end()
            .split(' ')
            .skip(2)
            .map(str::to_owned)
            .collect();
        assert_eq!(uids.len(), 3, "{uids:?}");
        let expunged = fourth.command("j5", &format!("UID EXPUNGE {}", uids[1]));
        assert_eq!(expunged[0], "* 2 EXPUNGE\r\n", "{expunged:?}");
        ok(&fourth.command("j6", "CHECK"), "j6");
        let header = fourth.command("j7", "FETCH 1 (RFC822.HEADER)");
        assert!(header[0].contains("RFC822.HEADER {"), "{header:?}");
        ok(&fourth.command("j8", "UNSELECT"), "j8");
        let status = fourth.command("j9", "STATUS INBOX (MESSAGES)");
        assert!(
            status[0].contains("MESSAGES 2"),
            "UNSELECT expunges nothing: {status:?}"
        );

        // Before login, a literal is not something to hold: past 64 KiB the connection ends.
        let mut stranger = Raw::connect(imap);
        stranger.send("h1 LOGIN {90000}\r\n");
        assert!(stranger.line().starts_with("+ "));
        let _ = stranger.writer.write_all(&vec![b'x'; 90_000]);
        let bye = stranger.line();
        assert!(bye.starts_with("* BYE"), "{bye}");
    })
    .await
    .unwrap();
    role.stop().await.unwrap();
}
