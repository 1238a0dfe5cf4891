//! The control socket: how `db-server backup DB FILE` gets a snapshot from a running server.
//!
//! While db-server runs, its database files are its own: their connections use SQLite's
//! `unix-excl` VFS (see `engine::database`), which keeps every other process out of them. So a
//! backup taken by hand while the server runs asks the server, over a Unix socket in the data
//! folder (`data_dir/db/control/socket`, in a folder of mode 0700: whoever may connect may
//! read the database files anyway), and the server answers with a snapshot taken as
//! `GET /db/{name}/backup` takes one.
//!
//! One request per connection. The client sends `backup NAME\n`; the server answers
//! `ok SIZE\n` followed by the snapshot's SIZE bytes and closes, or `error SQLSTATE MESSAGE\n`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::Shutdown;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::engine::backup::ScratchFile;
use crate::engine::{Engine, SqlError, sqlstate};

/// The socket's folder in the engine's folder (`data_dir/db`): only the server's user may
/// enter it, so the socket is never reachable by anyone else, not even while it is created.
pub const SOCKET_DIR: &str = "control";

/// The socket's name in [`SOCKET_DIR`].
pub const SOCKET_NAME: &str = "socket";

/// Where the control socket of the server on engine folder `dir` is.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_DIR).join(SOCKET_NAME)
}

/// A request line is a verb and a database name.
const MAX_REQUEST_BYTES: u64 = 256;

/// How long a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests served at once; more wait to be accepted.
const MAX_CONCURRENT: usize = 2;

/// The longest a snapshot may take to reach its client.
const SEND_TIMEOUT: Duration = Duration::from_secs(600);

/// The bound socket; its file is removed when this is dropped.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ControlSocket {
    /// Binds `dir/control/socket`. The caller holds the folder's lock (`engine::lock_dir`), so a
    /// socket file already there is a crashed server's and is replaced.
    pub fn bind(dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        let folder = dir.join(SOCKET_DIR);
        match std::fs::DirBuilder::new().mode(0o700).create(&folder) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        }
        // Made by an older server or by hand: closed before the socket appears in it.
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o700))?;
        let path = socket_path(dir);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        let listener = UnixListener::bind(&path)?;
        Ok(Self { listener, path })
    }

    /// Serves requests until shutdown begins. Requests under way are tracked by `shutdown`,
    /// so the role finishes them before it closes its databases.
    pub async fn serve(self, engine: Arc<Engine>, shutdown: Shutdown) {
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => return,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let stream = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        tracing::warn!(error = %err, "control socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let engine = Arc::clone(&engine);
            shutdown.spawn(async move {
                if let Err(err) = answer(stream, &engine).await {
                    tracing::warn!(error = %err, "control socket: request failed");
                }
                drop(permit);
            });
        }
    }
}

/// Reads one request and answers it.
async fn answer(stream: UnixStream, engine: &Engine) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let request = tokio::time::timeout(
        REQUEST_TIMEOUT,
        BufReader::new(read)
            .take(MAX_REQUEST_BYTES)
            .read_line(&mut line),
    )
    .await;
    let database = match request {
        Ok(Ok(_)) if line.ends_with('\n') => line.trim_end().strip_prefix("backup "),
        // Bytes that are not UTF-8 are a bad request like any other, answered as one.
        Ok(Err(err)) if err.kind() != std::io::ErrorKind::InvalidData => return Err(err),
        _ => None,
    };
    let database = database.filter(|name| crate::engine::valid_database_name(name));
    let Some(database) = database else {
        let refusal = SqlError::new(
            sqlstate::PROTOCOL_VIOLATION,
            "expected one line: backup DATABASE (a database name)",
        );
        return write.write_all(error_line(&refusal).as_bytes()).await;
    };
    tracing::info!(database, "control socket: backup requested");
    let snapshot = ScratchFile::beside(engine, database, "control");
    if let Err(err) = engine.backup_to(database, snapshot.path()).await {
        return write.write_all(error_line(&err).as_bytes()).await;
    }
    let mut file = tokio::fs::File::open(snapshot.path()).await?;
    let size = file.metadata().await?.len();
    let send = async {
        write.write_all(format!("ok {size}\n").as_bytes()).await?;
        tokio::io::copy(&mut file, &mut write).await?;
        write.shutdown().await
    };
    tokio::time::timeout(SEND_TIMEOUT, send)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

fn error_line(err: &SqlError) -> String {
    format!("error {} {}\n", err.code, err.message.replace('\n', " "))
}

/// Asks the server running on `dir` for a snapshot of `database` and writes it to `dest`
/// (which must not exist), synced to disk. Returns its size.
pub async fn request_backup(dir: &Path, database: &str, dest: &Path) -> Result<u64, SqlError> {
    let path = socket_path(dir);
    let failed = |what: &str, err: std::io::Error| {
        SqlError::new(
            sqlstate::INTERNAL_ERROR,
            format!("{what} ({}): {err}", path.display()),
        )
    };
    let stream = UnixStream::connect(&path).await.map_err(|err| {
        failed(
            "db-server runs on this data folder but its control socket does not answer",
            err,
        )
    })?;
    let (read, mut write) = stream.into_split();
    write
        .write_all(format!("backup {database}\n").as_bytes())
        .await
        .map_err(|err| failed("sending the request", err))?;
    let mut answer = BufReader::new(read);
    let mut status = String::new();
    (&mut answer)
        .take(4096)
        .read_line(&mut status)
        .await
        .map_err(|err| failed("reading the answer", err))?;
    if let Some(refusal) = status.trim_end().strip_prefix("error ") {
        let (code, message) = refusal.split_once(' ').unwrap_or((refusal, ""));
        return Err(SqlError::new(sqlstate::intern(code), message.to_owned()));
    }
    let size = status
        .strip_prefix("ok ")
        .and_then(|size| size.strip_suffix('\n'))
        .and_then(|size| size.parse::<u64>().ok());
    let Some(size) = size else {
        return Err(SqlError::new(
            sqlstate::PROTOCOL_VIOLATION,
            format!("unexpected answer from {}: {status:?}", path.display()),
        ));
    };
    let io = |err: std::io::Error| {
        SqlError::new(
            sqlstate::INTERNAL_ERROR,
            format!("{}: {err}", dest.display()),
        )
    };
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .await
        .map_err(io)?;
    let copied = tokio::io::copy(&mut answer, &mut file).await;
    let synced = match copied {
        Ok(copied) if copied == size => file.sync_all().await.map(|()| size),
        Ok(copied) => Err(std::io::Error::other(format!(
            "the snapshot ended after {copied} of {size} bytes"
        ))),
        Err(err) => Err(err),
    };
    synced.map_err(|err| {
        let _ = std::fs::remove_file(dest);
        io(err)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::tests::{limits, open_snapshot, scratch};
    use crate::engine::value::Value;
    use crate::engine::{Session, check_snapshot};

    #[tokio::test]
    async fn a_running_server_sends_a_checked_snapshot_and_refuses_bad_requests() {
        use sqlx::Connection as _;
        use std::os::unix::fs::PermissionsExt as _;
        let (dir, engine, db) = scratch(&Default::default()).await;
        let mut session = Session::new(Arc::clone(&db), limits());
        for sql in [
            "CREATE TABLE t (n INTEGER)",
            "INSERT INTO t VALUES (1), (2), (3)",
        ] {
            session.execute(sql, &[]).await.expect(sql);
        }
        let engine = Arc::new(engine);
        let socket = ControlSocket::bind(dir.path()).expect("bind");
        let socket_path = socket_path(dir.path());
        let folder = std::fs::metadata(dir.path().join(SOCKET_DIR)).expect("folder");
        assert_eq!(
            folder.permissions().mode() & 0o777,
            0o700,
            "only the server's user may reach the socket"
        );
        let shutdown = Shutdown::new();
        let served = tokio::spawn(socket.serve(Arc::clone(&engine), shutdown.clone()));

        // A snapshot, written by the client, holding what was committed.
        let copy = dir.path().join("copy.db");
        let size = request_backup(dir.path(), "quartet", &copy)
            .await
            .expect("backup");
        assert_eq!(size, std::fs::metadata(&copy).expect("copy").len());
        check_snapshot(&copy)
            .await
            .expect("the snapshot checks out");
        let mut alone = open_snapshot(&copy).await;
        let sum: i64 = sqlx::query_scalar("SELECT sum(n) FROM t")
            .fetch_one(&mut alone)
            .await
            .expect("sum");
        assert_eq!(sum, 6);
        let _ = alone.close().await;
        let after = session
            .execute("SELECT count(*) FROM t", &[])
            .await
            .expect("the server goes on");
        assert_eq!(after.rows, vec![vec![Value::Integer(3)]]);

        // The server's refusal reaches the client, and nothing is written.
        let nowhere = dir.path().join("nowhere.db");
        let err = request_backup(dir.path(), "nope", &nowhere)
            .await
            .expect_err("no such database");
        assert_eq!(err.code, sqlstate::INVALID_CATALOG_NAME, "{}", err.message);
        assert!(!nowhere.exists());

        // Anything but one request line naming a database is refused with an error line.
        for request in [
            b"hello\n".to_vec(),
            vec![b'x'; 300],
            b"backup ../../etc/passwd\n".to_vec(),
            b"backup \xff\xfe\n".to_vec(),
        ] {
            let mut stream = UnixStream::connect(&socket_path).await.expect("connect");
            stream.write_all(&request).await.expect("send");
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.expect("answer");
            assert!(
                answer.starts_with("error 08P01 "),
                "{request:?}: {answer:?}"
            );
        }

        shutdown.trigger();
        served.await.expect("stopped");
        assert!(
            !socket_path.exists(),
            "the socket file goes with the server"
        );
    }
}
