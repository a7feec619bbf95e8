//! Python and JavaScript guests for the tests: `testbed/polyglot/build.sh` builds them from the
//! pinned componentize-py and componentize-js into `<cargo target dir>/testbed-polyglot`, once
//! per test binary (the script itself rebuilds only the components whose inputs changed, and
//! installs the toolchains there the first time). Its progress lines are passed through to the
//! terminal as they come, since a cold build takes a minute or more.
//!
//! Must not: skip or pass a test when a toolchain is missing — [`polyglot`] fails the test with
//! the script's message, which names what to install.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::AppDir;

/// The build's outcome, shared by the tests of one binary: the output directory, or why the
/// build failed (every test that asks gets the same failure, without building again).
static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Path of a Python or JavaScript guest (`py-hello`, `js-fetch`, ...; see
/// `docs/guest-apps.md`), building them all first if this test binary has not yet.
pub fn polyglot(name: &str) -> PathBuf {
    let dir = match BUILT.get_or_init(build) {
        Ok(dir) => dir,
        Err(why) => panic!("{why}"),
    };
    let p = dir.join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} missing: testbed/polyglot/build.sh did not build `{name}`",
        p.display()
    );
    p
}

impl AppDir {
    /// Copies the named Python/JavaScript guests in as `<name>.wasm`.
    pub fn with_polyglot(self, guests: &[&str]) -> Self {
        for g in guests {
            std::fs::copy(polyglot(g), self.path().join(format!("{g}.wasm"))).unwrap();
        }
        self
    }
}

/// Where the guests go: beside the other build products, `<target dir>/testbed-polyglot`
/// (`CARGO_TARGET_TMPDIR` is `<target dir>/tmp`).
fn out_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("testbed-polyglot")
}

fn build() -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("testbed/polyglot/build.sh");
    let out = out_dir();
    let mut child = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not run `bash {}`: {e}", script.display()))?;
    // Straight to the process's stderr, past the test harness's capture: progress while the
    // tests wait.
    let mut said = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        let _ = writeln!(std::io::stderr(), "{line}");
        said.push(line);
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if status.success() {
        return Ok(out);
    }
    // The script's last lines say what failed (and, for a missing tool, what to install).
    let tail = said[said.len().saturating_sub(20)..].join("\n");
    Err(format!(
        "building the Python/JavaScript test guests failed: `bash {} {}` exited with {status}:\n{tail}",
        script.display(),
        out.display()
    ))
}
