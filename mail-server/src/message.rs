//! What a received message gets on its way into the store: a `Received` trace header, and its
//! headers read by mail-parser for search (From, To, Subject, Date, Message-ID, attachments).

use crate::store::Metadata;

/// `Received: from HELO (IP) by HOST with PROTOCOL id ID; DATE` (RFC 5321 §4.4).
pub fn received_header(
    helo: &str,
    peer: std::net::IpAddr,
    hostname: &str,
    protocol: &str,
    id: &str,
    recipient: Option<&str>,
) -> String {
    let helo: String = helo
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    let date = rfc5322_date(common::clock::unix_now());
    // The recipient as written by the client: nothing that could end the clause or the line.
    let recipient: Option<String> = recipient.map(|to| {
        to.chars()
            .filter(|c| c.is_ascii_graphic() && !matches!(c, '<' | '>' | ';' | '(' | ')'))
            .take(255)
            .collect()
    });
    match recipient {
        Some(to) => format!(
            "Received: from {helo} ([{peer}])\r\n\tby {hostname} with {protocol} id {id}\r\n\tfor <{to}>; {date}\r\n"
        ),
        None => format!(
            "Received: from {helo} ([{peer}])\r\n\tby {hostname} with {protocol} id {id};\r\n\t{date}\r\n"
        ),
    }
}

/// A date as mail headers write it: `Tue, 24 Nov 2026 10:00:00 +0000`.
pub fn rfc5322_date(unix: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (year, month, day, hour, minute, second) = common::clock::civil(unix);
    let weekday = DAYS[(unix.div_euclid(86_400)).rem_euclid(7) as usize];
    let month = MONTHS[((month - 1).clamp(0, 11)) as usize];
    format!("{weekday}, {day:02} {month} {year} {hour:02}:{minute:02}:{second:02} +0000")
}

/// The headers a message is searched by.
///
/// Only the headers are parsed, unless the message may carry attachments: a message that is
/// one text part, with no Content-Disposition and no file name, has none, and decoding its
/// body (100 KiB or more) only to learn that was about 5 % of such a delivery's time.
pub fn metadata(raw: &[u8]) -> Metadata {
    use mail_parser::MimeHeaders as _;
    let parser = mail_parser::MessageParser::default();
    let Some(message) = parser.parse_headers(raw) else {
        return Metadata::default();
    };
    let one_text_part = message.content_disposition().is_none()
        && message.content_type().is_none_or(|kind| {
            kind.ctype().eq_ignore_ascii_case("text") && kind.attribute("name").is_none()
        });
    let has_attachments = !one_text_part
        && parser
            .parse(raw)
            .is_some_and(|whole| whole.attachment_count() > 0);
    let addresses = |list: Option<&mail_parser::Address<'_>>| {
        list.map(|list| {
            list.iter()
                .filter_map(|addr| addr.address())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|text| !text.is_empty())
    };
    Metadata {
        from: addresses(message.from()),
        to: addresses(message.to()),
        subject: message.subject().map(str::to_owned),
        date: message.date().map(|date| date.to_timestamp()),
        message_id: message.message_id().map(str::to_owned),
        has_attachments,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_metadata() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_000_000),
            "Wed, 18 Nov 2026 11:06:40 +0000"
        );
        let meta = metadata(
            b"From: Ann <ann@example.test>\r\nTo: bob@example.test, cy@example.test\r\n\
              Subject: Hello\r\nMessage-ID: <m1@example.test>\r\n\
              Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n\r\nHi\r\n",
        );
        assert_eq!(meta.from.as_deref(), Some("ann@example.test"));
        assert_eq!(
            meta.to.as_deref(),
            Some("bob@example.test, cy@example.test")
        );
        assert_eq!(meta.subject.as_deref(), Some("Hello"));
        assert_eq!(meta.message_id.as_deref(), Some("m1@example.test"));
        assert!(meta.date.is_some());
        assert!(!meta.has_attachments);
    }

    /// Parsing the headers alone finds attachments exactly where parsing the whole message does.
    #[test]
    fn attachments_are_found_as_a_whole_parse_finds_them() {
        let messages: [&[u8]; 6] = [
            b"Subject: plain\r\n\r\nHi\r\n",
            b"Content-Type: text/plain; charset=utf-8\r\n\r\nHi\r\n",
            b"Content-Type: text/plain; name=\"notes.txt\"\r\n\r\nHi\r\n",
            b"Content-Disposition: attachment; filename=\"a.txt\"\r\n\r\nHi\r\n",
            b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n",
            b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nHi\r\n--b\r\nContent-Type: image/png\r\nContent-Disposition: attachment; filename=\"x.png\"\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0=\r\n--b--\r\n",
        ];
        let mut found = 0;
        for raw in messages {
            let whole = mail_parser::MessageParser::default()
                .parse(raw)
                .is_some_and(|message| message.attachment_count() > 0);
            assert_eq!(
                metadata(raw).has_attachments,
                whole,
                "{}",
                String::from_utf8_lossy(raw)
            );
            found += usize::from(whole);
        }
        assert!(found >= 2, "the multipart and the PDF carry attachments");
    }
}
