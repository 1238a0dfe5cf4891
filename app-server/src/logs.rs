//! Each app's log: every process's output and app-server's notes about it, one line each with
//! time and process name, in `data_dir/app/logs/{app}.log`. The file is rotated by size
//! (`app.log_max_bytes`, `app.log_files` old files kept), so a chatty app cannot fill the
//! disk, and every line is also offered to whoever follows the log live.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;

/// Lines a live follower may fall behind by before it is told it missed some.
const FOLLOW_BUFFER: usize = 1024;

#[derive(Debug)]
pub struct AppLogs {
    dir: PathBuf,
    max_bytes: u64,
    keep: u32,
    files: tokio::sync::Mutex<HashMap<String, OpenLog>>,
    followers: std::sync::Mutex<HashMap<String, broadcast::Sender<Arc<str>>>>,
}

#[derive(Debug)]
struct OpenLog {
    file: tokio::fs::File,
    size: u64,
}

impl AppLogs {
    pub fn new(dir: PathBuf, max_bytes: u64, keep: u32) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            max_bytes: max_bytes.max(1024),
            keep,
            files: tokio::sync::Mutex::new(HashMap::new()),
            followers: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The current log file of `app`.
    pub fn path(&self, app: &str) -> PathBuf {
        self.dir.join(format!("{app}.log"))
    }

    /// Appends `text` (one or more lines) as said by `process`.
    pub async fn append(&self, app: &str, process: &str, text: &str) {
        let time = timestamp();
        let mut out = String::new();
        for line in text.lines() {
            out.push_str(&format!("{time} {process}: {line}\n"));
        }
        if out.is_empty() {
            return;
        }
        self.write(app, out.as_bytes()).await;
        let sender = self
            .followers
            .lock()
            .ok()
            .and_then(|followers| followers.get(app).cloned());
        if let Some(sender) = sender {
            for line in out.lines() {
                // No receiver left is fine: the log on disk has it.
                let _ = sender.send(Arc::from(line));
            }
        }
    }

    async fn write(&self, app: &str, bytes: &[u8]) {
        let mut files = self.files.lock().await;
        let path = self.path(app);
        if !files.contains_key(app) {
            match open_append(&path).await {
                Ok(log) => {
                    files.insert(app.to_owned(), log);
                }
                Err(err) => {
                    tracing::error!(app, error = %err, path = %path.display(), "cannot open the app's log");
                    return;
                }
            }
        }
        let Some(log) = files.get_mut(app) else {
            return;
        };
        if log.size > 0 && log.size + bytes.len() as u64 > self.max_bytes {
            match self.rotate(&path).await {
                Ok(fresh) => *log = fresh,
                Err(err) => {
                    tracing::error!(app, error = %err, "cannot rotate the app's log");
                }
            }
        }
        match log.file.write_all(bytes).await {
            Ok(()) => log.size += bytes.len() as u64,
            Err(err) => tracing::error!(app, error = %err, "cannot write the app's log"),
        }
    }

    /// `app.log` → `app.log.1` → … → `app.log.{keep}` (the oldest is dropped); a fresh file.
    async fn rotate(&self, path: &Path) -> std::io::Result<OpenLog> {
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
        if self.keep == 0 {
            let _ = tokio::fs::remove_file(path).await;
        } else {
            let _ = tokio::fs::remove_file(numbered(self.keep)).await;
            for n in (1..self.keep).rev() {
                let _ = tokio::fs::rename(numbered(n), numbered(n + 1)).await;
            }
            tokio::fs::rename(path, numbered(1)).await?;
        }
        open_append(path).await
    }

    /// New lines of `app`'s log as they are written.
    pub fn follow(&self, app: &str) -> broadcast::Receiver<Arc<str>> {
        let mut followers = match self.followers.lock() {
            Ok(followers) => followers,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Senders of apps nobody follows any more are dropped here, on the next follow.
        followers.retain(|_, sender| sender.receiver_count() > 0);
        followers
            .entry(app.to_owned())
            .or_insert_with(|| broadcast::channel(FOLLOW_BUFFER).0)
            .subscribe()
    }

    /// Closes and deletes an app's logs (the app was deleted).
    pub async fn remove(&self, app: &str) {
        self.files.lock().await.remove(app);
        let path = self.path(app);
        let _ = tokio::fs::remove_file(&path).await;
        for n in 1..=self.keep {
            let _ = tokio::fs::remove_file(format!("{}.{n}", path.display())).await;
        }
    }

    /// The last `count` lines of `app`'s log (reading only the end of the file).
    pub async fn tail(&self, app: &str, count: usize) -> String {
        let path = self.path(app);
        tokio::task::spawn_blocking(move || last_lines(&path, count))
            .await
            .unwrap_or_default()
    }
}

async fn open_append(path: &Path) -> std::io::Result<OpenLog> {
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    let size = file.metadata().await?.len();
    Ok(OpenLog { file, size })
}

/// Unix seconds with milliseconds: sortable, and what `date -d @…` reads.
fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    format!("{secs:.3}")
}

/// The last `count` lines of a file, reading only its end.
fn last_lines(path: &Path, count: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // Lines are capped at 16 KiB when written; read back at most what `count` of them fill.
    let want = (count as u64 + 1)
        .saturating_mul(16 * 1024)
        .min(len)
        .min(64 * 1024 * 1024);
    if file.seek(SeekFrom::Start(len - want)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    // Reading from the middle of the file starts mid-line: drop that partial first line.
    let whole = if want < len {
        &lines[1.min(lines.len())..]
    } else {
        &lines[..]
    };
    let start = whole.len().saturating_sub(count);
    whole[start..]
        .iter()
        .map(|line| format!("{line}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rotates_by_size_and_keeps_the_configured_number_of_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let logs = AppLogs::new(dir.path().to_path_buf(), 2048, 2).expect("logs");
        for i in 0..200 {
            logs.append("hello", "web.1", &format!("line {i:04} {}", "x".repeat(40)))
                .await;
        }
        let current = std::fs::metadata(logs.path("hello")).expect("log").len();
        assert!(current <= 2048, "current log is {current} bytes");
        let one = dir.path().join("hello.log.1");
        let two = dir.path().join("hello.log.2");
        assert!(one.is_file() && two.is_file());
        assert!(!dir.path().join("hello.log.3").exists());
        let tail = logs.tail("hello", 3).await;
        assert_eq!(tail.lines().count(), 3);
        assert!(tail.ends_with(&format!("web.1: line 0199 {}\n", "x".repeat(40))));
        logs.remove("hello").await;
        assert!(!logs.path("hello").exists() && !one.exists() && !two.exists());
    }

    #[tokio::test]
    async fn followers_get_each_new_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let logs = AppLogs::new(dir.path().to_path_buf(), 1 << 20, 1).expect("logs");
        let mut follower = logs.follow("hello");
        logs.append("hello", "web.1", "one\ntwo").await;
        logs.append("other", "web.1", "not for us").await;
        let first = follower.recv().await.expect("line");
        let second = follower.recv().await.expect("line");
        assert!(first.ends_with("web.1: one") && second.ends_with("web.1: two"));
        assert!(follower.try_recv().is_err());
    }
}
