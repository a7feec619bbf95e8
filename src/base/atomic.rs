//! Atomic file replacement: write a temp file in the target's directory, fsync it, rename it over
//! the target, fsync the directory. After a crash the target is either absent/old or complete.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Atomically replaces `path` with `bytes`. `mode` sets Unix permissions on the new file.
///
/// Only a regular file (or a symlink, which is replaced itself) is ever replaced: anything else
/// at `path` — a device such as `/dev/null`, a FIFO, a socket, a directory — is refused with
/// `InvalidInput`. Renaming over `/dev/null` as root (`bundle pack -o /dev/null`) once turned it
/// into a regular file for the whole machine.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;

    if let Ok(meta) = fs::symlink_metadata(path) {
        let kind = meta.file_type();
        if !kind.is_file() && !kind.is_symlink() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{}: exists and is not a regular file (a device, directory, FIFO or \
                     socket); refusing to replace it",
                    path.display()
                ),
            ));
        }
    }

    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{}: not a file path", path.display())))?;
    // Unique per process and call so concurrent writers never share a temp file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{seq}",
        name.to_string_lossy(),
        std::process::id()
    ));

    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes a rename or create inside `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes temp files a crashed writer left behind in `dir` (names starting with `.` and
/// containing `.tmp-`). Best effort; returns how many were removed.
pub fn sweep_temp_files(dir: &Path) -> usize {
    sweep(dir, |p| fs::remove_file(p))
}

/// Like [`sweep_temp_files`], for temp directories (removed with their contents).
pub fn sweep_temp_dirs(dir: &Path) -> usize {
    sweep(dir, |p| fs::remove_dir_all(p))
}

fn sweep(dir: &Path, remove: impl Fn(&Path) -> std::io::Result<()>) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with('.') && n.contains(".tmp-")
        })
        .filter(|e| remove(&e.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_regular_file_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        for target in [&sock, &sub] {
            let err = write_file(target, b"x", 0o644).expect_err("refused");
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
            assert!(err.to_string().contains("not a regular file"), "{err}");
        }
        use std::os::unix::fs::FileTypeExt;
        assert!(fs::symlink_metadata(&sock).unwrap().file_type().is_socket());
        assert!(sub.is_dir());
        // No temp file left behind either.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
        // A regular file is replaced as before.
        let file = dir.path().join("f");
        write_file(&file, b"one", 0o644).unwrap();
        write_file(&file, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"two");
    }

    #[test]
    fn replaces_content_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        write_file(&p, b"one", 0o600).unwrap();
        write_file(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn sweeps_leftover_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".a.bin.tmp-1-0"), b"torn").unwrap();
        fs::write(dir.path().join("keep"), b"x").unwrap();
        assert_eq!(sweep_temp_files(dir.path()), 1);
        assert!(dir.path().join("keep").exists());
    }

    #[test]
    fn sets_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_file(&p, b"secret", 0o600).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
