//! The bundle archive: one app as a deterministic, gzip-compressed ustar file
//! (`APP.bundle`), so that the same files always give the same bytes and the same sha256 —
//! which is what a release signature covers.
//!
//! Owns: [`pack`] (files → canonical archive bytes), [`unpack`] (untrusted bytes → [`Unpacked`]
//! under [`Limits`]), the path rules both share, and [`ArchiveError`].
//! Must not: do I/O, follow or create links, apply modes or owners from the archive, or decide
//! whether a bundle is trusted — [`super::sign::verify`] does that from the bundle's length and
//! digest alone, before anything here decompresses a byte. The tar reader is written here rather
//! than taken from the `tar` crate because it has to refuse what `tar` accepts quietly: a missing
//! end-of-archive marker, trailing data, and extension headers it would apply.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use flate2::bufread::GzDecoder;
use flate2::{Compression, GzBuilder};

use super::manifest::MANIFEST_FILE_NAME;
pub use super::{Digest, digest};
use crate::base::units::quote;

/// Tar block size: headers, data padding and the end-of-archive marker are counted in these.
const BLOCK: usize = 512;
/// zlib level 6, the usual speed/size balance; fixed because the level changes the output bytes.
const GZIP_LEVEL: u32 = 6;
/// RFC 1952 "unknown" OS: the packing machine's OS must not leak into the digest.
const GZIP_OS_UNKNOWN: u8 = 255;
/// Largest ustar `name` field and `prefix` field; a path is `prefix/name`.
const USTAR_NAME_LEN: usize = 100;
const USTAR_PREFIX_LEN: usize = 155;
/// Largest size an 11-digit octal field holds (8 GiB - 1); bigger needs base-256 or pax.
const USTAR_MAX_SIZE: u64 = 0o777_7777_7777;
/// Bytes read at a time while checking the zero padding after the end-of-archive marker.
const ZERO_CHUNK: usize = 8 << 10;

const MIB: u64 = 1 << 20;

/// Caps applied by [`unpack`]. Everything an attacker controls is bounded by one of these before
/// memory is spent on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest bundle accepted, in bytes as stored (compressed). Checked first.
    pub max_compressed: u64,
    /// Largest decompressed tar stream (headers and padding included); decompression stops with
    /// an error at the first byte past it.
    pub max_unpacked: u64,
    /// Most files in one bundle.
    pub max_entries: usize,
    /// Largest single file.
    pub max_entry: u64,
}

impl Default for Limits {
    /// Sized for real components: a component with an embedded interpreter (Python, JS) is
    /// 20-60 MiB uncompressed and compresses about 3:1; static assets ride along. A node holds the
    /// whole unpacked bundle in memory while installing, so the unpacked cap bounds that.
    fn default() -> Self {
        Self {
            max_compressed: crate::ops::config::DEFAULT_MAX_BUNDLE_SIZE,
            max_unpacked: 256 * MIB,
            max_entries: 4096,
            max_entry: 128 * MIB,
        }
    }
}

/// The files of an unpacked bundle, sorted by path. Always holds `outpost.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    files: BTreeMap<String, Vec<u8>>,
}

/// Why a bundle could not be packed or unpacked. Every variant is caused by the bundle (or, for
/// [`pack`], the files handed in); none is worth retrying with the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    #[error("bundle is {size} bytes; the limit is {limit} bytes compressed")]
    TooLarge { size: u64, limit: u64 },
    #[error("bundle unpacks to more than {limit} bytes (the unpacked limit)")]
    UnpackedTooLarge { limit: u64 },
    #[error("bundle has more than {limit} entries")]
    TooManyEntries { limit: usize },
    #[error("bundle entry {path:?} is {size} bytes; the limit is {limit} bytes per entry")]
    EntryTooLarge { path: String, size: u64, limit: u64 },
    #[error("bundle is not gzip-compressed (it does not start with the gzip magic bytes 1f 8b)")]
    NotGzip,
    #[error("bundle has a corrupt gzip stream: {message}")]
    Gzip { message: String },
    #[error("bundle has {extra} bytes after the end of its gzip stream")]
    TrailingGzip { extra: usize },
    #[error("bundle is truncated: it ends inside {what} (at unpacked offset {offset})")]
    Truncated { what: String, offset: u64 },
    #[error("bundle has an invalid tar header at unpacked offset {offset}: {problem}")]
    BadHeader { offset: u64, problem: String },
    #[error("bundle entry {path:?} is a {kind}; bundles hold regular files only")]
    UnsupportedEntry { path: String, kind: String },
    #[error(
        "bundle has non-zero data at unpacked offset {offset}, after the end-of-archive marker"
    )]
    TrailingData { offset: u64 },
    #[error("bundle path {path:?} {problem}")]
    BadPath { path: String, problem: &'static str },
    #[error(
        "bundle path {path:?} is {len} bytes; ustar holds a name of at most 100 bytes after a '/' \
         and at most 155 bytes before it"
    )]
    PathTooLong { path: String, len: usize },
    #[error("bundle path {path:?} appears twice")]
    Duplicate { path: String },
    #[error("bundle path {path:?} is a file, but {other:?} needs it to be a directory")]
    FileIsDirectory { path: String, other: String },
    #[error("bundle has no {MANIFEST_FILE_NAME} at its root")]
    MissingManifest,
    #[error("cannot compress the bundle: {message}")]
    Compress { message: String },
}

impl ArchiveError {
    /// A short, stable name for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::TooLarge { .. }
            | Self::UnpackedTooLarge { .. }
            | Self::TooManyEntries { .. }
            | Self::EntryTooLarge { .. } => "limit",
            Self::NotGzip | Self::Gzip { .. } | Self::TrailingGzip { .. } => "gzip",
            Self::Truncated { .. } => "truncated",
            Self::BadHeader { .. } | Self::TrailingData { .. } => "malformed",
            Self::UnsupportedEntry { .. } => "unsupported_entry",
            Self::BadPath { .. }
            | Self::PathTooLong { .. }
            | Self::Duplicate { .. }
            | Self::FileIsDirectory { .. } => "bad_path",
            Self::MissingManifest => "missing_manifest",
            Self::Compress { .. } => "internal",
        }
    }
}

// === pack ===

/// Packs `entries` (relative `/`-separated paths and their contents) into a bundle: a gzip
/// (level 6, mtime 0, no file name, OS byte 255) of a ustar archive holding the files sorted by
/// path bytes, each mode 0644, owner 0:0 with empty user and group names, mtime 0, and the
/// two-block end-of-archive marker. The input order does not matter; the same files always give
/// the same bytes with the same build.
pub fn pack(entries: Vec<(String, Vec<u8>)>) -> Result<Vec<u8>, ArchiveError> {
    let mut files = BTreeMap::new();
    for (path, data) in entries {
        check_path(&path).map_err(|problem| bad_path(&path, problem))?;
        if split_ustar_path(&path).is_none() {
            return Err(ArchiveError::PathTooLong {
                len: path.len(),
                path: quote(&path),
            });
        }
        let size = data.len() as u64;
        if size > USTAR_MAX_SIZE {
            return Err(ArchiveError::EntryTooLarge {
                path: quote(&path),
                size,
                limit: USTAR_MAX_SIZE,
            });
        }
        if files.contains_key(&path) {
            return Err(ArchiveError::Duplicate { path: quote(&path) });
        }
        files.insert(path, data);
    }
    check_tree(&files)?;

    let compress_error = |e: io::Error| ArchiveError::Compress {
        message: e.to_string(),
    };
    let mut gz = GzBuilder::new()
        .mtime(0)
        .operating_system(GZIP_OS_UNKNOWN)
        .write(Vec::new(), Compression::new(GZIP_LEVEL));
    for (path, data) in &files {
        let header = ustar_header(path, data.len() as u64);
        gz.write_all(&header).map_err(compress_error)?;
        gz.write_all(data).map_err(compress_error)?;
        gz.write_all(&[0u8; BLOCK][..padding(data.len() as u64)])
            .map_err(compress_error)?;
    }
    gz.write_all(&[0u8; 2 * BLOCK]).map_err(compress_error)?;
    gz.finish().map_err(compress_error)
}

/// One ustar header for a regular file. The path must have passed [`split_ustar_path`] and the
/// size must fit [`USTAR_MAX_SIZE`]; [`pack`] checks both first.
fn ustar_header(path: &str, size: u64) -> [u8; BLOCK] {
    let (prefix, name) = split_ustar_path(path).unwrap_or(("", path));
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    put_octal(&mut h[100..108], 0o644); // mode
    put_octal(&mut h[108..116], 0); // uid
    put_octal(&mut h[116..124], 0); // gid
    put_octal(&mut h[124..136], size);
    put_octal(&mut h[136..148], 0); // mtime
    h[156] = b'0'; // regular file
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // uname and gname (265..329) stay empty.
    put_octal(&mut h[329..337], 0); // devmajor
    put_octal(&mut h[337..345], 0); // devminor
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    // The checksum is summed with its own field as spaces, then stored as six digits, NUL, space.
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    put_octal(&mut h[148..155], sum);
    h
}

/// Writes `value` as zero-padded octal filling all but the last byte, which is NUL. Callers only
/// pass values that fit.
fn put_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    let text = &text.as_bytes()[text.len().saturating_sub(digits)..];
    field[..digits].copy_from_slice(text);
    field[digits] = 0;
}

/// Splits a path into ustar `(prefix, name)`: the whole path as the name when it fits, else at
/// the leftmost `/` that leaves a name of at most 100 bytes — the shortest possible prefix, so if
/// that prefix is over 155 bytes no split works.
fn split_ustar_path(path: &str) -> Option<(&str, &str)> {
    if path.len() <= USTAR_NAME_LEN {
        return Some(("", path));
    }
    let cut = path
        .char_indices()
        .filter(|&(_, c)| c == '/')
        .map(|(i, _)| i)
        .find(|&i| path.len() - i - 1 <= USTAR_NAME_LEN)?;
    (cut <= USTAR_PREFIX_LEN).then_some((&path[..cut], &path[cut + 1..]))
}

/// Zero bytes after `size` bytes of data, up to the next block boundary.
fn padding(size: u64) -> usize {
    let rem = (size % BLOCK as u64) as usize;
    if rem == 0 { 0 } else { BLOCK - rem }
}

// === unpack ===

/// Unpacks an untrusted bundle under `limits`. Checks, in order: the compressed size, the gzip
/// magic, then every header as it streams past (checksum, ustar magic, regular file, path rules,
/// duplicates, entry count, entry size, unpacked total); then the two-block end-of-archive
/// marker, that only zero padding follows it, that the gzip stream ends cleanly with nothing
/// after it; and finally that no file is also used as a directory and `outpost.toml` is present.
/// Memory use is bounded by `limits.max_unpacked` plus small fixed buffers.
pub fn unpack(bytes: &[u8], limits: &Limits) -> Result<Unpacked, ArchiveError> {
    let size = bytes.len() as u64;
    if size > limits.max_compressed {
        return Err(ArchiveError::TooLarge {
            size,
            limit: limits.max_compressed,
        });
    }
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Err(ArchiveError::NotGzip);
    }
    let mut src = Source::new(bytes, limits.max_unpacked);
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut block = [0u8; BLOCK];
    loop {
        let offset = src.offset;
        match src.fill(&mut block)? {
            0 => return Err(src.truncated("the end-of-archive marker")),
            BLOCK => {}
            _ => return Err(src.truncated("a tar header")),
        }
        if block == [0u8; BLOCK] {
            break;
        }
        if files.len() >= limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let (path, size) = parse_header(&block, offset)?;
        if files.contains_key(&path) {
            return Err(ArchiveError::Duplicate { path: quote(&path) });
        }
        if size > limits.max_entry {
            return Err(ArchiveError::EntryTooLarge {
                path: quote(&path),
                size,
                limit: limits.max_entry,
            });
        }
        // Refuse before allocating: either the data is there and crosses the cap, or the stream
        // is truncated; both are errors.
        let padded = size + padding(size) as u64;
        if src.offset.saturating_add(padded) > limits.max_unpacked {
            return Err(ArchiveError::UnpackedTooLarge {
                limit: limits.max_unpacked,
            });
        }
        let len = usize::try_from(size).map_err(|_| ArchiveError::EntryTooLarge {
            path: quote(&path),
            size,
            limit: usize::MAX as u64,
        })?;
        let mut data = vec![0u8; len];
        if src.fill(&mut data)? < len {
            return Err(src.truncated(format!("the contents of {:?}", quote(&path))));
        }
        let pad = padding(size);
        if src.fill(&mut block[..pad])? < pad {
            return Err(src.truncated(format!("the padding after {:?}", quote(&path))));
        }
        files.insert(path, data);
    }

    let offset = src.offset;
    if src.fill(&mut block)? < BLOCK {
        return Err(src.truncated("the end-of-archive marker"));
    }
    if block != [0u8; BLOCK] {
        return Err(ArchiveError::BadHeader {
            offset,
            problem: "a zero block must be followed by a second one (the end-of-archive marker)"
                .to_owned(),
        });
    }
    src.expect_zeros_to_end()?;
    src.finish()?;
    check_tree(&files)?;
    Ok(Unpacked { files })
}

/// The decompressed stream, with a running offset and the unpacked cap.
struct Source<'a> {
    gz: GzDecoder<&'a [u8]>,
    offset: u64,
    cap: u64,
}

impl<'a> Source<'a> {
    fn new(bytes: &'a [u8], cap: u64) -> Self {
        Self {
            gz: GzDecoder::new(bytes),
            offset: 0,
            cap,
        }
    }

    /// One read, never more than one byte past the cap, so a bomb is caught at its first byte
    /// over the limit without inflating further.
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, ArchiveError> {
        let room = self.cap.saturating_sub(self.offset).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        loop {
            match self.gz.read(&mut buf[..want]) {
                Ok(n) => {
                    self.offset += n as u64;
                    if self.offset > self.cap {
                        return Err(ArchiveError::UnpackedTooLarge { limit: self.cap });
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(self.truncated("the gzip stream"));
                }
                Err(e) => {
                    return Err(ArchiveError::Gzip {
                        message: e.to_string(),
                    });
                }
            }
        }
    }

    /// Reads until `buf` is full or the stream ends; returns how much was read.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, ArchiveError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read_some(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        Ok(filled)
    }

    /// Reads to the end of the stream; only zero bytes (tar record padding) may remain.
    fn expect_zeros_to_end(&mut self) -> Result<(), ArchiveError> {
        let mut chunk = vec![0u8; ZERO_CHUNK];
        loop {
            let start = self.offset;
            let n = self.read_some(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            if let Some(i) = chunk[..n].iter().position(|&b| b != 0) {
                return Err(ArchiveError::TrailingData {
                    offset: start + i as u64,
                });
            }
        }
    }

    /// Called after the decompressed stream ended (so the gzip trailer's CRC and length were
    /// checked): no bytes may follow the gzip member — no garbage, no second member.
    fn finish(self) -> Result<(), ArchiveError> {
        let rest = self.gz.into_inner();
        if rest.is_empty() {
            Ok(())
        } else {
            Err(ArchiveError::TrailingGzip { extra: rest.len() })
        }
    }

    fn truncated(&self, what: impl Into<String>) -> ArchiveError {
        ArchiveError::Truncated {
            what: what.into(),
            offset: self.offset,
        }
    }
}

/// Validates one header block and returns the entry's path and size.
fn parse_header(h: &[u8; BLOCK], offset: u64) -> Result<(String, u64), ArchiveError> {
    let bad = |problem: String| ArchiveError::BadHeader { offset, problem };
    // The checksum first: a block that fails it is not a header at all.
    let stored = parse_octal(&h[148..156])
        .ok_or_else(|| bad("the checksum field is not an octal number".to_owned()))?;
    let actual: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| u64::from(if (148..156).contains(&i) { b' ' } else { b }))
        .sum();
    if stored != actual {
        return Err(bad(format!(
            "checksum mismatch (stored {stored}, computed {actual}); not a tar header"
        )));
    }
    let posix = &h[257..265] == b"ustar\x0000";
    let gnu = &h[257..265] == b"ustar  \x00";
    if !posix && !gnu {
        return Err(bad(
            "no ustar magic; only ustar (POSIX) and GNU tar headers are supported".to_owned(),
        ));
    }
    // GNU headers reuse the prefix field for other data; only POSIX ustar has a path prefix.
    let name = until_nul(&h[..USTAR_NAME_LEN]);
    let prefix = if posix {
        until_nul(&h[345..345 + USTAR_PREFIX_LEN])
    } else {
        &[]
    };
    let mut raw = Vec::with_capacity(prefix.len() + 1 + name.len());
    if !prefix.is_empty() {
        raw.extend_from_slice(prefix);
        raw.push(b'/');
    }
    raw.extend_from_slice(name);
    let lossy = || quote(&String::from_utf8_lossy(&raw));

    if !matches!(h[156], b'0' | 0) {
        return Err(ArchiveError::UnsupportedEntry {
            path: lossy(),
            kind: entry_kind(h[156]),
        });
    }
    let path = match std::str::from_utf8(&raw) {
        Ok(p) => p.to_owned(),
        Err(_) => {
            return Err(ArchiveError::BadPath {
                path: lossy(),
                problem: "is not valid UTF-8",
            });
        }
    };
    check_path(&path).map_err(|problem| bad_path(&path, problem))?;
    let size = parse_octal(&h[124..136]).ok_or_else(|| {
        bad(format!(
            "the size field of {:?} is not an octal number (base-256 sizes are not supported)",
            quote(&path)
        ))
    })?;
    Ok((path, size))
}

/// Describes a non-regular tar entry type for errors.
fn entry_kind(flag: u8) -> String {
    let kind = match flag {
        b'1' => "hard link",
        b'2' => "symbolic link",
        b'3' => "character device",
        b'4' => "block device",
        b'5' => "directory",
        b'6' => "FIFO",
        b'7' => "contiguous file",
        b'x' => "pax extended header",
        b'g' => "pax global header",
        b'L' => "GNU long-name header",
        b'K' => "GNU long-link-name header",
        b'S' => "GNU sparse file",
        b'D' => "GNU directory dump",
        b'M' => "GNU multi-volume continuation",
        b'V' => "GNU volume label",
        other => return format!("tar entry of unknown type {:?}", char::from(other)),
    };
    kind.to_owned()
}

/// Parses a tar numeric field: optional leading spaces, at least one octal digit, then only NUL
/// or space. Base-256 (high bit set) and empty fields are refused.
fn parse_octal(field: &[u8]) -> Option<u64> {
    let start = field.iter().position(|&b| b != b' ')?;
    let rest = &field[start..];
    let digits = rest
        .iter()
        .position(|&b| !(b'0'..=b'7').contains(&b))
        .unwrap_or(rest.len());
    if digits == 0 || !rest[digits..].iter().all(|&b| b == 0 || b == b' ') {
        return None;
    }
    rest[..digits].iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(8)?.checked_add(u64::from(d - b'0'))
    })
}

fn until_nul(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

// === paths ===

/// The rules every bundle path follows, at pack and unpack time alike: relative, `/`-separated,
/// no empty, `.` or `..` components, no `\`, NUL or other control characters.
fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("is empty");
    }
    if path.starts_with('/') {
        return Err("is absolute; expected a path relative to the bundle root");
    }
    if path.contains('\0') {
        return Err("contains a NUL byte");
    }
    if path.contains('\\') {
        return Err("contains '\\'; expected '/' as the separator");
    }
    if path.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    for part in path.split('/') {
        match part {
            "" => return Err("has an empty component ('//' or a trailing '/')"),
            "." => return Err("has a '.' component"),
            ".." => return Err("has a '..' component"),
            _ => {}
        }
    }
    Ok(())
}

fn bad_path(path: &str, problem: &'static str) -> ArchiveError {
    ArchiveError::BadPath {
        path: quote(path),
        problem,
    }
}

/// Checks the whole file set: no file is a parent directory of another (it could not be written
/// out), and the manifest is at the root.
fn check_tree(files: &BTreeMap<String, Vec<u8>>) -> Result<(), ArchiveError> {
    for path in files.keys() {
        for (i, _) in path.match_indices('/') {
            let parent = &path[..i];
            if files.contains_key(parent) {
                return Err(ArchiveError::FileIsDirectory {
                    path: quote(parent),
                    other: quote(path),
                });
            }
        }
    }
    if !files.contains_key(MANIFEST_FILE_NAME) {
        return Err(ArchiveError::MissingManifest);
    }
    Ok(())
}

// === impl Unpacked ===

impl Unpacked {
    /// All files, by path.
    pub fn files(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.files
    }

    /// One file's contents.
    pub fn get(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(Vec::as_slice)
    }

    /// The bytes of `outpost.toml` (present in every `Unpacked`).
    pub fn manifest(&self) -> &[u8] {
        self.get(MANIFEST_FILE_NAME).unwrap_or_default()
    }

    /// Files in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.files.iter().map(|(p, d)| (p.as_str(), d.as_slice()))
    }

    /// How many files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Never true: a bundle holds at least its manifest.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Sum of the file sizes.
    pub fn total_size(&self) -> u64 {
        self.files.values().map(|d| d.len() as u64).sum()
    }

    pub fn into_files(self) -> BTreeMap<String, Vec<u8>> {
        self.files
    }

    /// The files as [`pack`] takes them: `pack(u.into_entries())` gives the canonical bundle.
    pub fn into_entries(self) -> Vec<(String, Vec<u8>)> {
        self.files.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &[u8] = b"manifest_version = 1\n";

    fn entries(list: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(p, d)| ((*p).to_owned(), d.to_vec()))
            .collect()
    }

    fn sample() -> Vec<(String, Vec<u8>)> {
        entries(&[
            ("outpost.toml", MANIFEST),
            ("hello.wasm", b"\0asm\x0d\0\x01\0"),
            ("static/index.html", b"<h1>hi</h1>"),
            ("static/empty", b""),
            ("static/block", &[7u8; 512]),
        ])
    }

    fn gzip(tar: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(tar).expect("compress");
        gz.finish().expect("compress")
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .expect("gunzip");
        out
    }

    /// A ustar header made with the `tar` crate, with raw path bytes (bypassing its path checks).
    fn header(path: &[u8], size: u64, kind: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..path.len()].copy_from_slice(path);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_entry_type(kind);
        h.set_cksum();
        h
    }

    /// A raw tar stream of `entries`, with or without the end-of-archive marker.
    fn raw_tar(entries: &[(tar::Header, &[u8])], end_marker: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for (h, data) in entries {
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len() + padding(data.len() as u64), 0);
        }
        if end_marker {
            out.resize(out.len() + 2 * BLOCK, 0);
        }
        out
    }

    fn manifest_entry() -> (tar::Header, &'static [u8]) {
        (
            header(
                b"outpost.toml",
                MANIFEST.len() as u64,
                tar::EntryType::Regular,
            ),
            MANIFEST,
        )
    }

    /// A gzipped tar of the manifest plus `extra`, end marker included.
    fn bundle_with(extra: (tar::Header, &[u8])) -> Vec<u8> {
        gzip(&raw_tar(&[manifest_entry(), extra], true))
    }

    fn unpack_default(bytes: &[u8]) -> Result<Unpacked, ArchiveError> {
        unpack(bytes, &Limits::default())
    }

    #[test]
    fn packing_is_deterministic_and_order_independent() {
        let a = pack(sample()).expect("pack");
        let b = pack(sample()).expect("pack");
        let mut reversed = sample();
        reversed.reverse();
        let c = pack(reversed).expect("pack");
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(digest(&a), digest(&c));
        let mut changed = sample();
        changed[1].1.push(0);
        assert_ne!(digest(&pack(changed).expect("pack")), digest(&a));
    }

    #[test]
    fn gzip_header_is_fixed() {
        let bytes = pack(sample()).expect("pack");
        // magic, deflate, no flags (so no file name), mtime 0, XFL 0 for level 6, OS unknown.
        assert_eq!(&bytes[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    }

    #[test]
    fn round_trip_gives_sorted_files() {
        let bytes = pack(sample()).expect("pack");
        let u = unpack_default(&bytes).expect("unpack");
        let paths: Vec<&str> = u.iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "hello.wasm",
                "outpost.toml",
                "static/block",
                "static/empty",
                "static/index.html"
            ]
        );
        assert_eq!(u.manifest(), MANIFEST);
        assert_eq!(u.get("static/block"), Some(&[7u8; 512][..]));
        assert_eq!(u.get("static/empty"), Some(&b""[..]));
        assert_eq!(u.get("missing"), None);
        assert_eq!(u.len(), 5);
        assert!(!u.is_empty());
        assert_eq!(u.total_size(), (MANIFEST.len() + 8 + 11 + 512) as u64);
        assert_eq!(u.files().len(), 5);
        let repacked = pack(u.clone().into_entries()).expect("repack");
        assert_eq!(repacked, bytes, "unpack then pack is the identity");
        assert_eq!(u.into_files().len(), 5);
    }

    #[test]
    fn output_is_a_plain_ustar_that_the_tar_crate_reads() {
        let long = format!("{}/{}", "d".repeat(150), "f".repeat(100));
        let mut files = sample();
        files.push((long.clone(), b"long".to_vec()));
        let bytes = pack(files).expect("pack");
        let tar_bytes = gunzip(&bytes);
        assert_eq!(tar_bytes.len() % BLOCK, 0);
        assert!(tar_bytes.ends_with(&[0u8; 2 * BLOCK]));
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let h = entry.header();
            assert_eq!(h.entry_type(), tar::EntryType::Regular);
            assert_eq!(h.mode().expect("mode"), 0o644);
            assert_eq!(h.uid().expect("uid"), 0);
            assert_eq!(h.gid().expect("gid"), 0);
            assert_eq!(h.mtime().expect("mtime"), 0);
            assert_eq!(h.username_bytes(), Some(&b""[..]));
            assert_eq!(h.groupname_bytes(), Some(&b""[..]));
            assert!(h.as_ustar().is_some());
            let path = String::from_utf8(entry.path_bytes().into_owned()).expect("utf8");
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("read");
            seen.push((path, data));
        }
        let mut expected = sample();
        expected.push((long.clone(), b"long".to_vec()));
        expected.sort();
        assert_eq!(seen, expected);
        let u = unpack_default(&bytes).expect("unpack");
        assert_eq!(u.get(&long), Some(&b"long"[..]));
    }

    #[test]
    fn archives_from_the_tar_crate_unpack() {
        for gnu in [false, true] {
            let mut builder = tar::Builder::new(Vec::new());
            for (path, data) in sample() {
                let mut h = if gnu {
                    tar::Header::new_gnu()
                } else {
                    tar::Header::new_ustar()
                };
                h.set_size(data.len() as u64);
                h.set_mode(0o600);
                h.set_mtime(1_700_000_000);
                h.set_entry_type(tar::EntryType::Regular);
                builder
                    .append_data(&mut h, &path, &data[..])
                    .expect("append");
            }
            let mut tar_bytes = builder.into_inner().expect("finish");
            // GNU tar pads to a 10 KiB record with zeros; that padding is accepted.
            tar_bytes.resize(tar_bytes.len().next_multiple_of(10240), 0);
            let u = unpack_default(&gzip(&tar_bytes)).expect("unpack");
            assert_eq!(u.into_entries(), {
                let mut s = sample();
                s.sort();
                s
            });
        }
    }

    #[test]
    fn pack_refuses_bad_paths() {
        let cases: &[(&str, &str)] = &[
            ("", "is empty"),
            ("/etc/passwd", "is absolute"),
            ("../x", "'..' component"),
            ("a/../../x", "'..' component"),
            ("./x", "'.' component"),
            ("a/./x", "'.' component"),
            ("a//x", "empty component"),
            ("a/", "empty component"),
            ("a\\x", "contains '\\'"),
            ("a\0x", "NUL"),
            ("a\nx", "control character"),
        ];
        for (path, problem) in cases {
            let mut files = sample();
            files.push(((*path).to_owned(), b"x".to_vec()));
            let err = pack(files).expect_err(path);
            assert!(
                matches!(&err, ArchiveError::BadPath { problem: p, .. } if p.contains(problem)),
                "{path:?}: {err}"
            );
            assert_eq!(err.label(), "bad_path");
        }
    }

    #[test]
    fn pack_refuses_duplicates_conflicts_long_paths_and_no_manifest() {
        let mut files = sample();
        files.push(("hello.wasm".to_owned(), b"again".to_vec()));
        assert_eq!(
            pack(files),
            Err(ArchiveError::Duplicate {
                path: "hello.wasm".to_owned()
            })
        );

        let mut files = sample();
        files.push(("hello.wasm/x".to_owned(), b"x".to_vec()));
        assert_eq!(
            pack(files),
            Err(ArchiveError::FileIsDirectory {
                path: "hello.wasm".to_owned(),
                other: "hello.wasm/x".to_owned()
            })
        );

        for long in [
            "n".repeat(101),
            format!("{}/{}", "d".repeat(10), "n".repeat(101)),
            format!("{}/{}", "d".repeat(156), "n".repeat(10)),
        ] {
            let mut files = sample();
            files.push((long.clone(), b"x".to_vec()));
            let err = pack(files).expect_err("too long");
            assert!(
                matches!(err, ArchiveError::PathTooLong { len, .. } if len == long.len()),
                "{err}"
            );
        }
        // Exactly at the limits: a 100-byte name, a 155-byte prefix.
        let mut files = sample();
        let edge = format!("{}/{}", "d".repeat(155), "n".repeat(100));
        files.push((edge.clone(), b"x".to_vec()));
        files.push(("m".repeat(100), b"y".to_vec()));
        let u = unpack_default(&pack(files).expect("edge")).expect("unpack");
        assert_eq!(u.get(&edge), Some(&b"x"[..]));
        assert_eq!(u.get(&"m".repeat(100)), Some(&b"y"[..]));

        let no_manifest = entries(&[("hello.wasm", b"x"), ("sub/outpost.toml", MANIFEST)]);
        assert_eq!(pack(no_manifest), Err(ArchiveError::MissingManifest));
        assert_eq!(pack(Vec::new()), Err(ArchiveError::MissingManifest));
    }

    #[test]
    fn unpack_refuses_links_directories_devices_and_extensions() {
        use tar::EntryType as E;
        let cases = [
            (E::Symlink, "symbolic link"),
            (E::Link, "hard link"),
            (E::Directory, "directory"),
            (E::Char, "character device"),
            (E::Block, "block device"),
            (E::Fifo, "FIFO"),
            (E::Continuous, "contiguous file"),
            (E::XHeader, "pax extended header"),
            (E::XGlobalHeader, "pax global header"),
            (E::GNULongName, "GNU long-name header"),
            (E::GNULongLink, "GNU long-link-name header"),
            (E::GNUSparse, "GNU sparse file"),
            (E::new(b'Z'), "unknown type 'Z'"),
        ];
        for (kind, text) in cases {
            let mut h = header(b"evil", 0, kind);
            if kind == E::Symlink || kind == E::Link {
                h.set_link_name("/etc/passwd").expect("link name");
                h.set_cksum();
            }
            let err = unpack_default(&bundle_with((h, b""))).expect_err(text);
            match &err {
                ArchiveError::UnsupportedEntry { path, kind } => {
                    assert_eq!(path, "evil");
                    assert!(kind.contains(text), "{kind}");
                }
                other => panic!("{text}: {other}"),
            }
            assert!(err.to_string().contains("regular files only"), "{err}");
        }
    }

    #[test]
    fn real_gnu_long_name_archives_are_refused() {
        let mut builder = tar::Builder::new(Vec::new());
        let (mh, md) = manifest_entry();
        builder.append(&mh, md).expect("append");
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut h, "x".repeat(150), &b"x"[..])
            .expect("append");
        let bytes = gzip(&builder.into_inner().expect("finish"));
        let err = unpack_default(&bytes).expect_err("long name");
        assert!(
            matches!(&err, ArchiveError::UnsupportedEntry { kind, .. } if kind == "GNU long-name header"),
            "{err}"
        );
    }

    #[test]
    fn unpack_refuses_bad_paths() {
        let cases: &[(&[u8], &str)] = &[
            (b"../x", "'..' component"),
            (b"a/../../x", "'..' component"),
            (b"/etc/x", "is absolute"),
            (b"./x", "'.' component"),
            (b"a//x", "empty component"),
            (b"a\\..\\x", "contains '\\'"),
            (b"a\x1bx", "control character"),
            (b"\xff\xfe", "not valid UTF-8"),
        ];
        for (path, problem) in cases {
            let bytes = bundle_with((header(path, 1, tar::EntryType::Regular), b"x"));
            let err = unpack_default(&bytes).expect_err(problem);
            assert!(
                matches!(&err, ArchiveError::BadPath { problem: p, .. } if p.contains(problem)),
                "{path:?}: {err}"
            );
        }
        // An empty name: the checksum passes, the path does not.
        let bytes = bundle_with((header(b"", 1, tar::EntryType::Regular), b"x"));
        assert!(matches!(
            unpack_default(&bytes),
            Err(ArchiveError::BadPath {
                problem: "is empty",
                ..
            })
        ));
    }

    #[test]
    fn unpack_refuses_duplicates_and_file_directory_conflicts() {
        let bytes = bundle_with((header(b"outpost.toml", 1, tar::EntryType::Regular), b"x"));
        assert_eq!(
            unpack_default(&bytes),
            Err(ArchiveError::Duplicate {
                path: "outpost.toml".to_owned()
            })
        );
        let bytes = bundle_with((header(b"outpost.toml/x", 1, tar::EntryType::Regular), b"x"));
        assert!(matches!(
            unpack_default(&bytes),
            Err(ArchiveError::FileIsDirectory { .. })
        ));
    }

    #[test]
    fn unpack_refuses_a_missing_manifest() {
        let only_wasm = [(header(b"a.wasm", 1, tar::EntryType::Regular), &b"x"[..])];
        let bytes = gzip(&raw_tar(&only_wasm, true));
        assert_eq!(unpack_default(&bytes), Err(ArchiveError::MissingManifest));
        let nested = [(
            header(
                b"sub/outpost.toml",
                MANIFEST.len() as u64,
                tar::EntryType::Regular,
            ),
            MANIFEST,
        )];
        let bytes = gzip(&raw_tar(&nested, true));
        assert_eq!(unpack_default(&bytes), Err(ArchiveError::MissingManifest));
        let empty = gzip(&[0u8; 2 * BLOCK]);
        assert_eq!(unpack_default(&empty), Err(ArchiveError::MissingManifest));
        assert_eq!(
            ArchiveError::MissingManifest.to_string(),
            "bundle has no outpost.toml at its root"
        );
    }

    #[test]
    fn truncated_tar_streams_are_refused() {
        let (h, d) = (
            header(b"a.bin", 1000, tar::EntryType::Regular),
            &[1u8; 1000][..],
        );
        let full = raw_tar(&[manifest_entry(), (h, d)], true);
        // 0: manifest header, 512: its data, 1024: a.bin header, 1536: its 1000 bytes of data,
        // 2536: padding, 2560: the end-of-archive marker, 3584: the end.
        let cases: &[(usize, &str)] = &[
            (0, "end-of-archive marker"),
            (100, "a tar header"),
            (512, "the contents of \"outpost.toml\""),
            (1024, "end-of-archive marker"),
            (1100, "a tar header"),
            (1536, "the contents of \"a.bin\""),
            (2000, "the contents of \"a.bin\""),
            (2536, "the padding after \"a.bin\""),
            (2560, "end-of-archive marker"),
            (2560 + 512, "end-of-archive marker"),
            (2560 + 1000, "end-of-archive marker"),
        ];
        assert_eq!(full.len(), 2560 + 1024);
        for (cut, what) in cases {
            let err = unpack_default(&gzip(&full[..*cut])).expect_err("truncated");
            match &err {
                ArchiveError::Truncated { what: w, .. } => assert!(w.contains(what), "{cut}: {w}"),
                other => panic!("{cut}: {other}"),
            }
            assert_eq!(err.label(), "truncated");
        }
        assert!(unpack_default(&gzip(&full)).is_ok());
    }

    #[test]
    fn every_truncation_of_a_bundle_is_refused() {
        let bytes = pack(sample()).expect("pack");
        for cut in 0..bytes.len() {
            let err = unpack_default(&bytes[..cut]).expect_err("truncated");
            assert!(
                matches!(
                    err,
                    ArchiveError::NotGzip
                        | ArchiveError::Truncated { .. }
                        | ArchiveError::Gzip { .. }
                ),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn corrupt_gzip_is_refused() {
        assert_eq!(unpack_default(b"PK\x03\x04"), Err(ArchiveError::NotGzip));
        assert_eq!(unpack_default(b""), Err(ArchiveError::NotGzip));
        let bytes = pack(sample()).expect("pack");
        // Flipping a byte of the CRC (8 bytes from the end) leaves the data intact but the
        // trailer wrong.
        let mut bad_crc = bytes.clone();
        let at = bad_crc.len() - 8;
        bad_crc[at] ^= 1;
        assert!(matches!(
            unpack_default(&bad_crc),
            Err(ArchiveError::Gzip { .. })
        ));
        let mut bad_len = bytes.clone();
        let at = bad_len.len() - 1;
        bad_len[at] ^= 1;
        assert!(matches!(
            unpack_default(&bad_len),
            Err(ArchiveError::Gzip { .. })
        ));
    }

    #[test]
    fn trailing_data_is_refused() {
        let bytes = pack(sample()).expect("pack");
        let mut garbage = bytes.clone();
        garbage.extend_from_slice(b"junk");
        assert_eq!(
            unpack_default(&garbage),
            Err(ArchiveError::TrailingGzip { extra: 4 })
        );
        let mut two_members = bytes.clone();
        two_members.extend_from_slice(&gzip(b"more"));
        assert!(matches!(
            unpack_default(&two_members),
            Err(ArchiveError::TrailingGzip { .. })
        ));

        let mut tar_bytes = gunzip(&bytes);
        let end = tar_bytes.len();
        tar_bytes.extend_from_slice(&[0u8; 700]);
        tar_bytes.push(b'!');
        assert_eq!(
            unpack_default(&gzip(&tar_bytes)),
            Err(ArchiveError::TrailingData {
                offset: end as u64 + 700
            })
        );

        // A single zero block followed by data is not an end-of-archive marker.
        let mut tar_bytes = gunzip(&bytes);
        tar_bytes.truncate(tar_bytes.len() - BLOCK);
        let (h, _) = manifest_entry();
        tar_bytes.extend_from_slice(h.as_bytes());
        let err = unpack_default(&gzip(&tar_bytes)).expect_err("one zero block");
        assert!(err.to_string().contains("second one"), "{err}");
    }

    #[test]
    fn bad_headers_are_refused() {
        let (mut h, d) = manifest_entry();
        h.as_old_mut().cksum[0] = b'7';
        let err = unpack_default(&gzip(&raw_tar(&[(h, d)], true))).expect_err("checksum");
        assert!(err.to_string().contains("checksum mismatch"), "{err}");

        // A v7 header (no magic) with a valid checksum.
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..12].copy_from_slice(b"outpost.toml");
        h.set_size(MANIFEST.len() as u64);
        h.set_cksum();
        let err = unpack_default(&gzip(&raw_tar(&[(h, MANIFEST)], true))).expect_err("v7");
        assert!(err.to_string().contains("no ustar magic"), "{err}");

        // A base-256 size.
        let (mut h, d) = manifest_entry();
        h.as_old_mut().size = [0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 21];
        h.set_cksum();
        let err = unpack_default(&gzip(&raw_tar(&[(h, d)], true))).expect_err("base-256");
        assert!(err.to_string().contains("base-256"), "{err}");
        assert_eq!(err.label(), "malformed");
    }

    #[test]
    fn octal_fields_parse_strictly() {
        assert_eq!(parse_octal(b"0000644\0"), Some(0o644));
        assert_eq!(parse_octal(b"   644 \0"), Some(0o644));
        assert_eq!(parse_octal(b"00000000012"), Some(10));
        assert_eq!(parse_octal(b"\0\0\0\0"), None);
        assert_eq!(parse_octal(b"        "), None);
        assert_eq!(parse_octal(b"0008\0"), None);
        assert_eq!(parse_octal(b"12 3\0"), None);
        assert_eq!(parse_octal(b"77777777777777777777777"), None, "overflow");
    }

    #[test]
    fn limits_are_enforced() {
        let bytes = pack(sample()).expect("pack");
        fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
            let mut l = Limits::default();
            f(&mut l);
            l
        }
        let size = bytes.len() as u64;
        assert_eq!(
            unpack(&bytes, &limits(|l| l.max_compressed = 100)),
            Err(ArchiveError::TooLarge { size, limit: 100 })
        );
        assert!(
            unpack(
                &bytes,
                &Limits {
                    max_compressed: size,
                    ..Limits::default()
                }
            )
            .is_ok()
        );
        assert_eq!(
            unpack(&bytes, &limits(|l| l.max_entries = 4)),
            Err(ArchiveError::TooManyEntries { limit: 4 })
        );
        assert!(unpack(&bytes, &limits(|l| l.max_entries = 5)).is_ok());
        assert_eq!(
            unpack(&bytes, &limits(|l| l.max_entry = 511)),
            Err(ArchiveError::EntryTooLarge {
                path: "static/block".to_owned(),
                size: 512,
                limit: 511
            })
        );
        assert!(unpack(&bytes, &limits(|l| l.max_entry = 512)).is_ok());
        // The tar stream of `sample()` is 5 headers + 4 data blocks + the 2-block marker.
        let stream = 11 * BLOCK as u64;
        assert_eq!(gunzip(&bytes).len() as u64, stream);
        assert!(unpack(&bytes, &limits(|l| l.max_unpacked = stream)).is_ok());
        assert_eq!(
            unpack(&bytes, &limits(|l| l.max_unpacked = stream - 1)),
            Err(ArchiveError::UnpackedTooLarge { limit: stream - 1 })
        );
    }

    #[test]
    fn too_many_entries_stops_at_the_first_extra_header() {
        let small: Vec<(tar::Header, &[u8])> = (0..50)
            .map(|i| {
                (
                    header(format!("f{i}").as_bytes(), 0, tar::EntryType::Regular),
                    &b""[..],
                )
            })
            .collect();
        let mut all = vec![manifest_entry()];
        all.extend(small);
        let bytes = gzip(&raw_tar(&all, true));
        let limits = Limits {
            max_entries: 10,
            ..Limits::default()
        };
        assert_eq!(
            unpack(&bytes, &limits),
            Err(ArchiveError::TooManyEntries { limit: 10 })
        );
    }

    #[test]
    fn a_declared_size_over_the_cap_is_refused_before_allocating() {
        // The header claims 100 MiB; the stream holds none of it.
        let h = header(b"big.wasm", 100 * MIB, tar::EntryType::Regular);
        let bytes = gzip(&raw_tar(&[manifest_entry(), (h, &[])], false));
        let limits = Limits {
            max_unpacked: 10 * MIB,
            ..Limits::default()
        };
        assert_eq!(
            unpack(&bytes, &limits),
            Err(ArchiveError::UnpackedTooLarge { limit: 10 * MIB })
        );
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_cap() {
        // 64 MiB of zeros compresses to ~64 KiB; after a valid archive they look like padding.
        let mut tar_bytes = gunzip(&pack(sample()).expect("pack"));
        tar_bytes.resize(tar_bytes.len() + 64 * MIB as usize, 0);
        let bomb = gzip(&tar_bytes);
        assert!(bomb.len() < (MIB as usize), "{}", bomb.len());
        let limits = Limits {
            max_unpacked: 4 * MIB,
            ..Limits::default()
        };
        assert_eq!(
            unpack(&bomb, &limits),
            Err(ArchiveError::UnpackedTooLarge { limit: 4 * MIB })
        );
        // Decompression stops one byte past the cap.
        let mut src = Source::new(&bomb, 4 * MIB);
        let mut buf = vec![0u8; 1 << 16];
        let err = loop {
            match src.read_some(&mut buf) {
                Ok(0) => panic!("bomb ended"),
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert_eq!(err, ArchiveError::UnpackedTooLarge { limit: 4 * MIB });
        assert_eq!(src.offset, 4 * MIB + 1);

        // The same bomb inside one entry's declared data.
        let h = header(b"zeros", 16 * MIB, tar::EntryType::Regular);
        let mut tar_bytes = raw_tar(&[manifest_entry(), (h, &[])], false);
        tar_bytes.resize(tar_bytes.len() + 16 * MIB as usize, 0);
        tar_bytes.resize(tar_bytes.len() + 2 * BLOCK, 0);
        let limits = Limits {
            max_unpacked: 4 * MIB,
            max_entry: 128 * MIB,
            ..Limits::default()
        };
        assert_eq!(
            unpack(&gzip(&tar_bytes), &limits),
            Err(ArchiveError::UnpackedTooLarge { limit: 4 * MIB })
        );
    }

    #[test]
    fn errors_quote_untrusted_paths_briefly() {
        let long = vec![b'a'; 100];
        let err = unpack_default(&bundle_with((
            header(&long, 0, tar::EntryType::Symlink),
            b"",
        )))
        .expect_err("symlink");
        assert!(err.to_string().len() < 200, "{err}");
        let err = unpack_default(&bundle_with((
            header(b"a\x07b", 0, tar::EntryType::Regular),
            b"",
        )))
        .expect_err("bell");
        assert!(err.to_string().contains("\\u{7}"), "{err}");
    }
}
