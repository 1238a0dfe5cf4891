//! Sealing a build: after `build:` ran as the app's user, root copies what it produced into a
//! fresh tree that only root can write, with modes forced to 0644/0755. The build folder the
//! app wrote stays the app's; the copy is what every release of that build runs from.
//!
//! The app's processes (of the same user) may change the folder while it is copied, so the
//! copy never follows a path the app controls: every folder is opened relative to its parent's
//! descriptor with `O_NOFOLLOW`, files with `O_NOFOLLOW | O_NONBLOCK` and checked to be regular
//! files on the descriptor itself; links are copied as links, never followed; FIFOs, sockets and
//! devices are left out.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::fcntl::{OFlag, openat, readlinkat};
use nix::sys::stat::{Mode, SFlag, fstat};

/// Folders deeper than this are refused (a maliciously deep tree).
const MAX_DEPTH: usize = 256;

/// Limits of one seal, so a build cannot fill the disk through it.
#[derive(Debug, Clone, Copy)]
pub struct SealLimits {
    pub max_bytes: u64,
    pub max_entries: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the build's output is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the build's output has more than {0} entries")]
    TooManyEntries(usize),
    #[error("the build's output is nested deeper than {MAX_DEPTH} folders")]
    TooDeep,
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> SealError + '_ {
    move |source| SealError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn nix_at(path: &Path) -> impl FnOnce(nix::Error) -> SealError + '_ {
    move |errno| SealError::Io {
        path: path.display().to_string(),
        source: std::io::Error::from(errno),
    }
}

struct Budget {
    limits: SealLimits,
    bytes: u64,
    entries: usize,
}

/// Copies the tree at `from` into `to` (which must not exist), owned by the caller.
pub fn seal_tree(from: &Path, to: &Path, limits: SealLimits) -> Result<(), SealError> {
    let root = nix::fcntl::open(
        from,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(nix_at(from))?;
    std::fs::create_dir(to).map_err(io_at(to))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).map_err(io_at(to))?;
    let mut budget = Budget {
        limits,
        bytes: 0,
        entries: 0,
    };
    copy_dir(root, to, 0, &mut budget)
}

fn copy_dir(dir: OwnedFd, to: &Path, depth: usize, budget: &mut Budget) -> Result<(), SealError> {
    if depth > MAX_DEPTH {
        return Err(SealError::TooDeep);
    }
    let listing = nix::unistd::dup(dir.as_fd()).map_err(nix_at(to))?;
    let mut listing = nix::dir::Dir::from_fd(listing).map_err(nix_at(to))?;
    let names: Vec<Vec<u8>> = listing
        .iter()
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_bytes().to_vec())
        .filter(|name| name != b"." && name != b"..")
        .collect();
    for name in names {
        budget.entries += 1;
        if budget.entries > budget.limits.max_entries {
            return Err(SealError::TooManyEntries(budget.limits.max_entries));
        }
        let name = OsStr::from_bytes(&name);
        let target = to.join(name);
        let stat = nix::sys::stat::fstatat(&dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(nix_at(&target))?;
        let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
        if kind == SFlag::S_IFDIR {
            let sub = openat(
                &dir,
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(nix_at(&target))?;
            std::fs::create_dir(&target).map_err(io_at(&target))?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
                .map_err(io_at(&target))?;
            copy_dir(sub, &target, depth + 1, budget)?;
        } else if kind == SFlag::S_IFREG {
            copy_file(&dir, name, &target, budget)?;
        } else if kind == SFlag::S_IFLNK {
            let link = readlinkat(&dir, name).map_err(nix_at(&target))?;
            std::os::unix::fs::symlink(&link, &target).map_err(io_at(&target))?;
        }
        // FIFOs, sockets and devices have no place in a build.
    }
    Ok(())
}

fn copy_file(
    dir: &OwnedFd,
    name: &OsStr,
    target: &Path,
    budget: &mut Budget,
) -> Result<(), SealError> {
    let fd = openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(nix_at(target))?;
    // What was opened is what counts (it may have been swapped since the listing).
    let stat = fstat(&fd).map_err(nix_at(target))?;
    let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
    if kind != SFlag::S_IFREG {
        return Ok(());
    }
    let mode = if stat.st_mode & 0o100 != 0 {
        0o755
    } else {
        0o644
    };
    let mut source = std::fs::File::from(fd);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(target)
        .map_err(io_at(target))?;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match source.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(io_at(target)(err)),
        };
        budget.bytes += read as u64;
        if budget.bytes > budget.limits.max_bytes {
            return Err(SealError::TooLarge(budget.limits.max_bytes));
        }
        out.write_all(&buffer[..read]).map_err(io_at(target))?;
    }
    // The mode is forced whatever the umask was.
    out.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io_at(target))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SealLimits = SealLimits {
        max_bytes: 1 << 20,
        max_entries: 100,
    };

    #[test]
    fn copies_files_folders_and_links_with_forced_modes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let from = dir.path().join("from");
        std::fs::create_dir_all(from.join("bin")).expect("mkdir");
        std::fs::write(from.join("Procfile"), "web: ./bin/run\n").expect("write");
        std::fs::write(from.join("bin/run"), "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(from.join("bin/run"), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        std::fs::set_permissions(
            from.join("Procfile"),
            std::fs::Permissions::from_mode(0o666),
        )
        .expect("chmod");
        std::os::unix::fs::symlink("/etc/passwd", from.join("outside")).expect("link");
        std::os::unix::fs::symlink("/etc", from.join("etc")).expect("link");
        nix::unistd::mkfifo(&from.join("fifo"), Mode::from_bits_truncate(0o644)).expect("fifo");

        let to = dir.path().join("to");
        seal_tree(&from, &to, LIMITS).expect("seal");
        let mode = |p: &str| {
            std::fs::symlink_metadata(to.join(p))
                .expect("meta")
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("Procfile"), 0o644);
        assert_eq!(mode("bin/run"), 0o755);
        assert_eq!(mode("bin"), 0o755);
        // Links stay links: nothing of /etc was copied.
        assert!(to.join("outside").is_symlink());
        assert!(to.join("etc").is_symlink());
        assert!(!to.join("fifo").exists());
        assert_eq!(
            std::fs::read_to_string(to.join("bin/run")).expect("read"),
            "#!/bin/sh\n"
        );
    }

    #[test]
    fn a_root_that_is_a_link_and_oversized_trees_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let real = dir.path().join("real");
        std::fs::create_dir(&real).expect("mkdir");
        std::fs::write(real.join("big"), vec![0u8; 4096]).expect("write");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("link");
        assert!(seal_tree(&link, &dir.path().join("a"), LIMITS).is_err());
        let small = SealLimits {
            max_bytes: 1000,
            max_entries: 100,
        };
        assert!(matches!(
            seal_tree(&real, &dir.path().join("b"), small),
            Err(SealError::TooLarge(1000))
        ));
    }
}
