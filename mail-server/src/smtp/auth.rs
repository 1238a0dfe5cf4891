//! AUTH PLAIN and LOGIN exchanges (RFC 4954, 4616); the check itself is [`crate::auth`].

use base64::Engine as _;
use tokio::io::AsyncWriteExt as _;

use super::{Conn, MAX_LINE};
use crate::auth::{B64, Credentials, decode_plain};

async fn read_response(conn: &mut Conn, prompt: &str) -> std::io::Result<Option<String>> {
    conn.reply(prompt).await?;
    conn.writer.flush().await?;
    let mut line = Vec::new();
    crate::connection::read_capped(&mut conn.reader, &mut line, MAX_LINE).await?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let text = String::from_utf8_lossy(&line).trim().to_owned();
    Ok((text != "*").then_some(text))
}

/// Runs the mechanism's exchange; `Err(reply)` when the client cancelled or sent nonsense.
pub(super) async fn read_credentials(
    conn: &mut Conn,
    mechanism: u64,
    initial: String,
) -> std::io::Result<Result<Credentials, &'static str>> {
    const CANCELLED: &str = "501 5.7.0 Authentication cancelled\r\n";
    const MALFORMED: &str = "501 5.5.2 Cannot decode the response\r\n";
    if mechanism == smtp_proto::AUTH_PLAIN {
        let response = if initial.is_empty() {
            match read_response(conn, "334 \r\n").await? {
                Some(text) => text,
                None => return Ok(Err(CANCELLED)),
            }
        } else {
            initial
        };
        return Ok(decode_plain(&response).ok_or(MALFORMED));
    }
    if mechanism == smtp_proto::AUTH_LOGIN {
        let user = if initial.is_empty() {
            match read_response(conn, "334 VXNlcm5hbWU6\r\n").await? {
                Some(text) => text,
                None => return Ok(Err(CANCELLED)),
            }
        } else {
            initial
        };
        let Some(password) = read_response(conn, "334 UGFzc3dvcmQ6\r\n").await? else {
            return Ok(Err(CANCELLED));
        };
        let decode = |text: &str| {
            B64.decode(text)
                .ok()
                .and_then(|raw| String::from_utf8(raw).ok())
        };
        return Ok(match (decode(&user), decode(&password)) {
            (Some(user), Some(password)) => Ok(Credentials { user, password }),
            _ => Err(MALFORMED),
        });
    }
    Ok(Err(
        "504 5.5.4 Mechanism not supported: use PLAIN or LOGIN\r\n",
    ))
}
