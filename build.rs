//! Build script: compiles the guest test-bed apps (`testbed/apps`, a cargo workspace of its
//! own) to `wasm32-wasip2` components with a nested `cargo build --release`, and tells the
//! crate where they are:
//! - `OUTPOST_TESTBED_APPS_DIR`: directory holding `<app>.wasm` for every app (tests load them);
//! - `OUTPOST_DEMO_WASM`: the `hello` component, embedded in the binary as the demo app;
//! - `OUTPOST_TESTBED_BAD_DIR`: hand-written invalid inputs (`*.wat`) for loader tests.
//!
//! The wasm build goes to one stable directory (`OUTPOST_APPS_TARGET_DIR`, else
//! `<CARGO_TARGET_DIR or ./target>/testbed-apps`) so debug, release and cross builds of
//! Outpost share a single guest build instead of compiling the apps once per profile.
//!
//! Must not: let the outer build's configuration (flags, wrappers, linkers, C toolchains set
//! by `cargo zigbuild`, the jobserver) leak into the nested wasm build; skip the guest build
//! (the demo app is always embedded); or watch target directories for changes.

use std::env;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};

const WASM_TARGET: &str = "wasm32-wasip2";

/// Apps the tests and the binary rely on, by output stem (crate name with `-` → `_`).
const APPS: &[&str] = &[
    "hello",
    "echo",
    "slow",
    "memhog",
    "fetch",
    "files",
    "config_reader",
    "trap",
    "noresponse",
    "hello_p3",
    "echo_p3",
    "fetch2_p3",
    "stress_p3",
    "grants_p3",
];

/// The app embedded in the binary as the built-in demo.
const DEMO_APP: &str = "hello";

/// Variables the outer build sets for *its* target, profile or tools; the nested build must
/// pick its own or it would, e.g., link wasm with the aarch64 musl linker `cargo zigbuild`
/// configured, run clippy-driver on the guests, or inherit coverage instrumentation flags.
const LEAKY_VARS: &[&str] = &[
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_LINKER",
    "CLIPPY_ARGS",
    "CLIPPY_CONF_DIR",
    "TARGET",
    "HOST",
    "PROFILE",
    "OUT_DIR",
    "OPT_LEVEL",
    "DEBUG",
    "NUM_JOBS",
    "CC",
    "CXX",
    "AR",
    "RANLIB",
    "CFLAGS",
    "CXXFLAGS",
    "LDFLAGS",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_CRATE_NAME",
];

/// Prefixes of the same kind: per-target cargo settings (`CARGO_TARGET_<TRIPLE>_LINKER`,
/// `CARGO_TARGET_DIR`), build and profile overrides, the outer package's metadata, and the
/// per-target C toolchain variables of the `cc` crate that `cargo zigbuild` sets.
const LEAKY_PREFIXES: &[&str] = &[
    "CARGO_TARGET_",
    "CARGO_BUILD_",
    "CARGO_PROFILE_",
    "CARGO_CFG_",
    "CARGO_FEATURE_",
    "CARGO_PKG_",
    "CARGO_LLVM_COV",
    "CARGO_ZIGBUILD_",
    "DEP_",
    "CC_",
    "CXX_",
    "AR_",
    "RANLIB_",
    "CFLAGS_",
    "CXXFLAGS_",
    "LDFLAGS_",
    "TARGET_",
    "HOST_",
    "CMAKE_TOOLCHAIN_FILE",
    "BINDGEN_EXTRA_CLANG_ARGS",
];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `cargo::error` gives the one-line headline; stderr keeps the full text, which
            // cargo prints together with the nested build's output.
            println!("cargo::error=guest apps: {}", e.headline());
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), BuildError> {
    let manifest_dir = PathBuf::from(required_env("CARGO_MANIFEST_DIR")?);
    let apps_dir = manifest_dir.join("testbed").join("apps");
    let bad_dir = apps_dir.join("bad");
    watch_sources(&apps_dir, &manifest_dir)?;

    println!("cargo::rerun-if-env-changed=OUTPOST_APPS_TARGET_DIR");
    println!("cargo::rerun-if-env-changed=CARGO_TARGET_DIR");
    let target_dir = apps_target_dir(&manifest_dir);

    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    check_wasm_target(&rustc)?;
    build_apps(&cargo, &apps_dir, &target_dir)?;

    let out_dir = target_dir.join(WASM_TARGET).join("release");
    for app in APPS {
        let wasm = out_dir.join(format!("{app}.wasm"));
        if !wasm.is_file() {
            return Err(BuildError::MissingOutput(wasm));
        }
    }
    println!(
        "cargo::rustc-env=OUTPOST_TESTBED_APPS_DIR={}",
        utf8(&out_dir)?
    );
    let demo = out_dir.join(format!("{DEMO_APP}.wasm"));
    println!("cargo::rustc-env=OUTPOST_DEMO_WASM={}", utf8(&demo)?);
    println!(
        "cargo::rustc-env=OUTPOST_TESTBED_BAD_DIR={}",
        utf8(&bad_dir)?
    );
    Ok(())
}

/// Reruns this script when a guest's sources, manifest or WIT change, or the toolchain pin
/// does. Member directories are listed one by one rather than `testbed/apps` as a whole,
/// because a whole-directory watch would include `testbed/apps/target` and rebuild forever.
fn watch_sources(apps_dir: &Path, manifest_dir: &Path) -> Result<(), BuildError> {
    for file in ["Cargo.toml", "Cargo.lock"] {
        println!("cargo::rerun-if-changed={}", utf8(&apps_dir.join(file))?);
    }
    println!(
        "cargo::rerun-if-changed={}",
        utf8(&manifest_dir.join("rust-toolchain.toml"))?
    );
    let listing_failed = |e| BuildError::Io {
        what: "listing",
        path: apps_dir.to_owned(),
        source: e,
    };
    let mut members = Vec::new();
    for entry in fs::read_dir(apps_dir).map_err(listing_failed)? {
        let path = entry.map_err(listing_failed)?.path();
        if path.join("Cargo.toml").is_file() {
            members.push(path);
        }
    }
    // Sorted so the script's output, and so cargo's fingerprint of it, is stable.
    members.sort();
    for member in &members {
        println!("cargo::rerun-if-changed={}", utf8(member)?);
    }
    Ok(())
}

/// Where the nested build writes. Relative paths are taken from the package root, which is
/// the directory cargo runs build scripts in and where `cargo` is normally invoked.
fn apps_target_dir(manifest_dir: &Path) -> PathBuf {
    let from_root = |p: OsString| manifest_dir.join(PathBuf::from(p));
    if let Some(dir) = env::var_os("OUTPOST_APPS_TARGET_DIR").filter(|d| !d.is_empty()) {
        return from_root(dir);
    }
    let outer = env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| manifest_dir.join("target"), from_root);
    outer.join("testbed-apps")
}

/// Fails early, with the fix, when the toolchain cannot build for `wasm32-wasip2`: otherwise
/// the nested build would bury the reason under "can't find crate for `core`".
fn check_wasm_target(rustc: &OsString) -> Result<(), BuildError> {
    let output = Command::new(rustc)
        .args(["--print", "sysroot"])
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BuildError::Spawn {
            program: rustc.clone(),
            source: e,
        })?;
    if !output.status.success() {
        return Err(BuildError::Sysroot {
            rustc: rustc.clone(),
            status: output.status,
        });
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let target_lib = sysroot.join("lib").join("rustlib").join(WASM_TARGET);
    if target_lib.is_dir() {
        Ok(())
    } else {
        Err(BuildError::TargetMissing { sysroot })
    }
}

fn build_apps(cargo: &OsString, apps_dir: &Path, target_dir: &Path) -> Result<(), BuildError> {
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--locked")
        .args(["--target", WASM_TARGET])
        .arg("--manifest-path")
        .arg(apps_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        // rustup picks the toolchain from the working directory; the apps sit under the same
        // rust-toolchain.toml as Outpost, so both builds use the pinned compiler.
        .current_dir(apps_dir)
        .stdin(Stdio::null())
        // Anything on this script's stdout is read by cargo as a directive.
        .stdout(Stdio::from(io::stderr()));
    for (name, _) in env::vars_os() {
        if let Some(name) = name.to_str()
            && is_leaky(name)
        {
            cmd.env_remove(name);
        }
    }
    let status = cmd.status().map_err(|e| BuildError::Spawn {
        program: cargo.clone(),
        source: e,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(BuildError::Nested { status })
    }
}

/// Kept although they match a prefix above: they are the user's choice for every build on
/// this machine, not the outer target's (job count matters on a 2-core gateway builder).
const KEPT_VARS: &[&str] = &["CARGO_BUILD_JOBS"];

fn is_leaky(name: &str) -> bool {
    !KEPT_VARS.contains(&name)
        && (LEAKY_VARS.contains(&name) || LEAKY_PREFIXES.iter().any(|p| name.starts_with(p)))
}

fn required_env(name: &'static str) -> Result<OsString, BuildError> {
    env::var_os(name).ok_or(BuildError::MissingEnv(name))
}

/// `cargo::rustc-env` values are text; a non-UTF-8 path cannot be passed through faithfully.
fn utf8(path: &Path) -> Result<&str, BuildError> {
    path.to_str()
        .ok_or_else(|| BuildError::NonUtf8Path(path.to_owned()))
}

// === impl BuildError ===

#[derive(Debug)]
enum BuildError {
    MissingEnv(&'static str),
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    NonUtf8Path(PathBuf),
    Spawn {
        program: OsString,
        source: io::Error,
    },
    Sysroot {
        rustc: OsString,
        status: ExitStatus,
    },
    TargetMissing {
        sysroot: PathBuf,
    },
    Nested {
        status: ExitStatus,
    },
    MissingOutput(PathBuf),
}

impl BuildError {
    fn headline(&self) -> String {
        match self {
            Self::TargetMissing { sysroot } => format!(
                "Rust target {WASM_TARGET} is not installed; run `{}`",
                add_target_command(sysroot)
            ),
            Self::Nested { status } => format!(
                "`cargo build --target {WASM_TARGET}` of testbed/apps failed ({status}); see the compiler output above"
            ),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingEnv(name) => write!(f, "cargo did not set {name} for the build script"),
            Self::Io { what, path, source } => {
                write!(f, "{what} {}: {source}", path.display())
            }
            Self::NonUtf8Path(path) => write!(
                f,
                "path {} is not UTF-8; move the checkout or set OUTPOST_APPS_TARGET_DIR to a UTF-8 path",
                path.display()
            ),
            Self::Spawn { program, source } => write!(
                f,
                "could not run `{}`: {source}",
                Path::new(program).display()
            ),
            Self::Sysroot { rustc, status } => write!(
                f,
                "`{} --print sysroot` failed ({status}); is the Rust toolchain installed?",
                Path::new(rustc).display()
            ),
            Self::TargetMissing { sysroot } => write!(
                f,
                "the Rust toolchain at {} has no standard library for {WASM_TARGET}, which the \
                 guest test-bed apps (and the embedded demo app) are built for.\n  fix: {}   \
                 (rust-toolchain.toml lists the target, so `rustup toolchain install` in the \
                 repository root installs it for the pinned toolchain)",
                sysroot.display(),
                add_target_command(sysroot)
            ),
            Self::Nested { status } => write!(
                f,
                "building the guest apps in testbed/apps for {WASM_TARGET} failed ({status}); the \
                 nested cargo output above says why.\n  If it mentions a missing target: rustup \
                 target add {WASM_TARGET}\n  If it mentions the lock file: update \
                 testbed/apps/Cargo.lock with `cargo update --workspace --manifest-path \
                 testbed/apps/Cargo.toml` and commit it"
            ),
            Self::MissingOutput(path) => write!(
                f,
                "the guest build succeeded but did not produce {}; the app list in build.rs and \
                 the members of testbed/apps/Cargo.toml disagree",
                path.display()
            ),
        }
    }
}

/// The rustup command that installs the target for the toolchain that was actually used,
/// which is not the pinned one when the build was started as `cargo +nightly …`.
fn add_target_command(sysroot: &Path) -> String {
    let rustup_toolchain = sysroot
        .parent()
        .filter(|dir| dir.file_name().is_some_and(|n| n == "toolchains"))
        .and(sysroot.file_name())
        .and_then(|name| name.to_str());
    match rustup_toolchain {
        Some(toolchain) => format!("rustup target add {WASM_TARGET} --toolchain {toolchain}"),
        None => format!("rustup target add {WASM_TARGET}"),
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } | Self::Spawn { source, .. } => Some(source),
            _ => None,
        }
    }
}
