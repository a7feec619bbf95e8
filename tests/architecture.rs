//! The module graph, held against `docs/architecture.md`: every `crate::…` path in the library's
//! non-test code names a top-level module, and a module may only name those listed *below* it in
//! the doc's `layers` block. Exceptions are listed one per line in the doc's `exceptions` block
//! (file and target module, with the reason); an exception that no longer occurs fails the test
//! too, so the list only shrinks.
//!
//! Reads source text only (no build, no network): a `use crate::x` or `crate::x::…` in code (not
//! in comments, string literals, or the trailing `#[cfg(test)] mod tests`) is an edge.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const DOC: &str = "docs/architecture.md";

/// The lines of the fenced block opened by "```NAME" in the doc.
fn fenced_block(doc: &str, name: &str) -> Vec<String> {
    let open = format!("```{name}");
    let mut lines = doc.lines().skip_while(|l| l.trim() != open);
    assert!(
        lines.next().is_some(),
        "{DOC} has no ```{name} block (the module-graph check reads it)"
    );
    lines
        .take_while(|l| l.trim() != "```")
        .map(|l| l.split('#').next().unwrap_or("").trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// `src/a/b.rs` → `a`; `src/lib.rs` and `src/main.rs` → None (the crate root names every module).
fn top_module(root: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(root.join("src")).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    if rel.components().count() == 1 {
        let stem = first.strip_suffix(".rs")?;
        return (stem != "lib" && stem != "main").then(|| stem.to_owned());
    }
    Some(first.to_owned())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The code of `text` without comments, string and char literals, and the trailing test module.
fn code_only(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'r' if matches!(b.get(i + 1), Some(b'#' | b'"'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                // Raw string r#"…"#: skip to the closing quote and as many #.
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                j += 1;
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                i = j + close.len();
                out.push_str("\"\"");
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            b'\'' if b.get(i + 2) == Some(&b'\'') || b.get(i + 1) == Some(&b'\\') => {
                // A char literal ('x' or '\n'); a lifetime ('a) has no closing quote nearby.
                let mut j = i + 1;
                if b[j] == b'\\' {
                    j += 1;
                }
                while j < b.len() && b[j] != b'\'' {
                    j += 1;
                }
                i = j + 1;
                out.push_str("' '");
            }
            c => {
                // Keep multi-byte UTF-8 intact by copying whole chars.
                let ch_len = text[i..].chars().next().map_or(1, char::len_utf8);
                if ch_len == 1 {
                    out.push(c as char);
                } else {
                    out.push_str(&text[i..i + ch_len]);
                }
                i += ch_len;
            }
        }
    }
    out
}

/// Top-level modules named by `crate::x` paths in `code`, with the line of the first use,
/// including the members of grouped imports (`use crate::{a::b, c}`).
fn crate_refs(code: &str) -> BTreeMap<String, usize> {
    let mut found = BTreeMap::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (n, line) in code.lines().enumerate() {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().last();
            rest = &rest[i + "crate::".len()..];
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue; // `outpost_crate::…` or similar, not a path root
            }
            if let Some(group) = rest.strip_prefix('{') {
                // Grouped: the idents at depth 0 of the group, possibly over several lines.
                let tail: String = code.lines().skip(n).collect::<Vec<_>>().join("\n");
                let start = tail.find(group).unwrap_or(0);
                let mut depth = 0;
                let mut item_start = true;
                for (k, c) in tail[start..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => item_start = true,
                        c if item_start && (c.is_ascii_alphabetic() || c == '_') => {
                            let m = ident(&tail[start + k..]);
                            found.entry(m).or_insert(n + 1);
                            item_start = false;
                        }
                        _ => {}
                    }
                }
            } else {
                let m = ident(rest);
                if !m.is_empty() {
                    found.entry(m).or_insert(n + 1);
                }
            }
        }
    }
    found
}

#[test]
fn module_imports_follow_the_layers_in_docs_architecture_md() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join(DOC)).unwrap();
    let layers = fenced_block(&doc, "layers");
    let rank = |m: &str| layers.iter().position(|l| l == m);
    let mut exceptions: BTreeSet<(String, String)> = BTreeSet::new();
    for line in fenced_block(&doc, "exceptions") {
        let (file, target) = line
            .split_once("->")
            .unwrap_or_else(|| panic!("{DOC}: exception {line:?} is not `src/FILE.rs -> module`"));
        exceptions.insert((file.trim().to_owned(), target.trim().to_owned()));
    }

    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    let mut problems = Vec::new();
    let mut used_exceptions = BTreeSet::new();
    let mut modules_seen = BTreeSet::new();
    for file in &files {
        let Some(from) = top_module(root, file) else {
            continue;
        };
        modules_seen.insert(from.clone());
        let rel = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let Some(from_rank) = rank(&from) else {
            problems.push(format!(
                "{rel}: module `{from}` is not in the ```layers block of {DOC}"
            ));
            continue;
        };
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        for (to, line) in crate_refs(&code) {
            if to == from {
                continue;
            }
            let Some(to_rank) = rank(&to) else {
                problems.push(format!(
                    "{rel}:{line}: names `crate::{to}`, which is not in the ```layers block of {DOC}"
                ));
                continue;
            };
            if to_rank > from_rank {
                continue; // listed below: allowed
            }
            let key = (rel.clone(), to.clone());
            if exceptions.contains(&key) {
                used_exceptions.insert(key);
                continue;
            }
            problems.push(format!(
                "{rel}:{line}: `{from}` imports `crate::{to}`, which is not below it in {DOC}'s \
                 layers ({})",
                layers.join(" > ")
            ));
        }
    }
    for stale in exceptions.difference(&used_exceptions) {
        problems.push(format!(
            "{DOC}: exception `{} -> {}` no longer occurs; delete it from the ```exceptions block",
            stale.0, stale.1
        ));
    }
    for m in &layers {
        if !modules_seen.contains(m) {
            problems.push(format!(
                "{DOC}: layer `{m}` has no module under src/ (remove it or create it)"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the module graph breaks its layers:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_scanner_sees_paths_and_skips_comments_strings_and_tests() {
    let src = r##"
//! Links to [`crate::sync`] in docs are not imports.
use crate::base::units;
use crate::{bundle::Digest,
    store};
fn f() { let s = "crate::control"; let r = r#"crate::cli"#; crate::ops::metrics::x(); }
/* crate::serve */
#[cfg(test)]
mod tests { use crate::node; }
"##;
    let refs: Vec<String> = crate_refs(&code_only(src)).into_keys().collect();
    assert_eq!(refs, ["base", "bundle", "ops", "store"]);
}
