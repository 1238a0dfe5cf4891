//! PostgreSQL protocol framing for the proxy: a message is a type byte, a length (which counts
//! itself) and a body. The proxy reads headers and copies most bodies straight through; it only
//! buffers the bodies it has to look at.

use bytes::{BufMut, BytesMut};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
};

/// Anything a connection runs over: TCP, or TLS on TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}
pub type BoxIo = Box<dyn Io>;

pub type Reader = tokio::io::BufReader<tokio::io::ReadHalf<BoxIo>>;
pub type Writer = tokio::io::BufWriter<tokio::io::WriteHalf<BoxIo>>;

/// Splits a stream into a buffered reader and writer.
pub fn split(io: BoxIo) -> (Reader, Writer) {
    let (read, write) = tokio::io::split(io);
    (
        tokio::io::BufReader::with_capacity(16 * 1024, read),
        tokio::io::BufWriter::with_capacity(16 * 1024, write),
    )
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// A message's type and body length; refuses lengths over `max`.
pub async fn read_header<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<(u8, usize)> {
    let tag = reader.read_u8().await?;
    let length = reader.read_i32().await?;
    let body = usize::try_from(length)
        .ok()
        .and_then(|l| l.checked_sub(4))
        .ok_or_else(|| invalid(format!("message length {length}")))?;
    if body > max {
        return Err(invalid(format!(
            "a {body}-byte message is over the {max}-byte limit"
        )));
    }
    Ok((tag, body))
}

pub async fn read_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    length: usize,
) -> std::io::Result<Vec<u8>> {
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await?;
    Ok(body)
}

/// Reads one whole message (for the proxy's own exchanges, never for relayed data).
pub async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<(u8, Vec<u8>)> {
    let (tag, length) = read_header(reader, max).await?;
    Ok((tag, read_body(reader, length).await?))
}

/// Copies a body of `length` bytes from `reader` to `writer` through the reader's buffer.
pub async fn copy_body<R, W>(
    reader: &mut R,
    writer: &mut W,
    mut length: usize,
) -> std::io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while length > 0 {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let take = chunk.len().min(length);
        writer.write_all(&chunk[..take]).await?;
        reader.consume(take);
        length -= take;
    }
    Ok(())
}

pub async fn write_header<W: AsyncWrite + Unpin>(
    writer: &mut W,
    tag: u8,
    body_length: usize,
) -> std::io::Result<()> {
    let length = i32::try_from(body_length + 4).map_err(|_| invalid("too long".into()))?;
    writer.write_u8(tag).await?;
    writer.write_i32(length).await
}

/// Appends a message with its header to `out`.
pub fn message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    body(out);
    let length = i32::try_from(out.len() - at).unwrap_or(i32::MAX);
    out[at..at + 4].copy_from_slice(&length.to_be_bytes());
}

pub fn put_cstr(out: &mut BytesMut, text: &str) {
    out.put_slice(text.as_bytes());
    out.put_u8(0);
}

/// An ErrorResponse (severity `ERROR` or `FATAL`).
pub fn error_response(out: &mut BytesMut, severity: &str, code: &str, text: &str) {
    message(out, b'E', |b| {
        b.put_u8(b'S');
        put_cstr(b, severity);
        b.put_u8(b'V');
        put_cstr(b, severity);
        b.put_u8(b'C');
        put_cstr(b, code);
        b.put_u8(b'M');
        put_cstr(b, text);
        b.put_u8(0);
    });
}

pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    message(out, b'Z', |b| b.put_u8(status));
}

pub fn command_complete(out: &mut BytesMut, tag: &str) {
    message(out, b'C', |b| put_cstr(b, tag));
}

pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    message(out, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

/// The NUL-terminated string at `*at` in `body`, moving past it.
pub fn cstr<'a>(body: &'a [u8], at: &mut usize) -> Option<&'a str> {
    let rest = body.get(*at..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    let text = std::str::from_utf8(&rest[..end]).ok()?;
    *at += end + 1;
    Some(text)
}

/// An ErrorResponse's SQLSTATE and message.
pub fn parse_error(body: &[u8]) -> (String, String) {
    let mut code = String::from("XX000");
    let mut text = String::new();
    let mut at = 0;
    while let Some(&field) = body.get(at) {
        if field == 0 {
            break;
        }
        at += 1;
        let Some(value) = cstr(body, &mut at) else {
            break;
        };
        match field {
            b'C' => code = value.to_owned(),
            b'M' => text = value.to_owned(),
            _ => {}
        }
    }
    (code, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_their_length_and_errors_parse_back() {
        let mut out = BytesMut::new();
        error_response(&mut out, "ERROR", "42501", "permission denied");
        assert_eq!(out[0], b'E');
        let length = i32::from_be_bytes([out[1], out[2], out[3], out[4]]);
        assert_eq!(length as usize, out.len() - 1);
        let (code, text) = parse_error(&out[5..]);
        assert_eq!(
            (code.as_str(), text.as_str()),
            ("42501", "permission denied")
        );
    }
}
