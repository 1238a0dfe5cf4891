//! Unpacking an uploaded `tar.gz` safely: nothing may land outside the build directory, and a
//! small upload may not expand without bound.
//!
//! Refused: absolute paths, `..` components, device and fifo entries, symlinks or hard links
//! whose target leaves the tree, more than `max_entries` entries, more than `max_bytes`
//! decompressed bytes (a gzip bomb stops there, whatever the headers claim). Files are created
//! with `create_new`, so an entry can never write through a link made by an earlier one.

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

/// Limits for one archive.
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    pub max_entries: usize,
    /// Decompressed bytes read from the archive (headers included).
    pub max_bytes: u64,
    /// Symlinks may point outside the tree (a built tree from another app-server, such as a
    /// virtualenv's `python` → `/usr/bin/python3`). Nothing is ever written through a link
    /// whatever this says; an uploaded source keeps every link inside.
    pub symlinks_may_point_outside: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("not a gzip-compressed tar archive: {0}")]
    Format(io::Error),
    #[error("archive entry {path:?} refused: {reason}")]
    Refused { path: String, reason: &'static str },
    #[error("archive has more than {0} entries")]
    TooManyEntries(usize),
    #[error("archive unpacks to more than {0} bytes")]
    TooLarge(u64),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// What was unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    pub entries: usize,
    pub bytes: u64,
}

/// Counts decompressed bytes and fails past the limit.
struct Counted<R> {
    inner: R,
    read: u64,
    limit: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(io::Error::other(LimitExceeded));
        }
        Ok(n)
    }
}

#[derive(Debug)]
struct LimitExceeded;

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("decompressed size limit exceeded")
    }
}

impl std::error::Error for LimitExceeded {}

fn is_limit(err: &io::Error) -> bool {
    err.get_ref()
        .is_some_and(|inner| inner.is::<LimitExceeded>())
}

/// A relative path with only normal components, or `None`.
fn clean_relative(path: &Path) -> Option<PathBuf> {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!clean.as_os_str().is_empty()).then_some(clean)
}

/// Whether any existing component of `dest/relative` is a symlink.
fn passes_through_link(dest: &Path, relative: &Path) -> bool {
    let mut path = dest.to_path_buf();
    for component in relative.components() {
        path.push(component);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => return true,
            Ok(_) => {}
            Err(_) => return false, // not created yet: nothing further exists either
        }
    }
    false
}

/// Whether `target`, a link's target as written, stays inside the tree when resolved from the
/// directory holding the link (`link_dir`, relative to the root).
fn link_stays_inside(link_dir: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: usize = link_dir.components().count();
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                if depth == 0 {
                    return false;
                }
                depth -= 1;
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Whether following `target` from `link_dir` (relative to `dest`) passes through a link on
/// the way: `s -> .` then `t -> s/..` reads as inside but climbs out of the tree.
fn resolves_through_link(dest: &Path, link_dir: &Path, target: &Path) -> bool {
    let mut path: Vec<std::ffi::OsString> = link_dir
        .components()
        .map(|c| c.as_os_str().to_owned())
        .collect();
    let parts: Vec<Component> = target.components().collect();
    for (index, component) in parts.iter().enumerate() {
        match component {
            Component::Normal(part) => {
                path.push(part.to_os_string());
                let last = index + 1 == parts.len();
                let full: PathBuf = path.iter().fold(dest.to_path_buf(), |p, c| p.join(c));
                if !last
                    && fs::symlink_metadata(&full).is_ok_and(|meta| meta.file_type().is_symlink())
                {
                    return true;
                }
            }
            Component::ParentDir => {
                if path.pop().is_none() {
                    return true;
                }
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return true,
        }
    }
    false
}

/// Unpacks `archive` (gzip-compressed tar) into `dest`, which must exist and be empty.
pub fn unpack(
    archive: impl Read,
    dest: &Path,
    limits: UnpackLimits,
) -> Result<Unpacked, UnpackError> {
    let counted = Counted {
        inner: flate2::read::GzDecoder::new(archive),
        read: 0,
        limit: limits.max_bytes,
    };
    let mut tar = tar::Archive::new(counted);
    let mut entries_seen = 0;
    let mut bytes = 0u64;
    // Every symlink made, checked again once all exist (a later entry may make an earlier
    // link's path run through a link).
    let mut links: Vec<(PathBuf, PathBuf, String)> = Vec::new();
    let entries = tar.entries().map_err(UnpackError::Format)?;
    for entry in entries {
        let mut entry = entry.map_err(|err| {
            if is_limit(&err) {
                UnpackError::TooLarge(limits.max_bytes)
            } else {
                UnpackError::Format(err)
            }
        })?;
        entries_seen += 1;
        if entries_seen > limits.max_entries {
            return Err(UnpackError::TooManyEntries(limits.max_entries));
        }
        let raw_path = entry.path().map_err(UnpackError::Format)?.into_owned();
        let shown = raw_path.display().to_string();
        let refuse = |reason| UnpackError::Refused {
            path: shown.clone(),
            reason,
        };
        let Some(relative) = clean_relative(&raw_path) else {
            if raw_path
                .components()
                .all(|c| matches!(c, Component::CurDir))
            {
                continue; // "./" itself
            }
            return Err(refuse("absolute path or `..`"));
        };
        let target = dest.join(&relative);
        let parent_rel = relative.parent().unwrap_or(Path::new(""));
        // Every folder on the way must be a real folder: a link planted by an earlier entry
        // (even one pointing inside the tree) could otherwise chain its way out.
        if passes_through_link(dest, parent_rel) {
            return Err(refuse("path goes through a symlink"));
        }
        let write_err = |source| UnpackError::Write {
            path: target.clone(),
            source,
        };
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => {
                fs::create_dir_all(&target).map_err(write_err)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(write_err)?;
                }
                // Keep the owner's execute bit; never setuid/setgid/sticky or group/world write.
                let mode = entry.header().mode().unwrap_or(0o644);
                let mode = if mode & 0o100 != 0 { 0o755 } else { 0o644 };
                let mut file = OpenOptions::new()
                    .write(true)
                    // O_CREAT|O_EXCL: fails on anything already there, a symlink included
                    // (whatever it points at), so no entry writes through another.
                    .create_new(true)
                    .mode(mode)
                    .open(&target)
                    .map_err(write_err)?;
                let copied = io::copy(&mut entry, &mut file).map_err(|err| {
                    if is_limit(&err) {
                        UnpackError::TooLarge(limits.max_bytes)
                    } else {
                        UnpackError::Format(err)
                    }
                })?;
                bytes += copied;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(UnpackError::Format)?
                    .ok_or_else(|| refuse("symlink without a target"))?
                    .into_owned();
                if !limits.symlinks_may_point_outside && !link_stays_inside(parent_rel, &link) {
                    return Err(refuse("symlink leaves the source tree"));
                }
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(write_err)?;
                }
                std::os::unix::fs::symlink(&link, &target).map_err(write_err)?;
                links.push((parent_rel.to_path_buf(), link.clone(), shown.clone()));
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(UnpackError::Format)?
                    .ok_or_else(|| refuse("hard link without a target"))?
                    .into_owned();
                let Some(source_rel) = clean_relative(&link) else {
                    return Err(refuse("hard link leaves the source tree"));
                };
                if passes_through_link(dest, source_rel.parent().unwrap_or(Path::new(""))) {
                    return Err(refuse("hard link goes through a symlink"));
                }
                let source = dest.join(source_rel);
                // Only to a regular file already unpacked (not through a symlink).
                let is_file = fs::symlink_metadata(&source).is_ok_and(|m| m.file_type().is_file());
                if !is_file {
                    return Err(refuse("hard link to something not unpacked before it"));
                }
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(write_err)?;
                }
                fs::hard_link(&source, &target).map_err(write_err)?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                return Err(refuse("device or fifo"));
            }
            // pax and GNU extension headers are applied by the tar crate to the next entry.
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            tar::EntryType::GNULongName | tar::EntryType::GNULongLink => {}
            _ => return Err(refuse("unsupported entry type")),
        }
    }
    if !limits.symlinks_may_point_outside {
        for (link_dir, link, shown) in &links {
            if resolves_through_link(dest, link_dir, link) {
                return Err(UnpackError::Refused {
                    path: shown.clone(),
                    reason: "symlink's target runs through another link",
                });
            }
        }
    }
    Ok(Unpacked {
        entries: entries_seen,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: UnpackLimits = UnpackLimits {
        max_entries: 100,
        max_bytes: 10 * 1024 * 1024,
        symlinks_may_point_outside: false,
    };

    /// Builds a tar.gz from raw headers, so that malicious shapes can be written.
    fn archive(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(gz);
        for (path, kind, data, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            // Write the name bytes directly so `..` and absolute paths survive.
            let name = header.as_old_mut().name.as_mut();
            name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(link) = link {
                let field = header.as_old_mut().linkname.as_mut();
                field[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn unpack_into(bytes: &[u8]) -> (tempfile::TempDir, Result<Unpacked, UnpackError>) {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("build");
        fs::create_dir(&dest).unwrap();
        let result = unpack(bytes, &dest, LIMITS);
        (outer, result)
    }

    /// Nothing but `build/` may exist next to the destination after an attempt.
    fn nothing_outside(outer: &Path) {
        let names: Vec<_> = fs::read_dir(outer)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("build")]);
    }

    #[test]
    fn a_normal_tree_unpacks() {
        use tar::EntryType::*;
        let bytes = archive(&[
            ("app/", Directory, b"", None),
            ("app/Procfile", Regular, b"web: python3 app.py\n", None),
            ("app/app.py", Regular, b"print(1)\n", None),
            ("app/current", Symlink, b"", Some("app.py")),
            ("app/copy.py", Link, b"", Some("app/app.py")),
        ]);
        let (outer, result) = unpack_into(&bytes);
        let unpacked = result.unwrap();
        assert_eq!(unpacked.entries, 5);
        let dest = outer.path().join("build");
        assert_eq!(
            fs::read_to_string(dest.join("app/Procfile")).unwrap(),
            "web: python3 app.py\n"
        );
        assert_eq!(
            fs::read_to_string(dest.join("app/current")).unwrap(),
            "print(1)\n"
        );
        assert_eq!(
            fs::read_to_string(dest.join("app/copy.py")).unwrap(),
            "print(1)\n"
        );
    }

    #[test]
    fn malicious_archives_are_refused_and_write_nothing_outside() {
        use tar::EntryType::*;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "absolute path",
                archive(&[("/tmp/quartet-pwned", Regular, b"x", None)]),
            ),
            ("dot-dot", archive(&[("../pwned", Regular, b"x", None)])),
            (
                "nested dot-dot",
                archive(&[("a/../../pwned", Regular, b"x", None)]),
            ),
            (
                "symlink escape",
                archive(&[("link", Symlink, b"", Some("../"))]),
            ),
            (
                "absolute symlink",
                archive(&[("link", Symlink, b"", Some("/etc"))]),
            ),
            (
                "deep symlink escape",
                archive(&[("a/b/link", Symlink, b"", Some("../../../x"))]),
            ),
            (
                "hard link escape",
                archive(&[("hl", Link, b"", Some("../../etc/passwd"))]),
            ),
            ("device", archive(&[("dev", Char, b"", None)])),
            ("fifo", archive(&[("fifo", Fifo, b"", None)])),
        ];
        for (name, bytes) in cases {
            let (outer, result) = unpack_into(&bytes);
            assert!(result.is_err(), "{name} was accepted");
            nothing_outside(outer.path());
        }
        assert!(!Path::new("/tmp/quartet-pwned").exists());
    }

    #[test]
    fn chained_links_cannot_climb_out() {
        use tar::EntryType::*;
        let bytes = archive(&[
            ("s", Symlink, b"", Some(".")),
            ("s/l", Symlink, b"", Some("..")),
            ("s/l/escaped", Regular, b"x", None),
        ]);
        let (outer, result) = unpack_into(&bytes);
        assert!(result.is_err(), "{result:?}");
        nothing_outside(outer.path());
        // A file under an in-tree directory link is refused too.
        let bytes = archive(&[
            ("real/", Directory, b"", None),
            ("alias", Symlink, b"", Some("real")),
            ("alias/file", Regular, b"x", None),
        ]);
        let (_outer, result) = unpack_into(&bytes);
        assert!(result.is_err());
        // Links whose targets read as inside but run through another link, in either order.
        for entries in [
            [("s", Some(".")), ("t", Some("s/.."))],
            [("t", Some("s/..")), ("s", Some("."))],
        ] {
            let list: Vec<_> = entries
                .iter()
                .map(|(name, link)| (*name, Symlink, &b""[..], *link))
                .collect();
            let (_outer, result) = unpack_into(&archive(&list));
            assert!(result.is_err(), "{entries:?}: {result:?}");
        }
        // A link to a link inside the tree, and `..` within the tree, are fine.
        let bytes = archive(&[
            ("lib/", Directory, b"", None),
            ("lib/real.txt", Regular, b"x", None),
            ("lib/alias", Symlink, b"", Some("real.txt")),
            ("bin/", Directory, b"", None),
            ("bin/tool", Symlink, b"", Some("../lib/alias")),
        ]);
        let (_outer, result) = unpack_into(&bytes);
        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn a_file_cannot_be_written_through_an_earlier_link() {
        use tar::EntryType::*;
        // An in-tree link, then a file with the link's name: the file must not follow it.
        let bytes = archive(&[
            ("target.txt", Regular, b"original", None),
            ("alias", Symlink, b"", Some("target.txt")),
            ("alias", Regular, b"overwrite", None),
        ]);
        let (outer, result) = unpack_into(&bytes);
        assert!(result.is_err());
        let dest = outer.path().join("build");
        assert_eq!(
            fs::read_to_string(dest.join("target.txt")).unwrap(),
            "original"
        );
    }

    #[test]
    fn bombs_and_entry_floods_stop_at_the_limits() {
        use tar::EntryType::*;
        // 20 MiB of zeros compresses to a few KiB.
        let zeros = vec![0u8; 20 * 1024 * 1024];
        let bomb = archive(&[("zeros", Regular, &zeros, None)]);
        assert!(bomb.len() < 100 * 1024);
        let (outer, result) = unpack_into(&bomb);
        assert!(
            matches!(result, Err(UnpackError::TooLarge(_))),
            "{result:?}"
        );
        nothing_outside(outer.path());

        let names: Vec<String> = (0..150).map(|i| format!("f{i}")).collect();
        let many: Vec<(&str, tar::EntryType, &[u8], Option<&str>)> = names
            .iter()
            .map(|n| (n.as_str(), Regular, &b"x"[..], None))
            .collect();
        let (_outer, result) = unpack_into(&archive(&many));
        assert!(
            matches!(result, Err(UnpackError::TooManyEntries(100))),
            "{result:?}"
        );

        let (_outer, result) = unpack_into(b"this is not gzip");
        assert!(result.is_err());
    }
}
