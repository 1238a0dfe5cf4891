//! Packing an app's folder into the `tar.gz` that `POST /apps/{name}/builds` takes: what
//! `quartet app deploy` uploads and `quartet app local` runs, so both see the same files.
//!
//! Left out: `.git`, and whatever `.quartetignore` lists (one glob per line, matched against
//! paths relative to the folder, like `.slugignore` on Heroku; `#` starts a comment). Links are
//! kept as links; other special files are skipped.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(".quartetignore line {line}: {reason}")]
    Ignore { line: usize, reason: String },
    #[error("{0} has no Procfile at its top: it says how to run the app (`web: python3 app.py`)")]
    NoProcfile(PathBuf),
}

/// What was packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    pub archive: Vec<u8>,
    pub files: usize,
}

/// Packs `dir` (which must hold a Procfile) as `tar.gz`.
pub fn pack_dir(dir: &Path) -> Result<Packed, PackError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackError::Io { path, source }
    };
    if !dir.join("Procfile").is_file() {
        return Err(PackError::NoProcfile(dir.to_path_buf()));
    }
    let ignore = read_ignore(dir)?;
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    let mut files = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let full = dir.join(&relative);
        let mut entries: Vec<_> = std::fs::read_dir(&full)
            .map_err(io(&full))?
            .collect::<Result<_, _>>()
            .map_err(io(&full))?;
        // A stable order: the same folder packs to the same bytes, so to the same build.
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            let name = relative.join(entry.file_name());
            if name == Path::new(".git") || ignore.is_match(&name) {
                continue;
            }
            let kind = entry.file_type().map_err(io(&entry.path()))?;
            if kind.is_dir() {
                tar.append_dir(&name, entry.path())
                    .map_err(io(&entry.path()))?;
                stack.push(name);
            } else if kind.is_file() || kind.is_symlink() {
                tar.append_path_with_name(entry.path(), &name)
                    .map_err(io(&entry.path()))?;
                files += 1;
            }
        }
    }
    let archive = tar
        .into_inner()
        .and_then(|gz| gz.finish())
        .map_err(io(dir))?;
    Ok(Packed { archive, files })
}

fn read_ignore(dir: &Path) -> Result<globset::GlobSet, PackError> {
    let mut set = globset::GlobSetBuilder::new();
    let path = dir.join(".quartetignore");
    if let Ok(text) = std::fs::read_to_string(&path) {
        for (index, line) in text.lines().enumerate() {
            let pattern = line.trim().trim_start_matches('/').trim_end_matches('/');
            if pattern.is_empty() || pattern.starts_with('#') {
                continue;
            }
            let glob = globset::Glob::new(pattern).map_err(|err| PackError::Ignore {
                line: index + 1,
                reason: err.kind().to_string(),
            })?;
            set.add(glob);
        }
    }
    set.build().map_err(|err| PackError::Ignore {
        line: 0,
        reason: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::unpack::{UnpackLimits, unpack};

    #[test]
    fn packs_what_unpack_takes_leaving_out_git_and_ignored_paths() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        std::fs::write(root.join("Procfile"), "web: python3 app.py\n").expect("write");
        std::fs::create_dir_all(root.join("src/deep")).expect("mkdir");
        std::fs::write(root.join("src/deep/app.py"), "print(1)\n").expect("write");
        std::fs::create_dir_all(root.join(".git")).expect("mkdir");
        std::fs::write(root.join(".git/HEAD"), "ref\n").expect("write");
        std::fs::create_dir_all(root.join("node_modules/x")).expect("mkdir");
        std::fs::write(root.join("node_modules/x/i.js"), "1\n").expect("write");
        std::fs::write(root.join("secret.env"), "X=1\n").expect("write");
        std::fs::write(
            root.join(".quartetignore"),
            "# local only\nnode_modules\n*.env\n",
        )
        .expect("write");
        std::os::unix::fs::symlink("src/deep/app.py", root.join("main.py")).expect("link");

        let packed = pack_dir(root).expect("pack");
        assert_eq!(packed.files, 4, "Procfile, .quartetignore, main.py, app.py");
        assert_eq!(pack_dir(root).expect("pack").archive, packed.archive);

        let out = tempfile::tempdir().expect("temp dir");
        let limits = UnpackLimits {
            max_entries: 100,
            max_bytes: 1 << 20,
            symlinks_may_point_outside: false,
        };
        unpack(&packed.archive[..], out.path(), limits).expect("unpack");
        assert!(out.path().join("src/deep/app.py").is_file());
        assert!(out.path().join("main.py").is_symlink());
        assert!(!out.path().join(".git").exists());
        assert!(!out.path().join("node_modules").exists());
        assert!(!out.path().join("secret.env").exists());
    }

    #[test]
    fn a_folder_without_a_procfile_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(matches!(
            pack_dir(dir.path()),
            Err(PackError::NoProcfile(_))
        ));
    }
}
