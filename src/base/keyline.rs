//! A key named in a config file or on a command line: the public key line itself
//! (`outpost-public-key-v1 <id> <base64>`), or the path of a `.pub` file holding one.
//!
//! Owns: telling the two apart, making a relative key file path absolute, and reading the text
//! of a named key — the same rules for `[trust] keys`, `[control_plane] key`, the control
//! plane's `operators` and `--trust`.
//! Must not: parse or judge the key (that is `bundle::sign::keys`, which every caller applies to
//! the text this returns), or cache anything.
#![forbid(unsafe_code)]

use std::path::Path;

/// First word of a public key line: `outpost-public-key-v1 <key id> <base64 key>`.
pub const PUBLIC_KEY_PREFIX: &str = "outpost-public-key-v1";

/// Whether `named` is a key line (its first word is [`PUBLIC_KEY_PREFIX`]) rather than a path.
pub fn is_key_line(named: &str) -> bool {
    named
        .strip_prefix(PUBLIC_KEY_PREFIX)
        .is_some_and(|rest| rest.starts_with(' '))
}

/// Makes a relative key file path absolute under `base` (the config file's directory); a key
/// line and an absolute path are left as they are.
pub fn resolve_relative(named: &mut String, base: &Path) {
    if !is_key_line(named) && Path::new(named.as_str()).is_relative() {
        *named = base.join(&*named).to_string_lossy().into_owned();
    }
}

/// The key text `named` stands for, without its line ending: the line itself, or the content
/// of the file it names. The error says `cannot read <path>: <why>`.
pub fn read_text(named: &str) -> Result<String, String> {
    if is_key_line(named) {
        return Ok(named.trim_end().to_owned());
    }
    std::fs::read_to_string(named)
        .map(|text| text.trim_end().to_owned())
        .map_err(|e| format!("cannot read {named}: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const LINE: &str = "outpost-public-key-v1 0102030405060708 AAAA";

    #[test]
    fn a_key_line_is_told_from_a_path() {
        assert!(is_key_line(LINE));
        assert!(!is_key_line("keys/release.pub"));
        assert!(!is_key_line("outpost-public-key-v1.pub"));
        assert!(!is_key_line(PUBLIC_KEY_PREFIX));
    }

    #[test]
    fn only_relative_paths_are_resolved() {
        let base = Path::new("/etc/outpost");
        for (given, want) in [
            ("keys/a.pub", "/etc/outpost/keys/a.pub"),
            ("/srv/b.pub", "/srv/b.pub"),
            (LINE, LINE),
        ] {
            let mut named = given.to_owned();
            resolve_relative(&mut named, base);
            assert_eq!(named, want);
        }
    }

    #[test]
    fn the_text_is_the_line_or_the_file() {
        assert_eq!(read_text(&format!("{LINE}\n")).unwrap(), LINE);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pub");
        std::fs::write(&path, format!("{LINE}\r\n")).unwrap();
        assert_eq!(read_text(path.to_str().unwrap()).unwrap(), LINE);
        let missing = dir.path().join("missing.pub");
        let err = read_text(missing.to_str().unwrap()).unwrap_err();
        assert!(
            err.starts_with(&format!("cannot read {}: ", missing.display())),
            "{err}"
        );
    }
}
