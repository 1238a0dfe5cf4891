//! The open-file and metadata cache: what a path resolves to (file, directory, nothing,
//! refused), the file's validators and type, and for small files the bytes themselves and
//! their compressed forms. An entry is trusted for `web.cache_validity_ms`, then checked
//! against the file system again (as nginx's `open_file_cache_valid` does), so a changed file
//! is served within that time.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    identity: Identity,
    /// The sidecars' identities when the entry was made: a changed or removed sidecar makes
    /// the entry stale even if the file itself is unchanged.
    sidecar_identities: Vec<(Encoding, Identity)>,
    pub etag: String,
    pub last_modified: HeaderValue,
    pub content_type: HeaderValue,
    pub compressible: bool,
    /// The whole file, when it is small enough to keep.
    pub body: Option<Bytes>,
    /// For a file too large to keep: the file, opened when the entry was made (an open-file
    /// cache: no open per request, and the file served is the one that was checked).
    pub open: Option<Arc<std::fs::File>>,
    /// `name.br`, `name.zst`, `name.gz` next to the file, when present and not older.
    pub sidecars: Vec<Sidecar>,
    /// Compressed forms of `body`, made on first request (None: compression did not help or
    /// the memory budget was spent).
    compressed: Mutex<HashMap<Encoding, Option<Bytes>>>,
    /// Bytes this entry holds in memory, given back to `budget` when it is dropped.
    held: AtomicU64,
    budget: Arc<Budget>,
}

/// (device, inode, size, mtime seconds, mtime nanoseconds): changes whenever the file does.
type Identity = (u64, u64, u64, i64, i64);

fn identity(meta: &std::fs::Metadata) -> Identity {
    (
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
    )
}

/// Memory for cached bodies, shared by all entries. Entries reserve before they keep bytes
/// and give them back when dropped, so the count cannot drift.
#[derive(Debug)]
pub struct Budget {
    used: AtomicU64,
    max: u64,
    /// Open file descriptors held by entries, at most `MAX_OPEN_FILES`.
    open_files: AtomicUsize,
}

/// Large files kept open at once; beyond this they are opened per request.
const MAX_OPEN_FILES: usize = 512;

impl Budget {
    fn reserve(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.max)
            })
            .is_ok()
    }

    fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    #[cfg(test)]
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

impl Drop for FileEntry {
    fn drop(&mut self) {
        self.budget.release(self.held.load(Ordering::Acquire));
        if self.open.is_some() {
            self.budget.open_files.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[derive(Debug, Clone)]
pub struct Sidecar {
    pub encoding: Encoding,
    pub path: PathBuf,
    pub len: u64,
    pub body: Option<Bytes>,
}

impl FileEntry {
    /// `body` compressed with `encoding`, computed once per entry (outside the lock, and off
    /// the async workers when the runtime allows).
    pub fn compressed(&self, encoding: Encoding) -> Option<Bytes> {
        let body = self.body.as_ref()?;
        if let Some(known) = self.compressed.lock().ok()?.get(&encoding) {
            return known.clone();
        }
        let packed = off_the_workers(|| compress(encoding, body));
        let packed = (packed.len() < body.len()).then(|| Bytes::from(packed));
        let kept = packed.filter(|bytes| self.budget.reserve(bytes.len() as u64));
        let mut cache = self.compressed.lock().ok()?;
        if let Some(known) = cache.get(&encoding) {
            // Another request won the race; give back what we reserved.
            if let Some(bytes) = &kept {
                self.budget.release(bytes.len() as u64);
            }
            return known.clone();
        }
        if let Some(bytes) = &kept {
            self.held.fetch_add(bytes.len() as u64, Ordering::AcqRel);
        }
        cache.insert(encoding, kept.clone());
        kept
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

/// Shared by all sites; keys are (site index, relative path). Only what exists is cached, so
/// requests for random missing paths cannot fill it.
#[derive(Debug)]
pub struct FileCache {
    limits: CacheLimits,
    slots: RwLock<HashMap<(usize, String), Slot>>,
    budget: Arc<Budget>,
}

impl FileCache {
    pub fn new(limits: CacheLimits) -> Self {
        Self {
            limits,
            slots: RwLock::new(HashMap::new()),
            budget: Arc::new(Budget {
                used: AtomicU64::new(0),
                max: limits.max_bytes,
                open_files: AtomicUsize::new(0),
            }),
        }
    }

    #[cfg(test)]
    pub fn budget(&self) -> &Budget {
        &self.budget
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
        let previous = match self.slots.read() {
            Ok(slots) => match slots.get(&key) {
                Some(slot) if slot.checked.elapsed() < self.limits.validity => {
                    return slot.resolved.clone();
                }
                Some(Slot {
                    resolved: Resolved::File(entry),
                    ..
                }) => Some(Arc::clone(entry)),
                _ => None,
            },
            Err(_) => None,
        };
        let resolved = off_the_workers(|| {
            self.resolve_uncached(root, relative, allow_escape, previous.as_ref())
        });
        if let Ok(mut slots) = self.slots.write() {
            match &resolved {
                Resolved::File(_) | Resolved::Directory(_) => {
                    if slots.len() >= self.limits.max_entries && !slots.contains_key(&key) {
                        // Bounded: start over rather than grow without limit.
                        slots.clear();
                    }
                    slots.insert(
                        key,
                        Slot {
                            resolved: resolved.clone(),
                            checked: Instant::now(),
                        },
                    );
                }
                Resolved::NotFound | Resolved::Escapes => {
                    slots.remove(&key);
                }
            }
        }
        resolved
    }

    fn resolve_uncached(
        &self,
        root: &Path,
        relative: &str,
        allow_escape: bool,
        previous: Option<&Arc<FileEntry>>,
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
        let sidecars = sidecar_identities(&full, &meta);
        if let Some(previous) = previous
            && previous.identity == identity(&meta)
            && previous.sidecar_identities == sidecars
        {
            // Unchanged, sidecars included: keep the bytes and compressed forms already made.
            return Resolved::File(Arc::clone(previous));
        }
        Resolved::File(Arc::new(self.load_entry(&full, &meta, sidecars)))
    }

    fn load_entry(
        &self,
        path: &Path,
        meta: &std::fs::Metadata,
        sidecar_identities: Vec<(Encoding, Identity)>,
    ) -> FileEntry {
        let len = meta.len();
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let (content_type, compressible) = content_type(path);
        let held = AtomicU64::new(0);
        let body = self.read_small(path, len, &held);
        let open = if body.is_none() {
            self.open_large(path)
        } else {
            None
        };
        let mut sidecars = Vec::new();
        for (encoding, side) in &sidecar_identities {
            let sidecar = sidecar_path(path, *encoding);
            sidecars.push(Sidecar {
                encoding: *encoding,
                body: self.read_small(&sidecar, side.2, &held),
                path: sidecar,
                len: side.2,
            });
        }
        let id = identity(meta);
        // Strong validator from the file's identity, size and modification time.
        let etag = format!("\"{:x}-{:x}-{:x}{:x}\"", id.1, len, id.3, id.4);
        FileEntry {
            path: path.to_path_buf(),
            len,
            modified,
            identity: id,
            sidecar_identities,
            etag,
            last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(modified))
                .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT")),
            content_type,
            compressible,
            body,
            open,
            sidecars,
            compressed: Mutex::new(HashMap::new()),
            held,
            budget: Arc::clone(&self.budget),
        }
    }

    /// Opens a large file to keep, if fewer than [`MAX_OPEN_FILES`] are open.
    fn open_large(&self, path: &Path) -> Option<Arc<std::fs::File>> {
        let counter = &self.budget.open_files;
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_OPEN_FILES).then_some(n + 1)
            })
            .ok()?;
        match std::fs::File::open(path) {
            Ok(file) => Some(Arc::new(file)),
            Err(_) => {
                counter.fetch_sub(1, Ordering::AcqRel);
                None
            }
        }
    }

    /// Reads a file into memory if it is small and the budget allows; counts it in `held`.
    fn read_small(&self, path: &Path, len: u64, held: &AtomicU64) -> Option<Bytes> {
        if len > self.limits.max_file_bytes || !self.budget.reserve(len) {
            return None;
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).ok()?);
        let read = std::fs::File::open(path).and_then(|f| f.take(len).read_to_end(&mut bytes));
        if read.is_err() || bytes.len() as u64 != len {
            self.budget.release(len);
            return None;
        }
        held.fetch_add(len, Ordering::AcqRel);
        Some(Bytes::from(bytes))
    }
}

fn sidecar_path(path: &Path, encoding: Encoding) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(encoding.sidecar_extension());
    PathBuf::from(name)
}

/// `name.br`, `name.zst`, `name.gz` that exist and are not older than the file.
fn sidecar_identities(path: &Path, meta: &std::fs::Metadata) -> Vec<(Encoding, Identity)> {
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    [Encoding::Brotli, Encoding::Zstd, Encoding::Gzip]
        .into_iter()
        .filter_map(|encoding| {
            let side = std::fs::metadata(sidecar_path(path, encoding)).ok()?;
            (side.is_file() && side.modified().unwrap_or(SystemTime::UNIX_EPOCH) >= modified)
                .then(|| (encoding, identity(&side)))
        })
        .collect()
}

/// Runs file-system or CPU work without stalling the other tasks on this worker thread, when
/// the runtime has other workers to take them over.
pub fn off_the_workers<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_budget_follows_what_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::write(root.join("a.txt"), "a".repeat(1000)).unwrap();
        std::fs::write(root.join("a.txt.gz"), "g".repeat(100)).unwrap();
        std::fs::write(root.join("b.txt"), "b".repeat(5000)).unwrap();
        let cache = FileCache::new(CacheLimits {
            validity: Duration::ZERO,
            max_file_bytes: 10_000,
            max_bytes: 4_000,
            max_entries: 100,
        });
        let Resolved::File(a) = cache.resolve(0, &root, "a.txt", false) else {
            panic!()
        };
        assert!(a.body.is_some());
        assert_eq!(cache.budget().used(), 1100, "file and sidecar");
        // Re-checking an unchanged file (validity 0: every time) keeps the same entry.
        for _ in 0..5 {
            let Resolved::File(again) = cache.resolve(0, &root, "a.txt", false) else {
                panic!()
            };
            assert!(Arc::ptr_eq(&a, &again));
        }
        assert_eq!(cache.budget().used(), 1100);
        // Over budget: served from disk instead.
        let Resolved::File(b) = cache.resolve(0, &root, "b.txt", false) else {
            panic!()
        };
        assert!(b.body.is_none());
        // A changed file replaces the entry; the old one's bytes come back once dropped.
        std::fs::write(root.join("a.txt"), "A".repeat(10)).unwrap();
        let Resolved::File(changed) = cache.resolve(0, &root, "a.txt", false) else {
            panic!()
        };
        assert_eq!(changed.len, 10);
        drop(a);
        assert_eq!(
            cache.budget().used(),
            10,
            "sidecar now older than the file: not used"
        );
        // Compressed forms count too.
        drop((b, changed));
        std::fs::write(root.join("c.txt"), "hello ".repeat(300)).unwrap();
        let Resolved::File(c) = cache.resolve(0, &root, "c.txt", false) else {
            panic!()
        };
        let before = cache.budget().used();
        let packed = c.compressed(Encoding::Gzip).unwrap();
        assert_eq!(cache.budget().used(), before + packed.len() as u64);
    }
}
