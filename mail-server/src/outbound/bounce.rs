//! Delivery status notifications (RFC 3464): what the sender of an undeliverable message gets,
//! from the null sender `<>`.

use crate::message::rfc5322_date;

/// A `multipart/report` telling `sender` that `recipient` could not be reached.
pub fn report(
    hostname: &str,
    sender: &str,
    recipient: &str,
    diagnostic: &str,
    arrival: i64,
    original: &[u8],
) -> Vec<u8> {
    let now = common::clock::unix_now();
    let boundary = format!("quartet-report-{now}-{}", original.len());
    // Headers of the original only: the body may be large and is the sender's anyway.
    let headers_end = original
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(original.len(), |at| at + 2);
    let headers = String::from_utf8_lossy(&original[..headers_end]);
    let status = status_of(diagnostic);
    let diagnostic = diagnostic.replace(['\r', '\n'], " ");
    format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{sender}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Message-ID: <{now}.bounce@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\"\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is the mail system at {hostname}.\r\n\
         \r\n\
         Your message could not be delivered to <{recipient}>:\r\n\
         {diagnostic}\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {hostname}\r\n\
         Arrival-Date: {arrival}\r\n\
         \r\n\
         Final-Recipient: rfc822; {recipient}\r\n\
         Action: failed\r\n\
         Status: {status}\r\n\
         Diagnostic-Code: smtp; {diagnostic}\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n\
         {headers}\
         \r\n\
         --{boundary}--\r\n",
        date = rfc5322_date(now),
        arrival = rfc5322_date(arrival),
    )
    .into_bytes()
}

/// The enhanced status code in a diagnostic (`550 5.1.1 …` → `5.1.1`), else a generic one.
fn status_of(diagnostic: &str) -> String {
    diagnostic
        .split_whitespace()
        .find(|word| {
            let parts: Vec<&str> = word.split('.').collect();
            parts.len() == 3
                && matches!(parts[0], "4" | "5")
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|code| format!("5{}", &code[1..]))
        .unwrap_or_else(|| "5.0.0".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_carries_status_and_the_original_headers() {
        let report = report(
            "mx.example.test",
            "ann@example.test",
            "bob@far.test",
            "550 5.1.1 no such user",
            0,
            b"Subject: hi\r\nMessage-ID: <a@b>\r\n\r\nsecret body\r\n",
        );
        let text = String::from_utf8(report).expect("utf8");
        assert!(text.contains("Status: 5.1.1\r\n"), "{text}");
        assert!(text.contains("Final-Recipient: rfc822; bob@far.test"));
        assert!(text.contains("Subject: hi\r\nMessage-ID: <a@b>\r\n"));
        assert!(!text.contains("secret body"));
        assert!(text.contains("report-type=delivery-status"));
        let parsed = mail_parser::MessageParser::default()
            .parse(text.as_bytes())
            .expect("parses");
        assert_eq!(
            parsed.subject(),
            Some("Undelivered Mail Returned to Sender")
        );
    }
}
