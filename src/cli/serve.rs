//! `outpost serve PATH...`: development mode, like `spin up` — the arguments; the server is
//! `node::dev`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{CliError, CliResult};
use crate::runtime::app::AppSource;
use crate::sizing;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// App directories (containing outpost.toml), bare .wasm components, or signed bundles
    /// (APP.bundle with APP.bundle.sig next to it; needs --trust). Several apps may be served at
    /// once as long as their routes do not collide.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Address to listen on (repeatable). Port 0 picks a free port; the bound address is printed.
    #[arg(
        long,
        short = 'l',
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    pub listen: Vec<SocketAddr>,
    /// Directory for compiled code, so restarts skip compilation.
    /// [default: $XDG_CACHE_HOME/outpost/compiled or ~/.cache/outpost/compiled]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Compile on every start; write nothing to disk.
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,
    /// Trusted public key for bundles: a key file or the key line (repeatable).
    #[arg(long, value_name = "PUBKEY")]
    pub trust: Vec<String>,
    /// Serve bundles without checking their signatures (development only).
    #[arg(long, conflicts_with = "trust")]
    pub insecure_unsigned: bool,
    /// How long in-flight requests may take to finish after SIGINT/SIGTERM.
    #[arg(long, default_value = "10s", value_parser = super::parse_duration, value_name = "DURATION")]
    pub drain_timeout: Duration,
    /// Also serve HTTPS (TLS: HTTP/1.1, HTTP/2) on ADDR, and HTTP/3 (QUIC) on the same port
    /// (repeatable). Without --cert/--key, a self-signed certificate for localhost is generated.
    #[arg(long, value_name = "ADDR")]
    pub https: Vec<SocketAddr>,
    /// PEM certificate chain (leaf first) for --https.
    #[arg(long, value_name = "FILE", requires = "key", requires = "https")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Serve --https without HTTP/3.
    #[arg(long, requires = "https")]
    pub no_h3: bool,
}

pub fn run(args: ServeArgs) -> CliResult {
    let hw = sizing::detect();
    let sizing = sizing::derive(&hw, &sizing::Overrides::default()).map_err(CliError::config)?;
    let cache = if args.no_cache {
        None
    } else {
        args.cache_dir.clone().or_else(super::default_cache_dir)
    };
    let unpack_root = std::env::temp_dir().join(format!("outpost-serve-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(unpack_root.clone());
    let mut sources = Vec::with_capacity(args.paths.len());
    for (i, p) in args.paths.iter().enumerate() {
        if p.extension().is_some_and(|e| e == "bundle") {
            let dir = unpack_root.join(i.to_string());
            crate::node::dev::open_bundle(p, &args.trust, args.insecure_unsigned, &dir)?;
            sources.push(AppSource::Dir(dir));
        } else {
            sources.push(AppSource::from_path(p).map_err(CliError::app)?);
        }
    }

    let tls = tls_from_args(&args, &sizing)?;

    crate::node::dev::run(
        crate::node::dev::DevServer {
            sources,
            listen: args.listen.clone(),
            https: args.https.clone(),
            tls,
            cache,
            drain: args.drain_timeout,
        },
        &sizing,
    )
}

/// The TLS setup for `--https` (`None` without it): `--cert`/`--key`, or a generated
/// localhost certificate saved next to the compile cache (not with `--no-cache`).
fn tls_from_args(
    args: &ServeArgs,
    sizing: &sizing::Sizing,
) -> Result<Option<crate::serve::tls::TlsSetup>, CliError> {
    use crate::serve::certs::{CertPaths, CertSpec, DefaultCert};
    if args.https.is_empty() {
        return Ok(None);
    }
    let files = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Some(CertPaths {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    let self_signed = files.is_none();
    let pem = if args.no_cache {
        None
    } else {
        super::default_cache_dir()
            .and_then(|d| d.parent().map(|p| p.join("self-signed-localhost.pem")))
    };
    let spec = CertSpec {
        default: files.map(DefaultCert::Files),
        tenants: Vec::new(),
    };
    crate::node::tls_setup(
        spec,
        self_signed,
        pem.as_deref(),
        !args.no_h3,
        sizing,
        crate::serve::tls::HANDSHAKE_TIMEOUT,
    )
    .map(Some)
}

/// Removes a directory tree when dropped (the unpacked bundles of a dev-mode run).
struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
