//! What the mail-server tests share: Python's smtplib as the client, and a look into the
//! store.

#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::Environment;
use common::testing::TestConfig;
use mail_server::store::Store;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Runs a Python script (smtplib) with the given arguments; its stdout and whether it passed.
pub fn python(script: &str, args: &[String]) -> (bool, String) {
    let output = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .args(args)
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
}

/// Sends one message with smtplib and prints each recipient's refusal, or "sent".
pub const SEND: &str = r#"
import smtplib, ssl, sys
port, mode, user, password, sender = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
ca = sys.argv[6]
recipients = sys.argv[7].split(",")
body = sys.argv[8] if len(sys.argv) > 8 else "Subject: Hello\r\nMessage-ID: <hello@test>\r\n\r\nHi there.\r\n"
ctx = ssl.create_default_context(cafile=ca)
if mode == "ssl":
    smtp = smtplib.SMTP_SSL("localhost", int(port), context=ctx, timeout=10)
else:
    smtp = smtplib.SMTP("127.0.0.1", int(port), timeout=10)
    smtp.ehlo("client.test")
    if mode == "starttls":
        smtp.starttls(context=ctx)
        smtp.ehlo("client.test")
try:
    if user:
        smtp.login(user, password)
    refused = smtp.sendmail(sender, recipients, body)
    print("sent", sorted(refused.items()))
except smtplib.SMTPRecipientsRefused as e:
    print("refused", sorted((k, v[0]) for k, v in e.recipients.items()))
except smtplib.SMTPSenderRefused as e:
    print("sender refused", e.smtp_code)
except smtplib.SMTPAuthenticationError as e:
    print("auth failed", e.smtp_code)
except smtplib.SMTPDataError as e:
    print("data refused", e.smtp_code)
except smtplib.SMTPNotSupportedError as e:
    print("not supported", e)
smtp.close()
"#;

#[allow(clippy::too_many_arguments)]
pub fn send(
    port: SocketAddr,
    mode: &str,
    login: Option<(&str, &str)>,
    from: &str,
    to: &[&str],
    ca: &Path,
    body: Option<&str>,
) -> String {
    let (user, password) = login.unwrap_or(("", ""));
    let mut args = vec![
        port.port().to_string(),
        mode.to_owned(),
        user.to_owned(),
        password.to_owned(),
        from.to_owned(),
        ca.display().to_string(),
        to.join(","),
    ];
    if let Some(body) = body {
        args.push(body.to_owned());
    }
    let (_, out) = python(SEND, &args);
    out.trim().to_owned()
}

pub async fn inbox(test: &TestConfig, account: &str, mailbox: &str) -> Vec<String> {
    let store = Store::open(&test.data_dir().join("mail")).await.unwrap();
    let messages = store.messages(account, mailbox).await.unwrap();
    store.close().await;
    messages
        .into_iter()
        .map(|m| String::from_utf8_lossy(&m.raw).into_owned())
        .collect()
}

/// What the sink received: envelope sender, recipient, message.
pub type Received = Arc<Mutex<Vec<(String, String, String)>>>;

/// A minimal SMTP server: `temp…@` recipients get 451, `perm…@` 550, the rest are taken.
pub async fn sink() -> (std::net::SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let store = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read);
                let _ = write.write_all(b"220 sink.test ESMTP\r\n").await;
                let (mut from, mut to) = (String::new(), String::new());
                let mut line = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                        b"250 sink.test\r\n"
                    } else if upper.starts_with("MAIL FROM:") {
                        from = line[10..].trim().trim_matches(['<', '>']).to_owned();
                        b"250 2.1.0 ok\r\n"
                    } else if upper.starts_with("RCPT TO:") {
                        to = line[8..].trim().trim_matches(['<', '>']).to_owned();
                        if to.starts_with("temp") {
                            b"451 4.3.0 try again later\r\n"
                        } else if to.starts_with("perm") {
                            b"550 5.1.1 no such user here\r\n"
                        } else {
                            b"250 2.1.5 ok\r\n"
                        }
                    } else if upper.starts_with("DATA") {
                        let _ = write.write_all(b"354 go\r\n").await;
                        let mut message = String::new();
                        loop {
                            line.clear();
                            if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == ".\r\n" {
                                break;
                            }
                            message.push_str(&line);
                        }
                        store
                            .lock()
                            .unwrap()
                            .push((from.clone(), to.clone(), message));
                        b"250 2.0.0 taken\r\n"
                    } else if upper.starts_with("QUIT") {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, received)
}

/// A DNS answer the test server gives.
#[derive(Debug, Clone)]
pub enum Answer {
    Mx(u16, &'static str),
    A([u8; 4]),
}

/// A minimal DNS server on UDP: `records` by (name, type: 15 MX, 1 A), names in `missing`
/// answer NXDOMAIN, anything else an empty NOERROR.
pub async fn dns(
    records: Vec<(&'static str, u16, Answer)>,
    missing: Vec<&'static str>,
) -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((len, peer)) = socket.recv_from(&mut buf).await {
            let query = &buf[..len];
            if len < 12 {
                continue;
            }
            // The question: labels, then type and class.
            let mut at = 12;
            let mut labels = Vec::new();
            while at < len && query[at] != 0 {
                let size = query[at] as usize;
                labels.push(String::from_utf8_lossy(&query[at + 1..at + 1 + size]).to_lowercase());
                at += 1 + size;
            }
            let name = labels.join(".");
            let question_end = at + 5;
            let qtype = u16::from_be_bytes([query[at + 1], query[at + 2]]);
            let answers: Vec<&Answer> = records
                .iter()
                .filter(|(n, t, _)| *n == name && *t == qtype)
                .map(|(_, _, a)| a)
                .collect();
            let nxdomain = missing.contains(&name.as_str());
            let mut out = Vec::new();
            out.extend_from_slice(&query[..2]);
            out.extend_from_slice(if nxdomain {
                &[0x81, 0x83]
            } else {
                &[0x81, 0x80]
            });
            out.extend_from_slice(&[0, 1]);
            out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0]);
            out.extend_from_slice(&query[12..question_end]);
            for answer in answers {
                out.extend_from_slice(&[0xc0, 0x0c]);
                let rdata = match answer {
                    Answer::Mx(preference, exchange) => {
                        let mut rdata = preference.to_be_bytes().to_vec();
                        for label in exchange.split('.').filter(|l| !l.is_empty()) {
                            rdata.push(label.len() as u8);
                            rdata.extend_from_slice(label.as_bytes());
                        }
                        rdata.push(0);
                        out.extend_from_slice(&15u16.to_be_bytes());
                        rdata
                    }
                    Answer::A(ip) => {
                        out.extend_from_slice(&1u16.to_be_bytes());
                        ip.to_vec()
                    }
                };
                out.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
                out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
                out.extend_from_slice(&rdata);
            }
            let _ = socket.send_to(&out, peer).await;
        }
    });
    addr
}

pub const MULTIPART: &str = "From: Carol <carol@remote.test>\r\n\
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
pub fn deliver(smtp: SocketAddr, ca: &std::path::Path, count: usize) {
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
pub const IMAPLIB_SESSION: &str = r#"
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

/// Two accounts on the local domains `localhost` and `example.test`: alice (`alice-pw`) and
/// bob (`bob-pw`), with plain passwords (development).
pub const ACCOUNTS: &str = r#"
[mail]
domains = ["localhost", "example.test"]

[[mail.accounts]]
address = "alice@example.test"
password = "alice-pw"

[[mail.accounts]]
address = "bob@example.test"
password = "bob-pw"
"#;

/// A configuration in `environment` with [`ACCOUNTS`] and `extra` TOML.
pub fn test_config(environment: Environment, extra: &str) -> TestConfig {
    let test = TestConfig::new(environment);
    std::fs::write(
        test.config_dir().join("default.toml"),
        format!("{ACCOUNTS}\n{extra}"),
    )
    .unwrap();
    test
}
