//! Reading lines and the DATA section.
//!
//! Only a line that is exactly `.` followed by CRLF, after a line that ended in CRLF, ends a
//! message. A bare LF is refused (or, when configured, made CRLF) — it never ends anything,
//! so `<LF>.<LF>` or `<CRLF>.<LF>` cannot start a second message inside the first (SMTP
//! smuggling). Lines may be of any length; the message may not exceed its limit.

use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// What to do with a bare LF in a message (`mail.bare_lf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareLf {
    Reject,
    Normalize,
}

/// How the DATA section ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Data {
    /// The message, dot-unstuffed, every line ending in CRLF.
    Complete(Vec<u8>),
    /// It was read to its end but is larger than allowed.
    TooLarge,
    /// A bare LF under `reject`: the rest was not read.
    BareLf,
}

/// Longest piece of a line held at once (longer lines are taken in pieces).
const PIECE: usize = 64 * 1024;

/// Reads up to and including the next LF, or `cap` bytes, whichever comes first; nothing at
/// the end of the stream.
pub async fn read_capped<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    out: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<()> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(());
        }
        let room = cap.saturating_sub(out.len());
        let window = &available[..available.len().min(room)];
        if let Some(at) = window.iter().position(|&b| b == b'\n') {
            out.extend_from_slice(&window[..=at]);
            reader.consume(at + 1);
            return Ok(());
        }
        let taken = window.len();
        out.extend_from_slice(window);
        reader.consume(taken);
        if out.len() >= cap {
            return Ok(());
        }
    }
}

/// Reads the DATA section up to its terminating `.` line.
pub async fn read_data<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max_bytes: usize,
    bare_lf: BareLf,
    idle: Duration,
) -> std::io::Result<Data> {
    let mut message = Vec::new();
    let mut line = Vec::with_capacity(1024);
    let mut line_start = true;
    // Whether the line before ended in a CRLF the client sent (not one made from a bare LF):
    // only then may a `.` line end the message.
    let mut after_crlf = true;
    let mut previous_cr = false;
    let mut too_large = false;
    loop {
        line.clear();
        tokio::time::timeout(idle, read_capped(reader, &mut line, PIECE))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if line.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line_start && after_crlf && line == b".\r\n" {
            break;
        }
        let ends_in_lf = line.last() == Some(&b'\n');
        let mut crlf = false;
        if ends_in_lf {
            crlf = match line.len() {
                1 => previous_cr,
                n => line[n - 2] == b'\r',
            };
            if !crlf {
                match bare_lf {
                    BareLf::Reject => return Ok(Data::BareLf),
                    BareLf::Normalize => {
                        line.pop();
                        line.extend_from_slice(b"\r\n");
                    }
                }
            }
        }
        let content = if line_start && line.first() == Some(&b'.') {
            &line[1..]
        } else {
            &line[..]
        };
        if message.len() + content.len() > max_bytes {
            too_large = true;
            message = Vec::new();
        }
        if !too_large {
            message.extend_from_slice(content);
        }
        previous_cr = line.last() == Some(&b'\r');
        line_start = ends_in_lf;
        after_crlf = crlf;
    }
    Ok(if too_large {
        Data::TooLarge
    } else {
        Data::Complete(message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn data(input: &[u8], bare_lf: BareLf) -> (Data, Vec<u8>) {
        let mut reader = tokio::io::BufReader::new(input);
        let outcome = read_data(&mut reader, 1000, bare_lf, Duration::from_secs(1))
            .await
            .expect("reads");
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut rest)
            .await
            .expect("rest");
        (outcome, rest)
    }

    #[tokio::test]
    async fn only_crlf_dot_crlf_ends_a_message() {
        let (outcome, rest) = data(
            b"Subject: a\r\n\r\n..dot\r\nend\r\n.\r\nQUIT\r\n",
            BareLf::Reject,
        )
        .await;
        assert_eq!(
            outcome,
            Data::Complete(b"Subject: a\r\n\r\n.dot\r\nend\r\n".to_vec())
        );
        assert_eq!(rest, b"QUIT\r\n");
    }

    #[tokio::test]
    async fn smuggling_payloads_leave_one_message() {
        // <LF>.<LF> and <CRLF>.<LF>: under `normalize` they are body text, not an end.
        for payload in [
            &b"a\r\n\n.\nMAIL FROM:<x@evil.test>\r\nb\r\n.\r\n"[..],
            &b"a\r\n.\nMAIL FROM:<x@evil.test>\r\nb\r\n.\r\n"[..],
            &b"a\r\n\r.\r\nMAIL FROM:<x@evil.test>\r\n.\r\n"[..],
            &b"a\n.\r\nMAIL FROM:<x@evil.test>\r\n.\r\n"[..],
        ] {
            let (outcome, rest) = data(payload, BareLf::Normalize).await;
            let Data::Complete(message) = outcome else {
                panic!("{payload:?}: {outcome:?}");
            };
            assert!(message.windows(9).any(|w| w == b"MAIL FROM"), "{message:?}");
            assert!(rest.is_empty());
            // Under `reject`, a bare LF refuses the message.
            if payload.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r') {
                let (outcome, _) = data(payload, BareLf::Reject).await;
                assert_eq!(outcome, Data::BareLf);
            }
        }
    }

    #[tokio::test]
    async fn oversize_is_read_to_its_end() {
        let mut input = Vec::new();
        for _ in 0..100 {
            input.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
        }
        input.extend_from_slice(b".\r\nNOOP\r\n");
        let (outcome, rest) = data(&input, BareLf::Reject).await;
        assert_eq!(outcome, Data::TooLarge);
        assert_eq!(rest, b"NOOP\r\n");
    }
}
