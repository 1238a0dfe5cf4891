//! The open-file and metadata cache: what a path resolves to (file, directory, nothing,
//! refused), the file's validators and type, and for small files the bytes themselves and
//! their compressed forms. An entry is trusted for `web.cache_validity_ms`, then checked
//! against the file system again (as nginx's `open_file_cache_valid` does), so a changed file
//! is served within that time.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::http::HeaderValue;
use bytes::Bytes;

use super::encoding::{Encoding, compress};

/// What a request path resolved to.
#[derive(Debug, Clone)]
pub enum Resolved {
    File(Arc<FileEntry>),
    Directory(PathBuf),
    NotFound,
    /// A symlink whose target lies outside the root.
    Escapes,
}

/// A regular file and everything needed to answer for it.
#[derive(Debug)]
pub struct FileEntry {
    pub path: PathBuf,
    pub len: u64,
    pub modified: SystemTime,
    identity: (u64, u64, i64, i64),
    pub etag: String,
    pub last_modified: HeaderValue,
    pub content_type: HeaderValue,
    pub compressible: bool,
    /// The whole file, when it is small enough to keep.
    pub body: Option<Bytes>,
    /// `name.br`, `name.zst`, `name.gz` next to the file, when present and not older.
    pub sidecars: Vec<Sidecar>,
    /// Compressed forms of `body`, made on first request (None: compression did not help).
    compressed: Mutex<HashMap<Encoding, Option<Bytes>>>,
}

#[derive(Debug, Clone)]
pub struct Sidecar {
    pub encoding: Encoding,
    pub path: PathBuf,
    pub len: u64,
    pub body: Option<Bytes>,
}

impl FileEntry {
    /// `body` compressed with `encoding`, computed once per entry.
    pub fn compressed(&self, encoding: Encoding) -> Option<Bytes> {
        let body = self.body.as_ref()?;
        let mut cache = self.compressed.lock().ok()?;
        cache
            .entry(encoding)
            .or_insert_with(|| {
                let packed = compress(encoding, body);
                (packed.len() < body.len()).then(|| Bytes::from(packed))
            })
            .clone()
    }
}

/// Limits of the cache, from `web.*`.
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    pub validity: Duration,
    pub max_file_bytes: u64,
    pub max_bytes: u64,
    pub max_entries: usize,
}

#[derive(Debug)]
struct Slot {
    resolved: Resolved,
    checked: Instant,
}

/// Shared by all sites; keys are (site index, relative path).
#[derive(Debug)]
pub struct FileCache {
    limits: CacheLimits,
    slots: RwLock<HashMap<(usize, String), Arc<Slot>>>,
    body_bytes: AtomicU64,
}

impl FileCache {
    pub fn new(limits: CacheLimits) -> Self {
        Self {
            limits,
            slots: RwLock::new(HashMap::new()),
            body_bytes: AtomicU64::new(0),
        }
    }

    /// Resolves `relative` under `root` (canonical), from the cache while it is fresh.
    pub fn resolve(
        &self,
        site: usize,
        root: &Path,
        relative: &str,
        allow_escape: bool,
    ) -> Resolved {
        let key = (site, relative.to_owned());
        let previous = self.slots.read().ok().and_then(|s| s.get(&key).cloned());
        if let Some(slot) = &previous
            && slot.checked.elapsed() < self.limits.validity
        {
            return slot.resolved.clone();
        }
        let old_file = match previous.as_deref() {
            Some(Slot {
                resolved: Resolved::File(entry),
                ..
            }) => Some(Arc::clone(entry)),
            _ => None,
        };
        let resolved = self.resolve_uncached(root, relative, allow_escape, old_file.as_deref());
        if let Some(old) = &old_file
            && !matches!(&resolved, Resolved::File(new) if Arc::ptr_eq(new, old))
            && let Some(body) = &old.body
        {
            self.body_bytes
                .fetch_sub(body.len() as u64, Ordering::Relaxed);
        }
        if let Ok(mut slots) = self.slots.write() {
            if slots.len() >= self.limits.max_entries {
                // Crude but bounded: start over rather than grow without limit.
                slots.clear();
                self.body_bytes.store(0, Ordering::Relaxed);
            }
            slots.insert(
                key,
                Arc::new(Slot {
                    resolved: resolved.clone(),
                    checked: Instant::now(),
                }),
            );
        }
        resolved
    }

    fn resolve_uncached(
        &self,
        root: &Path,
        relative: &str,
        allow_escape: bool,
        previous: Option<&FileEntry>,
    ) -> Resolved {
        let full = root.join(relative);
        let Ok(meta) = std::fs::metadata(&full) else {
            return Resolved::NotFound;
        };
        if !allow_escape {
            match std::fs::canonicalize(&full) {
                Ok(real) if real.starts_with(root) => {}
                Ok(_) => return Resolved::Escapes,
                Err(_) => return Resolved::NotFound,
            }
        }
        if meta.is_dir() {
            return Resolved::Directory(full);
        }
        if !meta.is_file() {
            return Resolved::NotFound;
        }
        let identity = (meta.dev(), meta.ino(), meta.mtime(), meta.mtime_nsec());
        if let Some(previous) = previous
            && previous.identity == identity
            && previous.len == meta.len()
        {
            // Unchanged: keep the bytes and compressed forms already made.
            return Resolved::File(Arc::new(FileEntry {
                path: previous.path.clone(),
                len: previous.len,
                modified: previous.modified,
                identity,
                etag: previous.etag.clone(),
                last_modified: previous.last_modified.clone(),
                content_type: previous.content_type.clone(),
                compressible: previous.compressible,
                body: previous.body.clone(),
                sidecars: previous.sidecars.clone(),
                compressed: Mutex::new(
                    previous
                        .compressed
                        .lock()
                        .map(|c| c.clone())
                        .unwrap_or_default(),
                ),
            }));
        }
        match self.load_entry(&full, &meta, identity) {
            Some(entry) => Resolved::File(Arc::new(entry)),
            None => Resolved::NotFound,
        }
    }

    fn load_entry(
        &self,
        path: &Path,
        meta: &std::fs::Metadata,
        identity: (u64, u64, i64, i64),
    ) -> Option<FileEntry> {
        let len = meta.len();
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let (content_type, compressible) = content_type(path);
        let body = self.read_small(path, len);
        let mut sidecars = Vec::new();
        for encoding in [Encoding::Brotli, Encoding::Zstd, Encoding::Gzip] {
            let mut name = path.as_os_str().to_owned();
            name.push(encoding.sidecar_extension());
            let sidecar = PathBuf::from(name);
            if let Ok(side_meta) = std::fs::metadata(&sidecar)
                && side_meta.is_file()
                && side_meta.modified().unwrap_or(SystemTime::UNIX_EPOCH) >= modified
            {
                let side_len = side_meta.len();
                sidecars.push(Sidecar {
                    encoding,
                    body: self.read_small(&sidecar, side_len),
                    path: sidecar,
                    len: side_len,
                });
            }
        }
        // Strong validator from the file's identity, size and modification time.
        let etag = format!(
            "\"{:x}-{:x}-{:x}{:x}\"",
            identity.1, len, identity.2, identity.3
        );
        Some(FileEntry {
            path: path.to_path_buf(),
            len,
            modified,
            identity,
            etag,
            last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(modified)).ok()?,
            content_type,
            compressible,
            body,
            sidecars,
            compressed: Mutex::new(HashMap::new()),
        })
    }

    /// Reads a file into memory if it is small and the budget allows.
    fn read_small(&self, path: &Path, len: u64) -> Option<Bytes> {
        if len > self.limits.max_file_bytes {
            return None;
        }
        let used = self.body_bytes.fetch_add(len, Ordering::Relaxed);
        if used + len > self.limits.max_bytes {
            self.body_bytes.fetch_sub(len, Ordering::Relaxed);
            return None;
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).ok()?);
        let read = std::fs::File::open(path).and_then(|f| f.take(len).read_to_end(&mut bytes));
        if read.is_err() || bytes.len() as u64 != len {
            self.body_bytes.fetch_sub(len, Ordering::Relaxed);
            return None;
        }
        Some(Bytes::from(bytes))
    }
}

/// The `Content-Type` for a path, and whether compressing it is worthwhile.
pub fn content_type(path: &Path) -> (HeaderValue, bool) {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let essence = mime.essence_str();
    let textual = mime.type_() == mime_guess::mime::TEXT
        || matches!(
            essence,
            "application/javascript"
                | "application/json"
                | "application/xml"
                | "application/wasm"
                | "application/manifest+json"
                | "application/rss+xml"
                | "application/atom+xml"
                | "image/svg+xml"
                | "image/x-icon"
                | "font/ttf"
                | "font/otf"
        );
    let needs_charset = mime.type_() == mime_guess::mime::TEXT
        || matches!(essence, "application/javascript" | "application/json");
    let value = if needs_charset {
        format!("{essence}; charset=utf-8")
    } else {
        essence.to_owned()
    };
    (
        HeaderValue::from_str(&value)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream")),
        textual,
    )
}
