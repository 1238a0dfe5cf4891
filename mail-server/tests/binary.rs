//! The real `mail-server` binary: every listener bound, health, SMTP greeting on every SMTP
//! port (TLS first on 465), protocol-correct refusals on IMAP and POP3 (issue #6).

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
            imap.starts_with(b"* BYE "),
            "{}",
            String::from_utf8_lossy(&imap)
        );
        let pop3 = read_greeting(addrs["mail pop3"], b"", 512);
        assert!(
            pop3.starts_with(b"-ERR "),
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
            for (name, expected) in [
                ("mail imaps", &b"* BYE "[..]),
                ("mail pop3s", &b"-ERR "[..]),
            ] {
                let mut tls = tls_connect(addrs[name], &ca).await.expect("TLS handshake");
                let mut reply = Vec::new();
                let _ = tls.read_to_end(&mut reply).await;
                assert!(reply.starts_with(expected), "{name}: {reply:?}");
            }
        });
    });
}
