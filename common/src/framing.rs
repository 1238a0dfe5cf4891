//! A guard against HTTP/1.1 request smuggling shapes that hyper tolerates.
//!
//! hyper follows RFC 9112 §6.3 for a request with both `Content-Length` and
//! `Transfer-Encoding`: it drops `Content-Length`, reads the body as chunked and closes the
//! connection afterwards. That is safe, but the request still reaches the application, and a
//! front-end that framed it differently may already have been fooled. We refuse such requests
//! with 400 instead, as nginx does. By the time hyper hands us the request the evidence is gone
//! (the `Content-Length` header is removed), so [`Guarded`] watches the bytes on their way into
//! hyper, follows the message framing (heads, `Content-Length` bodies, chunked bodies) and
//! records which requests on the connection carried both headers; [`flagged`] tells the
//! service.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The framing guard's findings for one connection, shared with the service.
#[derive(Debug, Default)]
pub struct Findings {
    /// Indexes (0-based, in arrival order) of requests with both CL and TE.
    flagged: Mutex<Vec<u64>>,
    /// Requests the service has seen on this connection.
    served: Mutex<u64>,
}

impl Findings {
    /// Called once per request by the service, in order: whether this request was flagged.
    pub fn next_request_flagged(&self) -> bool {
        let index = match self.served.lock() {
            Ok(mut served) => {
                let index = *served;
                *served += 1;
                index
            }
            Err(_) => return false,
        };
        self.flagged
            .lock()
            .is_ok_and(|flagged| flagged.contains(&index))
    }
}

/// Longest request head the guard follows; past it hyper answers 431 anyway.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd(u8),
    Trailers,
    /// Upgraded, CONNECT, malformed or oversized: hyper deals with it; stop following.
    Stopped,
}

/// Follows HTTP/1.1 request framing over the bytes a connection receives.
#[derive(Debug)]
pub struct Framing {
    state: State,
    line: Vec<u8>,
    heads: u64,
    findings: Arc<Findings>,
}

impl Framing {
    pub fn new(findings: Arc<Findings>) -> Self {
        Self {
            state: State::Head,
            line: Vec::new(),
            heads: 0,
            findings,
        }
    }

    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Stopped => return,
                State::Body(remaining) => {
                    let take = (*remaining).min(bytes.len() as u64);
                    *remaining -= take;
                    bytes = &bytes[take as usize..];
                    if *remaining == 0 {
                        self.state = State::Head;
                    }
                }
                State::ChunkData(remaining) => {
                    let take = (*remaining).min(bytes.len() as u64);
                    *remaining -= take;
                    bytes = &bytes[take as usize..];
                    if *remaining == 0 {
                        self.state = State::ChunkDataEnd(2);
                    }
                }
                State::ChunkDataEnd(left) => {
                    let take = (*left as usize).min(bytes.len());
                    *left -= take as u8;
                    bytes = &bytes[take..];
                    if *left == 0 {
                        self.state = State::ChunkSize;
                    }
                }
                State::Head | State::ChunkSize | State::Trailers => {
                    // Accumulate up to the end of the head or line.
                    let (end_marker, limit): (&[u8], usize) = match self.state {
                        State::Head => (b"\r\n\r\n", MAX_HEAD),
                        _ => (b"\r\n", 4096),
                    };
                    let before = self.line.len();
                    self.line.extend_from_slice(bytes);
                    let search_from = before.saturating_sub(end_marker.len() - 1);
                    let found = self.line[search_from..]
                        .windows(end_marker.len())
                        .position(|w| w == end_marker)
                        .map(|i| search_from + i + end_marker.len());
                    match found {
                        None => {
                            if self.line.len() > limit {
                                self.state = State::Stopped;
                            }
                            return;
                        }
                        Some(end) => {
                            let consumed = end - before;
                            bytes = &bytes[consumed..];
                            let text = std::mem::take(&mut self.line);
                            let text = &text[..end];
                            self.state = match self.state {
                                State::Head => self.after_head(text),
                                State::ChunkSize => after_chunk_size(text),
                                _ => {
                                    if text == b"\r\n" {
                                        State::Head
                                    } else {
                                        State::Trailers
                                    }
                                }
                            };
                        }
                    }
                }
            }
        }
    }

    fn after_head(&mut self, head: &[u8]) -> State {
        // Empty lines before a request line are allowed (RFC 9112 §2.2).
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split("\r\n").skip_while(|l| l.is_empty());
        let request_line = lines.next().unwrap_or("");
        let index = self.heads;
        self.heads += 1;
        if request_line.starts_with("CONNECT ") {
            return State::Stopped;
        }
        let (mut lengths, mut chunked, mut te, mut upgrade, mut connection_upgrade) =
            (Vec::new(), false, false, false, false);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => lengths.push(value.to_owned()),
                "transfer-encoding" => {
                    te = true;
                    chunked = value
                        .rsplit(',')
                        .next()
                        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
                }
                "upgrade" => upgrade = true,
                "connection" => {
                    connection_upgrade |= value
                        .split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
                }
                _ => {}
            }
        }
        if te
            && !lengths.is_empty()
            && let Ok(mut flagged) = self.findings.flagged.lock()
        {
            flagged.push(index);
        }
        if upgrade && connection_upgrade {
            return State::Stopped;
        }
        if te {
            return if chunked {
                State::ChunkSize
            } else {
                State::Stopped
            };
        }
        match lengths.first().map(|l| l.parse::<u64>()) {
            None => State::Head,
            Some(Ok(0)) => State::Head,
            Some(Ok(length)) => State::Body(length),
            Some(Err(_)) => State::Stopped,
        }
    }
}

fn after_chunk_size(line: &[u8]) -> State {
    let text = String::from_utf8_lossy(line);
    let size = text.trim_end().split(';').next().unwrap_or("").trim();
    match u64::from_str_radix(size, 16) {
        Ok(0) => State::Trailers,
        Ok(size) => State::ChunkData(size),
        Err(_) => State::Stopped,
    }
}

/// A connection whose incoming bytes pass through [`Framing`] on their way to hyper.
#[derive(Debug)]
pub struct Guarded<IO> {
    inner: IO,
    framing: Framing,
}

impl<IO> Guarded<IO> {
    pub fn new(inner: IO, findings: Arc<Findings>) -> Self {
        Self {
            inner,
            framing: Framing::new(findings),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &result {
            self.framing.feed(&buf.filled()[before..]);
        }
        result
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(input: &[&[u8]]) -> (Vec<u64>, u64) {
        let findings = Arc::new(Findings::default());
        let mut framing = Framing::new(Arc::clone(&findings));
        for piece in input {
            framing.feed(piece);
        }
        let flagged = findings.flagged.lock().unwrap().clone();
        (flagged, framing.heads)
    }

    #[test]
    fn follows_framing_and_flags_cl_with_te() {
        let stream: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nGET /\
            POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
            POST /c HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
            GET /d HTTP/1.1\r\n\r\n";
        // Whole, and split at every possible point.
        assert_eq!(flags(&[stream]), (vec![3], 5));
        for split in 1..stream.len() {
            let (a, b) = stream.split_at(split);
            assert_eq!(flags(&[a, b]), (vec![3], 5), "split at {split}");
        }
    }

    #[test]
    fn stops_following_after_an_upgrade() {
        let stream: &[u8] =
            b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\
            POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(flags(&[stream]), (vec![], 1));
    }
}
