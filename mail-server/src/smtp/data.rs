//! Reading lines and the DATA section.
//!
//! Only a line that is exactly `.` followed by CRLF, after a line that ended in CRLF, ends a
//! message. A bare LF or bare CR is refused (or, when configured, made CRLF) — it never ends
//! anything, so `<LF>.<LF>`, `<CRLF>.<LF>` or `<CR>.<CR>` cannot start a second message inside
//! the first, here or at the next server (SMTP smuggling). Lines may be of any length; the
//! message may not exceed its limit, and all sessions together hold at most a [`Budget`].

use std::time::Duration;

use tokio::io::{AsyncRead, BufReader};
use tokio::sync::OwnedSemaphorePermit;

use crate::connection::Budget;

/// What to do with a bare LF in a message (`mail.bare_lf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareLf {
    Reject,
    Normalize,
}

/// How the DATA section ended.
#[derive(Debug)]
pub enum Data {
    /// The message after `prefix`, dot-unstuffed, every line ending in CRLF, and the memory
    /// it holds.
    Complete(Vec<u8>, Vec<OwnedSemaphorePermit>),
    /// It was read to its end but is larger than allowed.
    TooLarge,
    /// It was read to its end, but the server had no memory left for it.
    NoMemory,
    /// A bare LF or CR under `reject`: the rest was not read.
    BareLf,
}

impl PartialEq for Data {
    /// Equal outcomes, and for messages equal bytes (what tests compare).
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Data::Complete(a, _), Data::Complete(b, _)) => a == b,
            (Data::TooLarge, Data::TooLarge)
            | (Data::NoMemory, Data::NoMemory)
            | (Data::BareLf, Data::BareLf) => true,
            _ => false,
        }
    }
}

/// Longest piece of a line held at once (longer lines are taken in pieces).
const PIECE: usize = 64 * 1024;

/// Reads the DATA section up to its terminating `.` line.
pub async fn read_data<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    prefix: Vec<u8>,
    max_bytes: usize,
    bare_lf: BareLf,
    idle: Duration,
    budget: &Budget,
) -> std::io::Result<Data> {
    let mut message = prefix;
    let mut held: Vec<OwnedSemaphorePermit> = Vec::new();
    let mut starved = false;
    let mut line = Vec::with_capacity(1024);
    let mut line_start = true;
    // Whether the line before ended in a CRLF the client sent (not one made from a bare LF):
    // only then may a `.` line end the message.
    let mut after_crlf = true;
    let mut previous_cr = false;
    let mut too_large = false;
    loop {
        line.clear();
        // The idle timer only when the next line is not buffered yet: a timer per line (a
        // clock read and a timer entry) was a tenth of the time spent on 100 KiB messages.
        if memchr::memchr(b'\n', reader.buffer()).is_some() {
            crate::connection::read_capped(reader, &mut line, PIECE).await?;
        } else {
            tokio::time::timeout(
                idle,
                crate::connection::read_capped(reader, &mut line, PIECE),
            )
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        }
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
        // A CR inside the line (not the one before its LF) is a bare CR.
        let body_end = if ends_in_lf {
            line.len().saturating_sub(2)
        } else {
            line.len()
        };
        if line[..body_end].contains(&b'\r') {
            match bare_lf {
                BareLf::Reject => return Ok(Data::BareLf),
                BareLf::Normalize => {
                    let mut fixed = Vec::with_capacity(line.len() + 8);
                    for (at, &byte) in line.iter().enumerate() {
                        fixed.push(byte);
                        if byte == b'\r' && at < body_end && line.get(at + 1) != Some(&b'\n') {
                            fixed.push(b'\n');
                        }
                    }
                    line = fixed;
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
            held.clear();
        }
        if !too_large && !starved {
            // Memory from the shared budget before the message grows past what it holds.
            if !budget
                .grow(&mut held, message.len() + content.len(), idle)
                .await
            {
                starved = true;
                message = Vec::new();
                held.clear();
            }
            if !starved {
                message.extend_from_slice(content);
            }
        }
        previous_cr = line.last() == Some(&b'\r');
        line_start = ends_in_lf;
        after_crlf = crlf;
    }
    Ok(if too_large {
        Data::TooLarge
    } else if starved {
        Data::NoMemory
    } else {
        Data::Complete(message, held)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_silent_mid_message_times_out() {
        use tokio::io::AsyncWriteExt as _;
        let (mut client, server) = tokio::io::duplex(1024);
        // Whole lines already buffered, then nothing: the idle timer still ends it.
        client
            .write_all(b"Subject: x\r\n\r\nline one\r\nline two\r\npart of a l")
            .await
            .expect("write");
        let mut reader = BufReader::new(server);
        let budget = Budget::new(1 << 20);
        let started = std::time::Instant::now();
        let outcome = read_data(
            &mut reader,
            Vec::new(),
            1000,
            BareLf::Reject,
            Duration::from_millis(300),
            &budget,
        )
        .await;
        let Err(err) = outcome else {
            panic!("an error, not a message");
        };
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(client);
    }

    async fn data(input: &[u8], bare_lf: BareLf) -> (Data, Vec<u8>) {
        let mut reader = tokio::io::BufReader::new(input);
        let budget = Budget::new(1 << 20);
        let outcome = read_data(
            &mut reader,
            Vec::new(),
            1000,
            bare_lf,
            Duration::from_secs(1),
            &budget,
        )
        .await
        .expect("reads");
        if let Data::Complete(message, held) = &outcome {
            assert!(
                held.len() * crate::connection::BUDGET_UNIT >= message.len(),
                "memory is accounted"
            );
        }
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
            Data::Complete(b"Subject: a\r\n\r\n.dot\r\nend\r\n".to_vec(), Vec::new())
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
            let Data::Complete(message, _) = outcome else {
                panic!("{payload:?}: {outcome:?}");
            };
            assert!(message.windows(9).any(|w| w == b"MAIL FROM"), "{message:?}");
            assert!(rest.is_empty());
            // Under `reject`, a bare LF or CR refuses the message.
            if payload
                .windows(2)
                .any(|w| (w[1] == b'\n' && w[0] != b'\r') || (w[0] == b'\r' && w[1] != b'\n'))
            {
                let (outcome, _) = data(payload, BareLf::Reject).await;
                assert_eq!(outcome, Data::BareLf);
            }
        }
    }

    #[tokio::test]
    async fn the_shared_memory_budget_refuses_what_does_not_fit() {
        // One 64 KiB unit for everyone, held by another session: a second message waits for
        // it, then is read to its end and refused, and the next command is intact.
        let budget = Budget::new(64 * 1024);
        let mut held = Vec::new();
        assert!(budget.grow(&mut held, 1, Duration::from_secs(1)).await);
        let input = b"Subject: x\r\n\r\nbody\r\n.\r\nNOOP\r\n";
        let mut reader = tokio::io::BufReader::new(&input[..]);
        let outcome = read_data(
            &mut reader,
            Vec::new(),
            1000,
            BareLf::Reject,
            Duration::from_millis(100),
            &budget,
        )
        .await
        .expect("reads");
        assert_eq!(outcome, Data::NoMemory);
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut rest)
            .await
            .expect("rest");
        assert_eq!(rest, b"NOOP\r\n");
        drop(held);
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
