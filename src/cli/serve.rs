//! `outpost serve PATH...`: development mode, like `spin up` — the arguments; the server is
//! `node::dev`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::CliResult;
use crate::serve::certs::CertPaths;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// App directories (containing outpost.toml, or a Spin app's spin.toml), bare .wasm
    /// components, signed bundles (APP.bundle with APP.bundle.sig next to it; needs --trust),
    /// or OCI artifacts (oci://HOST[:PORT]/REPO:TAG or …@sha256:DIGEST): a signed bundle as
    /// `outpost bundle push` put it, or a Wasm component in the CNCF layout signed with
    /// `outpost bundle sign oci://…`; both need --trust. Several apps may be served at once as
    /// long as their routes do not collide.
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
    /// How to reach oci:// sources.
    #[command(flatten)]
    pub registry: super::bundle::RegistryArgs,
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
    /// A value for an app variable (the manifest's [variables], which component variables
    /// reference as {{ name }}), given to every app served (repeatable). Overrides the
    /// variable's default; a required variable without one is an error.
    // Checked in `run`, not by a clap value parser: clap's error would echo the whole
    // argument, and the value may be a secret.
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    /// Directory for the apps' key-value stores, kept across restarts (as `spin up` keeps
    /// them). [default: $XDG_STATE_HOME/outpost/serve-kv or ~/.local/state/outpost/serve-kv;
    /// with --no-cache, a temporary database gone on exit]
    #[arg(long, value_name = "DIR")]
    pub kv_dir: Option<PathBuf>,
}

/// `--var NAME=VALUE`, NAME a variable name (`[a-z][a-z0-9_]*`); errors never show the value.
fn parse_var(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| "--var: expected NAME=VALUE (the argument has no '=')".to_owned())?;
    if !crate::bundle::manifest::is_variable_name(name) {
        return Err(format!(
            "--var: invalid variable name {name:?}; expected lowercase letters, digits and '_', \
             starting with a letter"
        ));
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// `$XDG_STATE_HOME/outpost/serve-kv`, else `~/.local/state/outpost/serve-kv`.
fn default_kv_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .map(|d| d.join("outpost").join("serve-kv"))
}

pub fn run(args: ServeArgs) -> CliResult {
    let variables = args
        .vars
        .iter()
        .map(|v| parse_var(v))
        .collect::<Result<_, _>>()
        .map_err(|e| super::CliError::config(anyhow::anyhow!(e)))?;
    let cache = if args.no_cache {
        None
    } else {
        args.cache_dir.clone().or_else(super::default_cache_dir)
    };
    // A generated certificate is kept beside the default compile cache, so a browser or curl
    // can be told to trust it once (not with --no-cache, which writes nothing).
    let self_signed_pem = if args.no_cache {
        None
    } else {
        super::default_cache_dir()
            .and_then(|d| d.parent().map(|p| p.join("self-signed-localhost.pem")))
    };
    let cert = match (args.cert, args.key) {
        (Some(cert), Some(key)) => Some(CertPaths { cert, key }),
        _ => None,
    };
    let registry = args.registry.options()?;
    crate::node::dev::run(crate::node::dev::DevServer {
        registry,
        paths: args.paths,
        trust: args.trust,
        insecure_unsigned: args.insecure_unsigned,
        listen: args.listen,
        https: args.https,
        cert,
        self_signed_pem,
        h3: !args.no_h3,
        cache,
        drain: args.drain_timeout,
        variables,
        kv: match (args.kv_dir, args.no_cache) {
            (Some(dir), _) => crate::node::dev::KvPlace::Chosen(dir),
            (None, true) => crate::node::dev::KvPlace::Temporary,
            (None, false) => match default_kv_dir() {
                Some(dir) => crate::node::dev::KvPlace::Default(dir),
                None => crate::node::dev::KvPlace::Temporary,
            },
        },
    })
}
