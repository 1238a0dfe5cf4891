//! What every mail listener needs around a connection: one stream type for plaintext and TLS,
//! a line reader that never holds more than it was allowed, and a cap on connections from one
//! client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader,
    BufWriter, ReadHalf, WriteHalf,
};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A client connection, plaintext or inside TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}
pub type BoxIo = Box<dyn Io>;

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
        if let Some(at) = memchr::memchr(b'\n', window) {
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

/// A connection accepted for a listener: no Nagle delay (replies are small and come in
/// turns), and for an implicit-TLS port the handshake done within `timeout`. `None` when the
/// handshake fails or the port needs TLS and there is none; `Some((io, secure))` otherwise.
pub async fn open(
    stream: TcpStream,
    implicit_tls: bool,
    tls: Option<&tokio_rustls::TlsAcceptor>,
    timeout: Duration,
) -> Option<(BoxIo, bool)> {
    let _ = stream.set_nodelay(true);
    if !implicit_tls {
        return Some((Box::new(stream), false));
    }
    match tokio::time::timeout(timeout, tls?.accept(stream)).await {
        Ok(Ok(stream)) => Some((Box::new(stream), true)),
        _ => None,
    }
}

/// A line-oriented connection (SMTP, POP3): buffered both ways, replies flushed once nothing
/// more is pipelined.
pub struct Conn {
    pub reader: BufReader<ReadHalf<BoxIo>>,
    pub writer: BufWriter<WriteHalf<BoxIo>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

impl Conn {
    pub fn new(io: BoxIo) -> Self {
        let (read, write) = tokio::io::split(io);
        Self {
            reader: BufReader::with_capacity(16 * 1024, read),
            writer: BufWriter::with_capacity(64 * 1024, write),
        }
    }

    pub async fn reply(&mut self, text: &str) -> std::io::Result<()> {
        self.writer.write_all(text.as_bytes()).await?;
        // Pipelined commands waiting: their replies go out together.
        if self.reader.buffer().is_empty() {
            self.writer.flush().await?;
        }
        Ok(())
    }

    /// The stream again, for a STARTTLS handshake. Whatever the client pipelined after the
    /// command is dropped with the plaintext reader: only what comes inside TLS counts.
    pub fn into_io(self) -> BoxIo {
        self.reader.into_inner().unsplit(self.writer.into_inner())
    }
}

/// Memory for messages being received (SMTP DATA, IMAP literals), shared by every session of
/// every protocol, in [`BUDGET_UNIT`] pieces: a thousand connections sending large messages
/// slowly cannot take more than this.
#[derive(Debug, Clone)]
pub struct Budget(Arc<Semaphore>);

/// Memory for messages being received, all sessions of every protocol together (SMTP answers
/// 452 4.3.1 when it runs out; IMAP waits, then ends the connection).
pub const MESSAGE_MEMORY: usize = 512 * 1024 * 1024;

/// The budget's granularity.
pub const BUDGET_UNIT: usize = 64 * 1024;

impl Budget {
    pub fn new(bytes: usize) -> Self {
        Self(Arc::new(Semaphore::new((bytes / BUDGET_UNIT).max(1))))
    }

    /// Adds units to `held` until it covers `bytes`, waiting up to `wait` for each; `false`
    /// when the budget stayed spent that long.
    pub async fn grow(
        &self,
        held: &mut Vec<OwnedSemaphorePermit>,
        bytes: usize,
        wait: Duration,
    ) -> bool {
        while held.len() * BUDGET_UNIT < bytes {
            let semaphore = Arc::clone(&self.0);
            match tokio::time::timeout(wait, semaphore.acquire_owned()).await {
                Ok(Ok(permit)) => held.push(permit),
                _ => return false,
            }
        }
        true
    }
}

/// Connections open per client address, with a maximum.
#[derive(Debug)]
pub struct PerIp {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a connection from `ip`; the slot is released when dropped. `admitted` is false
    /// when `ip` already has its maximum open.
    pub fn enter(&self, ip: IpAddr) -> Slot<'_> {
        let admitted = self
            .open
            .lock()
            .map(|mut open| {
                let count = open.entry(ip).or_insert(0);
                *count += 1;
                *count <= self.max
            })
            .unwrap_or(false);
        Slot {
            per_ip: self,
            ip,
            admitted,
        }
    }
}

/// One connection's place in [`PerIp`].
#[derive(Debug)]
pub struct Slot<'a> {
    per_ip: &'a PerIp,
    ip: IpAddr,
    pub admitted: bool,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Ok(mut open) = self.per_ip.open.lock()
            && let Some(count) = open.get_mut(&self.ip)
        {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_address_and_released() {
        let per_ip = PerIp::new(2);
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        let other: IpAddr = "192.0.2.8".parse().expect("ip");
        let first = per_ip.enter(ip);
        let second = per_ip.enter(ip);
        assert!(first.admitted && second.admitted);
        assert!(!per_ip.enter(ip).admitted);
        assert!(per_ip.enter(other).admitted);
        drop(second);
        assert!(per_ip.enter(ip).admitted);
    }
}
