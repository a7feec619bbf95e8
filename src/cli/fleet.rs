//! Operator commands against a control plane: `outpost push`, `outpost rollout
//! status|pause|resume|abort|list`, `outpost token create`, `outpost nodes list|revoke`.
//! Every request is signed with the operator key through `control::client::Client`.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::{CliError, CliResult};
use crate::base::clock::now_ms;
use crate::bundle::request_auth::Role;
use crate::bundle::sign;
use crate::control::api::{
    self, CreateRollout, NodeInfo, RolloutState, RolloutStatus, TokenRequest, TokenResponse,
    UploadResponse, WaveState,
};
use crate::control::client::{Client, ClientError};
use crate::control::rollout::{state_name, wave_state_name};

/// How often the live view asks for the rollout's status.
const POLL: Duration = Duration::from_millis(500);
/// Consecutive failed polls before the live view gives up (the rollout carries on).
const MAX_POLL_FAILURES: u32 = 20;
/// Per-request timeout; uploads of large bundles over slow links need the long one.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Where the control plane is and who is asking.
#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// Control plane URL (https://host:port; http:// only on loopback).
    #[arg(long, env = "OUTPOST_CONTROL_PLANE", value_name = "URL")]
    pub control_plane: String,
    /// Operator secret key file (from `outpost bundle keygen`); its public key must be in the
    /// control plane's `operators`.
    #[arg(long, env = "OUTPOST_KEY", value_name = "KEY")]
    pub key: PathBuf,
    /// Extra trusted CA certificate (PEM) for a control plane with a private certificate.
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The signed bundle; its signature file BUNDLE.sig must sit beside it. Or a signed bundle
    /// in an OCI registry, oci://HOST[:PORT]/REPO:TAG (as `outpost bundle push` put it): then
    /// nodes pull it from the registry by digest and the control plane serves no bytes of it.
    pub bundle: PathBuf,
    /// How to reach an oci:// bundle's registry from here (nodes use their [registry]).
    #[command(flatten)]
    pub registry: super::bundle::RegistryArgs,
    #[command(flatten)]
    pub remote: Remote,
    /// Nodes to roll out to: `all`, or `key=value[,key=value...]` (labels, all must match).
    #[arg(long, value_name = "GROUP")]
    pub group: String,
    /// Cumulative percentages of the group per wave; the last must be 100.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,10,50,100",
        value_name = "P,P,..."
    )]
    pub waves: Vec<u32>,
    /// A wave whose 5xx share of the release's requests exceeds this rolls the rollout back.
    #[arg(long, default_value_t = 0.05, value_name = "RATE")]
    pub max_error_rate: f64,
    /// How long each wave must stay healthy once all its nodes run the release.
    #[arg(long, default_value = "60s", value_parser = super::parse_duration, value_name = "DURATION")]
    pub bake: Duration,
    /// Host names the app answers on the nodes (default: every host).
    #[arg(long, value_delimiter = ',', value_name = "HOST,...")]
    pub hosts: Vec<String>,
    /// Create the rollout and exit instead of following it.
    #[arg(long)]
    pub detach: bool,
    /// A URL of this bundle file on a static host or CDN (https://, or http://), which nodes try
    /// before the control plane; repeat for more, tried in the order given. Mirrors are trusted
    /// for nothing: nodes check size, digest and signature whatever serves the bytes.
    #[arg(long = "mirror", value_name = "URL")]
    pub mirrors: Vec<String>,
    /// Do not upload the bundle: the control plane gets only its signature file (digest, size,
    /// signatures) and serves no bytes of it; nodes fetch it from the --mirror URLs.
    #[arg(long, requires = "mirrors")]
    pub mirror_only: bool,
}

#[derive(Debug, clap::Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub command: RolloutCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Show a rollout's waves, nodes and numbers once.
    Status {
        id: u64,
        #[command(flatten)]
        remote: Remote,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop starting or passing waves (health gates still roll back).
    Pause {
        id: u64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Continue a paused rollout.
    Resume {
        id: u64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Stop the rollout and put every node it touched back on its previous release.
    Abort {
        id: u64,
        #[command(flatten)]
        remote: Remote,
    },
    /// List every rollout.
    List {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create one-time enrolment tokens (printed one per line).
    Create {
        #[command(flatten)]
        remote: Remote,
        /// Label every node enrolled with these tokens gets (repeatable): key=value.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// How long the tokens stay valid.
        #[arg(long, default_value = "24h", value_parser = super::parse_duration, value_name = "DURATION")]
        ttl: Duration,
        /// How many tokens.
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
}

#[derive(Debug, clap::Args)]
pub struct NodesArgs {
    #[command(subcommand)]
    pub command: NodesCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum NodesCommand {
    /// List enrolled nodes with their labels, last contact and apps.
    List {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a node: every further request from it is refused (403).
    Revoke {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

// === shared ===

fn client(remote: &Remote, timeout: Duration) -> Result<Client, CliError> {
    let text = std::fs::read_to_string(&remote.key)
        .with_context(|| format!("{}: cannot read the operator key", remote.key.display()))
        .map_err(CliError::config)?;
    let key = sign::parse_secret_key(&text)
        .with_context(|| format!("{}", remote.key.display()))
        .map_err(CliError::config)?;
    let ca = match &remote.ca {
        Some(p) => Some((
            p.display().to_string(),
            std::fs::read(p)
                .with_context(|| format!("{}: cannot read the CA certificate", p.display()))
                .map_err(CliError::config)?,
        )),
        None => None,
    };
    Client::new(
        &remote.control_plane,
        key,
        Role::Operator,
        ca.as_ref().map(|(p, b)| (p.as_str(), b.as_slice())),
        timeout,
    )
    .map_err(CliError::config)
}

fn remote_err(e: ClientError) -> CliError {
    CliError::runtime(e)
}

/// A current-thread runtime for one command.
fn block_on<T>(f: impl Future<Output = Result<T, CliError>>) -> Result<T, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::runtime(anyhow!("cannot start the async runtime: {e}")))?
        .block_on(f)
}

fn print_json<T: serde::Serialize>(v: &T) -> CliResult {
    let text = serde_json::to_string_pretty(v).map_err(CliError::runtime)?;
    println!("{text}");
    Ok(())
}

// === push ===

fn sig_path(bundle: &Path) -> PathBuf {
    crate::store::install::sig_path_for(bundle)
}

pub fn push(mut args: PushArgs) -> CliResult {
    if let Some(raw) = args
        .bundle
        .to_str()
        .filter(|s| s.starts_with(crate::oci::reference::SCHEME))
    {
        let raw = raw.to_owned();
        let (pinned, bytes, sig) = pull_for_push(&raw, &args.registry)?;
        // Nodes pull it from the registry, pinned to what was pulled here (a tag may move),
        // then from any --mirror; the control plane keeps only the signature file.
        args.mirrors.insert(0, pinned);
        args.mirror_only = true;
        return push_bytes(args, bytes, sig);
    }
    let bytes = std::fs::read(&args.bundle)
        .with_context(|| format!("{}: cannot read the bundle", args.bundle.display()))
        .map_err(CliError::app)?;
    let sig_file = sig_path(&args.bundle);
    let sig = match std::fs::read(&sig_file) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CliError::app(anyhow!(
                "{}: unsigned: no signature file {}; sign it first: outpost bundle sign {} --key RELEASE.key",
                args.bundle.display(),
                sig_file.display(),
                args.bundle.display()
            )));
        }
        Err(e) => {
            return Err(CliError::app(anyhow!(
                "{}: cannot read: {e}",
                sig_file.display()
            )));
        }
    };
    push_bytes(args, bytes, sig)
}

/// The bundle an `oci://` reference names, with the signature file to send the control plane
/// (the first attached one that signs these very bytes) and the reference pinned to the
/// manifest pulled.
fn pull_for_push(
    raw: &str,
    registry: &super::bundle::RegistryArgs,
) -> Result<(String, Vec<u8>, Vec<u8>), CliError> {
    let reference: crate::oci::Reference = raw.parse().map_err(CliError::config)?;
    let client = crate::oci::Client::new(&reference.registry, registry.options()?)
        .map_err(CliError::config)?;
    let pulled = block_on(async {
        crate::oci::artifact::pull_bundle(
            &client,
            &reference,
            &crate::oci::artifact::PullLimits::default(),
            &|_| (),
        )
        .await
        .map_err(|e| CliError::app(anyhow!("{e}")))
    })?;
    let digest = crate::bundle::digest(&pulled.bundle);
    let sig = pulled
        .signatures
        .into_iter()
        .find(|s| {
            crate::bundle::sign::SignedDoc::parse(s, 64 << 10)
                .is_ok_and(|d| d.doc().digest == digest)
        })
        .ok_or_else(|| {
            CliError::app(anyhow!(
                "{raw}: no attached signature file signs {digest} (push the bundle with \
                 `outpost bundle push`, which attaches APP.bundle.sig)"
            ))
        })?;
    let pinned = reference.pinned(&pulled.manifest_digest);
    eprintln!(
        "pulled {} {} ({digest}) from {pinned}",
        pulled.config.app, pulled.config.version
    );
    Ok((pinned, pulled.bundle, sig))
}

/// Creates the rollout of `bytes` (uploaded unless mirror-only) and follows it.
fn push_bytes(args: PushArgs, bytes: Vec<u8>, sig: Vec<u8>) -> CliResult {
    let digest = crate::bundle::digest(&bytes);
    let client = client(&args.remote, UPLOAD_TIMEOUT)?;
    block_on(async move {
        let size = bytes.len() as u64;
        let signature = if args.mirror_only {
            eprintln!(
                "not uploading {} ({digest}, {}): nodes fetch it from {} mirror(s)",
                args.bundle.display(),
                crate::base::units::format_bytes(size),
                args.mirrors.len()
            );
            Some(BASE64.encode(&sig))
        } else {
            upload(&client, &args.bundle, bytes, &sig, digest).await?;
            None
        };
        let req = CreateRollout {
            digest,
            group: args.group.clone(),
            waves: args.waves.clone(),
            max_error_rate: args.max_error_rate,
            bake_secs: args.bake.as_secs(),
            hosts: args.hosts.clone(),
            sources: args.mirrors.clone(),
            signature,
        };
        let status: RolloutStatus = client
            .post_json(api::ROLLOUTS, &req)
            .await
            .map_err(remote_err)?;
        println!(
            "rollout {} created: {} {} to group {} in {} wave(s)",
            status.id,
            status.app,
            status.version,
            status.group,
            status.waves.len()
        );
        if args.detach {
            return Ok(());
        }
        eprintln!(
            "following rollout {id}; Ctrl-C stops watching, not the rollout (`outpost rollout abort {id}` does)",
            id = status.id
        );
        watch(&client, status).await
    })
}

/// `PUT /v1/bundles/<digest>` with a progress bar on a terminal.
async fn upload(
    client: &Client,
    bundle: &Path,
    bytes: Vec<u8>,
    sig: &[u8],
    digest: crate::bundle::Digest,
) -> CliResult {
    let tty = std::io::stderr().is_terminal();
    let size = bytes.len() as u64;
    let bar = if tty {
        let pb = indicatif::ProgressBar::new(size);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "uploading {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb.set_message(bundle.display().to_string());
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let t0 = Instant::now();
    let progress = bar.clone();
    let resp = client
        .send_streamed(
            reqwest::Method::PUT,
            &format!("{}{digest}", api::BUNDLES),
            bytes.into(),
            &[
                (api::BUNDLE_SIGNATURE_HEADER, BASE64.encode(sig)),
                ("content-type", "application/octet-stream".into()),
            ],
            crate::control::client::MAX_JSON_RESPONSE,
            move |n| progress.set_position(n),
        )
        .await
        .map_err(remote_err)?;
    bar.finish_and_clear();
    let up: UploadResponse = serde_json::from_slice(&resp.body)
        .map_err(|e| CliError::runtime(anyhow!("unexpected upload response: {e}")))?;
    eprintln!(
        "uploaded {} {} ({}, {}) in {:.1?}",
        up.app,
        up.version,
        up.digest,
        crate::base::units::format_bytes(size),
        t0.elapsed()
    );
    Ok(())
}

// === live view ===

fn elapsed(w: &api::WaveStatus, now: u64) -> String {
    match w.started_ms {
        Some(s) => {
            let end = w.finished_ms.unwrap_or(now);
            format!("{:.1}s", end.saturating_sub(s) as f64 / 1000.0)
        }
        None => "-".into(),
    }
}

fn header_line(s: &RolloutStatus) -> String {
    format!(
        "rollout {}: {} {} ({}) → group {}: {}",
        s.id,
        s.app,
        s.version,
        s.digest,
        s.group,
        state_name(s.state)
    )
}

fn wave_line(i: usize, w: &api::WaveStatus, now: u64) -> String {
    let offline = match w.offline.len() {
        0 => String::new(),
        n => format!("  ({n} offline at start, not waited for)"),
    };
    format!(
        "wave {:<2} {:>3}%  {:<9}  {}/{} nodes active  {} requests  {} errors  {}{offline}",
        i + 1,
        w.percent,
        wave_state_name(w.state),
        w.active,
        w.nodes.len(),
        w.requests,
        w.errors,
        elapsed(w, now)
    )
}

/// Prints the status once (for `outpost rollout status`).
fn print_status(s: &RolloutStatus) {
    let now = now_ms();
    println!("{}", header_line(s));
    println!(
        "  gates: error rate ≤ {:.2}, bake {}s",
        s.max_error_rate, s.bake_secs
    );
    for (i, w) in s.waves.iter().enumerate() {
        println!("  {}", wave_line(i, w, now));
    }
    if let Some(r) = &s.reason {
        println!("  reason: {r}");
    }
}

/// The outcome of a final rollout as an exit status.
fn outcome(s: &RolloutStatus) -> CliResult {
    let reason = s.reason.as_deref().unwrap_or("no reason given");
    match s.state {
        RolloutState::Succeeded => Ok(()),
        RolloutState::RolledBack => Err(CliError::runtime(anyhow!(
            "rollout {} rolled back: {reason}",
            s.id
        ))),
        RolloutState::Aborted => Err(CliError::runtime(anyhow!(
            "rollout {} aborted: {reason}",
            s.id
        ))),
        RolloutState::Running | RolloutState::Paused => Ok(()),
    }
}

/// Follows a rollout until it is final: indicatif bars (one per wave) on a terminal, else one
/// plain line per change of a wave's state or active count.
async fn watch(client: &Client, mut status: RolloutStatus) -> CliResult {
    let tty = std::io::stderr().is_terminal();
    let path = format!("{}/{}", api::ROLLOUTS, status.id);
    let multi = indicatif::MultiProgress::new();
    let bars: Vec<indicatif::ProgressBar> = if tty {
        let style =
            indicatif::ProgressStyle::with_template("{prefix} [{bar:20}] {pos}/{len} nodes  {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> ");
        status
            .waves
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let pb = multi.add(indicatif::ProgressBar::new(w.nodes.len() as u64));
                pb.set_style(style.clone());
                pb.set_prefix(format!("wave {:<2} {:>3}%", i + 1, w.percent));
                pb
            })
            .collect()
    } else {
        println!("{}", header_line(&status));
        Vec::new()
    };
    let mut last: Vec<(WaveState, usize)> = Vec::new();
    let mut last_state = status.state;
    let mut failures = 0u32;
    loop {
        let now = now_ms();
        if tty {
            for (w, pb) in status.waves.iter().zip(&bars) {
                pb.set_position(w.active as u64);
                pb.set_message(format!(
                    "{:<9} {} req {} err {}",
                    wave_state_name(w.state),
                    w.requests,
                    w.errors,
                    elapsed(w, now)
                ));
            }
        } else {
            let cur: Vec<(WaveState, usize)> =
                status.waves.iter().map(|w| (w.state, w.active)).collect();
            for (i, w) in status.waves.iter().enumerate() {
                if last.get(i) != cur.get(i) {
                    println!("{}", wave_line(i, w, now));
                }
            }
            if status.state != last_state {
                println!("rollout {}: {}", status.id, state_name(status.state));
            }
            last = cur;
        }
        last_state = status.state;
        if status.state.is_final() {
            for pb in &bars {
                pb.finish();
            }
            if tty {
                let _ = multi.clear();
                print_status(&status);
            } else if let Some(r) = &status.reason {
                println!("reason: {r}");
            }
            return outcome(&status);
        }
        tokio::time::sleep(POLL).await;
        match client.get_json::<RolloutStatus>(&path).await {
            Ok(s) => {
                status = s;
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                if failures >= MAX_POLL_FAILURES {
                    return Err(CliError::runtime(anyhow!(
                        "lost the control plane while following rollout {} (it carries on): {e}",
                        status.id
                    )));
                }
                tracing::debug!(error = %e, "rollout status poll failed; retrying");
            }
        }
    }
}

// === rollout ===

pub fn rollout(args: RolloutArgs) -> CliResult {
    match args.command {
        RolloutCommand::Status { id, remote, json } => {
            let c = client(&remote, REQUEST_TIMEOUT)?;
            let s: RolloutStatus = block_on(async {
                c.get_json(&format!("{}/{id}", api::ROLLOUTS))
                    .await
                    .map_err(remote_err)
            })?;
            if json {
                print_json(&s)
            } else {
                print_status(&s);
                Ok(())
            }
        }
        RolloutCommand::Pause { id, remote } => command(&remote, id, "pause"),
        RolloutCommand::Resume { id, remote } => command(&remote, id, "resume"),
        RolloutCommand::Abort { id, remote } => command(&remote, id, "abort"),
        RolloutCommand::List { remote, json } => {
            let c = client(&remote, REQUEST_TIMEOUT)?;
            let all: Vec<RolloutStatus> =
                block_on(async { c.get_json(api::ROLLOUTS).await.map_err(remote_err) })?;
            if json {
                return print_json(&all);
            }
            println!(
                "{:<6} {:<20} {:<12} {:<12} {:<20} WAVES",
                "ID", "APP", "VERSION", "STATE", "GROUP"
            );
            for s in &all {
                let passed = s
                    .waves
                    .iter()
                    .filter(|w| w.state == WaveState::Passed)
                    .count();
                println!(
                    "{:<6} {:<20} {:<12} {:<12} {:<20} {passed}/{}",
                    s.id,
                    s.app,
                    s.version,
                    state_name(s.state),
                    s.group,
                    s.waves.len()
                );
            }
            Ok(())
        }
    }
}

fn command(remote: &Remote, id: u64, what: &str) -> CliResult {
    let c = client(remote, REQUEST_TIMEOUT)?;
    let s: RolloutStatus = block_on(async {
        c.post_json(
            &format!("{}/{id}/{what}", api::ROLLOUTS),
            &serde_json::json!({}),
        )
        .await
        .map_err(remote_err)
    })?;
    println!("rollout {id}: {}", state_name(s.state));
    if let Some(r) = &s.reason {
        println!("reason: {r}");
    }
    Ok(())
}

// === token ===

pub fn token(args: TokenArgs) -> CliResult {
    let TokenCommand::Create {
        remote,
        labels,
        ttl,
        count,
    } = args.command;
    let mut map = BTreeMap::new();
    for l in &labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| CliError::config(anyhow!("--label {l:?}: expected KEY=VALUE")))?;
        if !api::valid_label(k) || !api::valid_label(v) {
            return Err(CliError::config(anyhow!(
                "--label {l:?}: keys and values are 1-63 of [A-Za-z0-9._-]"
            )));
        }
        map.insert(k.to_owned(), v.to_owned());
    }
    let c = client(&remote, REQUEST_TIMEOUT)?;
    let req = TokenRequest {
        labels: map,
        ttl_secs: ttl.as_secs().max(1),
        count,
    };
    let resp: TokenResponse =
        block_on(async { c.post_json(api::TOKENS, &req).await.map_err(remote_err) })?;
    for t in &resp.tokens {
        println!("{t}");
    }
    eprintln!(
        "{} one-time enrolment token(s); valid until unix time {} ({} from now)",
        resp.tokens.len(),
        resp.expires,
        humantime(ttl)
    );
    Ok(())
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

// === nodes ===

pub fn nodes(args: NodesArgs) -> CliResult {
    match args.command {
        NodesCommand::List { remote, json } => {
            let c = client(&remote, REQUEST_TIMEOUT)?;
            let all: Vec<NodeInfo> =
                block_on(async { c.get_json(api::NODES).await.map_err(remote_err) })?;
            if json {
                return print_json(&all);
            }
            let now = crate::base::clock::unix_now();
            println!(
                "{:<16}  {:<20} {:<8} {:<10} {:<30} APPS",
                "ID", "NAME", "STATUS", "LAST SEEN", "LABELS"
            );
            for n in &all {
                let status = if n.revoked {
                    "revoked"
                } else if n.online {
                    "online"
                } else {
                    "offline"
                };
                let seen = n.last_seen.map_or("never".to_owned(), |s| {
                    format!("{}s ago", now.saturating_sub(s))
                });
                let labels = n
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",");
                let apps = n
                    .apps
                    .iter()
                    .map(|a| format!("{}@{}", a.app, a.version))
                    .collect::<Vec<_>>()
                    .join(",");
                println!(
                    "{:<16}  {:<20} {:<8} {:<10} {:<30} {apps}",
                    n.id, n.name, status, seen, labels
                );
            }
            Ok(())
        }
        NodesCommand::Revoke { id, remote } => {
            let c = client(&remote, REQUEST_TIMEOUT)?;
            let n: NodeInfo = block_on(async {
                c.post_json(
                    &format!("{}/{id}/revoke", api::NODES),
                    &serde_json::json!({}),
                )
                .await
                .map_err(remote_err)
            })?;
            println!("node {} ({}) revoked", n.id, n.name);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(humantime(Duration::from_secs(86_400)), "1d");
        assert_eq!(humantime(Duration::from_secs(7200)), "2h");
        assert_eq!(humantime(Duration::from_secs(90)), "90s");
    }
}
