//! What kind of WebAssembly a file holds, from its first bytes: a component (binary, or WAT text
//! for tests and hand-written components), a core module, or not WebAssembly at all.
//!
//! Owns: the header rule every path that accepts a component shares — a bundle's contents check
//! (before anything is written) and the compiler (before Cranelift sees the bytes) — and its
//! error text, which tells a user who built a core module what to build instead; and which WASI
//! HTTP handler a component exports ([`http_handler`]), read from its top-level export names so
//! the runtime can pick the engine before compiling.
//! Must not: validate or compile anything (wasmtime does that, in `runtime`), or read more of a
//! component than its section headers and export names.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

/// Why a file is not a component; the text names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAComponent {
    #[error(
        "{path}: this is a core WebAssembly module, not a component; build for wasm32-wasip2 \
         (or run `wasm-tools component new`) so it exports wasi:http/incoming-handler"
    )]
    CoreModule { path: PathBuf },
    #[error("{path}: not a WebAssembly file (bad magic bytes)")]
    NotWasm { path: PathBuf },
    #[error("{path}: invalid component: unknown WebAssembly binary version")]
    UnknownVersion { path: PathBuf },
}

/// Accepts a component (binary, or WAT text starting with something other than `(module`);
/// refuses core modules and anything that is not WebAssembly. `path` is only for the error.
pub fn check_component(path: &Path, bytes: &[u8]) -> Result<(), NotAComponent> {
    let path = || path.to_owned();
    if bytes.starts_with(b"\0asm") {
        // Bytes 4..8: version + layer. Core modules are version 1, layer 0; components layer 1.
        return match bytes.get(4..8) {
            Some([1, 0, 0, 0]) => Err(NotAComponent::CoreModule { path: path() }),
            Some([_, _, 1, 0]) => Ok(()),
            _ => Err(NotAComponent::UnknownVersion { path: path() }),
        };
    }
    // WAT text is accepted (useful for tests and hand-written components); anything else is not.
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err(NotAComponent::NotWasm { path: path() });
    };
    let text = text.trim_start();
    if !(text.starts_with('(') || text.starts_with(";;")) {
        return Err(NotAComponent::NotWasm { path: path() });
    }
    let first_form = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with(";;"));
    if first_form.is_some_and(|l| l.starts_with("(module")) {
        return Err(NotAComponent::CoreModule { path: path() });
    }
    Ok(())
}

/// The HTTP handler interface a component exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpHandler {
    /// `wasi:http/incoming-handler@0.2.x` (the `wasi:http/proxy` world), and no WASI 0.3 handler.
    Wasi02,
    /// `wasi:http/handler@0.3.x` (WASI 0.3).
    Wasi03,
}

/// The WASI HTTP handler the component in `bytes` exports at its top level; `None` for WAT text,
/// for bytes that do not parse as far as the exports, or for a component exporting neither (the
/// loader then reports what is wrong with it). A component exporting both is `Wasi03`.
pub fn http_handler(bytes: &[u8]) -> Option<HttpHandler> {
    use wasmparser::{Parser, Payload};
    if !bytes.starts_with(b"\0asm") {
        return None;
    }
    let (mut depth, mut found) = (0usize, None);
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.ok()? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) if depth == 0 => break,
            Payload::End(_) => depth -= 1,
            Payload::ComponentExportSection(exports) if depth == 0 => {
                for export in exports {
                    let name = export.ok()?.name.name;
                    if name.starts_with("wasi:http/handler@0.3") {
                        return Some(HttpHandler::Wasi03);
                    }
                    if name.starts_with("wasi:http/incoming-handler@0.2") {
                        found = Some(HttpHandler::Wasi02);
                    }
                }
            }
            _ => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exported_http_handler_is_read_from_the_export_names() {
        let app = |name: &str| {
            std::fs::read(Path::new(env!("OUTPOST_TESTBED_APPS_DIR")).join(format!("{name}.wasm")))
                .expect("test-bed app built by build.rs")
        };
        assert_eq!(http_handler(&app("hello")), Some(HttpHandler::Wasi02));
        assert_eq!(http_handler(&app("fetch")), Some(HttpHandler::Wasi02));
        assert_eq!(http_handler(&app("hello_p3")), Some(HttpHandler::Wasi03));
        assert_eq!(http_handler(&app("echo_p3")), Some(HttpHandler::Wasi03));
        // Text, a core module, a component exporting nothing, a truncated component.
        assert_eq!(http_handler(b"(component)"), None);
        assert_eq!(http_handler(b"\0asm\x01\0\0\0"), None);
        assert_eq!(http_handler(b"\0asm\x0d\0\x01\0"), None);
        let hello = app("hello_p3");
        assert_eq!(http_handler(&hello[..hello.len() / 2]), None);
    }

    #[test]
    fn core_modules_and_garbage_are_refused() {
        let p = Path::new("x.wasm");
        let kind = |b: &[u8]| check_component(p, b);
        assert!(matches!(
            kind(b"\0asm\x01\0\0\0"),
            Err(NotAComponent::CoreModule { .. })
        ));
        assert!(matches!(
            kind(b";; hi\n(module)"),
            Err(NotAComponent::CoreModule { .. })
        ));
        assert!(matches!(
            kind(b"MZ\x90\0"),
            Err(NotAComponent::NotWasm { .. })
        ));
        assert!(matches!(
            kind(b"\xff\xfe"),
            Err(NotAComponent::NotWasm { .. })
        ));
        assert!(matches!(
            kind(b"\0asm\x02\0\0\0"),
            Err(NotAComponent::UnknownVersion { .. })
        ));
        assert!(kind(b"\0asm\x0d\0\x01\0").is_ok());
        assert!(kind(b"(component)").is_ok());
        assert_eq!(
            kind(b"MZ").unwrap_err().to_string(),
            "x.wasm: not a WebAssembly file (bad magic bytes)"
        );
    }
}
