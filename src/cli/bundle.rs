//! `outpost bundle ...`: make, sign, check and install signed app bundles, and push them to
//! and pull them from OCI registries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

use super::{CliError, CliResult};
use crate::base::atomic;
use crate::base::clock::unix_now;
use crate::bundle::archive::{self, Limits};
use crate::bundle::manifest::MANIFEST_FILE_NAME;
use crate::bundle::sign::{self, ReleaseDoc, SignedDoc};
use crate::bundle::{self as bundle_mod, Digest};
use crate::oci;
use crate::store::install::{self, MAX_SIG_FILE};

#[derive(Debug, clap::Args)]
pub struct BundleArgs {
    #[command(subcommand)]
    pub command: BundleCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum BundleCommand {
    /// Generate an ed25519 signing key: NAME.key (secret, mode 0600) and NAME.pub; the public key
    /// is printed too, ready for a node's [trust] keys.
    Keygen {
        /// Path prefix of the key files.
        #[arg(long, value_name = "NAME")]
        out: PathBuf,
        /// Overwrite existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Pack an app directory (outpost.toml, its components and static files; or a Spin app's
    /// spin.toml, converted to the bundle's outpost.toml) into one
    /// deterministic archive: the same files always give the same digest.
    Pack {
        /// The app directory.
        dir: PathBuf,
        /// Output file, e.g. APP.bundle.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Sign a bundle: writes (or adds a signature to) the detached signature file BUNDLE.sig,
    /// whose signed document names the app, version, digest, size and expiry. Several keys
    /// may sign the same bundle in turn for k-of-n trust policies.
    ///
    /// Given oci://HOST/REPO[:TAG|@sha256:…] instead, signs an artifact already in a registry
    /// (a Wasm component another tool pushed, in the CNCF Wasm OCI layout): the signed
    /// document names the artifact's manifest digest and size, and the signature file is
    /// attached to that manifest as `bundle push` attaches a bundle's. Each run attaches one
    /// more signature artifact.
    #[command(disable_version_flag = true)]
    Sign {
        /// The bundle file, or oci://HOST[:PORT]/REPO[:TAG|@sha256:HEX].
        bundle: PathBuf,
        /// Secret key file from `outpost bundle keygen`.
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// How long the signature is accepted for installs (e.g. 30d, 12h).
        #[arg(long, default_value = "90d", value_parser = super::parse_duration)]
        expires_in: Duration,
        /// Tenant the app belongs to (nodes may restrict which keys sign a tenant's apps).
        #[arg(long)]
        tenant: Option<String>,
        /// Signature file [default: BUNDLE.sig]; not for oci:// references.
        #[arg(long, value_name = "FILE")]
        sig: Option<PathBuf>,
        /// oci:// only: the app name [default: the repository's last path segment, made a
        /// valid app name].
        #[arg(long, value_name = "NAME")]
        app: Option<String>,
        /// oci:// only: the release version, MAJOR.MINOR.PATCH [default: the tag, when it is
        /// one].
        #[arg(long = "version", id = "release_version", value_name = "X.Y.Z")]
        release_version: Option<String>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Verify a bundle's signature(s) against trusted public keys, then its contents.
    Verify {
        bundle: PathBuf,
        /// Trusted public key: a key file or the key line itself (repeatable).
        #[arg(long, required = true, value_name = "PUBKEY")]
        trust: Vec<String>,
        /// Valid signatures required.
        #[arg(long, default_value_t = 1)]
        threshold: usize,
        /// Signature file [default: BUNDLE.sig].
        #[arg(long, value_name = "FILE")]
        sig: Option<PathBuf>,
    },
    /// Show a bundle's digest, files, manifest and (unverified) signed document.
    Inspect {
        bundle: PathBuf,
        /// Signature file [default: BUNDLE.sig, if present].
        #[arg(long, value_name = "FILE")]
        sig: Option<PathBuf>,
    },
    /// Install a signed bundle into a node's store (verified under the config's [trust]) and make
    /// it the app's active release. The daemon must not be running on the same state directory.
    Install {
        bundle: PathBuf,
        /// The node's config (for [trust] and the state directory) [default: embedded config].
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Signature file [default: BUNDLE.sig].
        #[arg(long, value_name = "FILE")]
        sig: Option<PathBuf>,
    },
    /// Push a signed bundle to an OCI registry: the bundle as one layer of an OCI image manifest
    /// under TAG, and its signature file attached to that manifest as an OCI 1.1 referrer (found
    /// through the referrers API, or through the sha256-<hex> tag on registries without it).
    /// Prints the pushed reference pinned by digest, oci://HOST/REPO@sha256:….
    Push {
        /// The bundle file (APP.bundle); its signature file must exist.
        bundle: PathBuf,
        /// Where to push: oci://HOST[:PORT]/REPO:TAG.
        reference: String,
        /// Signature file [default: BUNDLE.sig].
        #[arg(long, value_name = "FILE")]
        sig: Option<PathBuf>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Pull a bundle and its signature file from an OCI registry into DIR as
    /// APP-VERSION.bundle and APP-VERSION.bundle.sig. Every blob is checked against its digest
    /// and size, and the signature file must sign the bundle pulled; nothing is written unless
    /// all of it arrived whole. Check the signature with `outpost bundle verify`. A Spin app
    /// (`spin registry push`) is pulled as its Spin app directory, DIR/APP-VERSION/, to serve
    /// or to pack and sign as a bundle.
    Pull {
        /// What to pull: oci://HOST[:PORT]/REPO:TAG or oci://HOST[:PORT]/REPO@sha256:HEX.
        reference: String,
        /// Directory to write the bundle and its signature file into (created if missing).
        #[arg(short, long, value_name = "DIR")]
        output: PathBuf,
        /// Largest bundle layer accepted, checked before it is downloaded (e.g. 64MiB).
        #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
        max_size: u64,
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

/// How to reach and log in to a registry.
#[derive(Debug, clap::Args)]
pub struct RegistryArgs {
    /// Speak plain HTTP to the registry instead of HTTPS (a local or test registry). HTTPS is
    /// the default for every host, localhost included.
    #[arg(long)]
    insecure: bool,
    /// A PEM file of CA certificates to trust beside the built-in web roots (a registry with a
    /// certificate from a private CA).
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// User name for the registry. Without one, credentials come from the Docker config file
    /// ($DOCKER_CONFIG/config.json or ~/.docker/config.json, its auths entry for the host;
    /// credential helpers are not run), else none are sent.
    #[arg(long, requires = "password")]
    username: Option<String>,
    /// Password (or token) for --username; also read from OUTPOST_REGISTRY_PASSWORD, which
    /// keeps it out of the process list.
    #[arg(long, env = "OUTPOST_REGISTRY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

pub fn run(args: BundleArgs) -> CliResult {
    match args.command {
        BundleCommand::Keygen { out, force } => keygen(&out, force),
        BundleCommand::Pack { dir, output } => pack(&dir, &output),
        BundleCommand::Sign {
            bundle,
            key,
            expires_in,
            tenant,
            sig,
            app,
            release_version,
            registry,
        } => match bundle
            .to_str()
            .filter(|s| s.starts_with(oci::reference::SCHEME))
        {
            Some(reference) => {
                if sig.is_some() {
                    return Err(CliError::config(anyhow!(
                        "--sig is for bundle files; an oci:// artifact's signature file is \
                         attached to it in the registry"
                    )));
                }
                let release = OciRelease {
                    app,
                    version: release_version,
                    expires_in,
                    tenant,
                };
                sign_oci_cmd(reference, &key, release, &registry)
            }
            None => {
                if app.is_some() || release_version.is_some() {
                    return Err(CliError::config(anyhow!(
                        "--app and --version are for oci:// artifacts; a bundle's outpost.toml \
                         names its app and version"
                    )));
                }
                sign_cmd(&bundle, &key, expires_in, tenant, sig)
            }
        },
        BundleCommand::Verify {
            bundle,
            trust,
            threshold,
            sig,
        } => verify_cmd(&bundle, &trust, threshold, sig),
        BundleCommand::Inspect { bundle, sig } => inspect(&bundle, sig),
        BundleCommand::Install {
            bundle,
            config,
            sig,
        } => install_cmd(&bundle, config, sig),
        BundleCommand::Push {
            bundle,
            reference,
            sig,
            registry,
        } => push_cmd(&bundle, &reference, sig, &registry),
        BundleCommand::Pull {
            reference,
            output,
            max_size,
            registry,
        } => pull_cmd(&reference, &output, max_size, &registry),
    }
}

fn sig_path(bundle: &Path, sig: Option<PathBuf>) -> PathBuf {
    sig.unwrap_or_else(|| install::sig_path_for(bundle))
}

/// A spinner on stderr for long steps; invisible when stderr is not a terminal.
fn progress(msg: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message(msg.to_owned());
    pb.enable_steady_tick(Duration::from_millis(100));
    pb
}

fn keygen(out: &Path, force: bool) -> CliResult {
    let key_path = out.with_extension("key");
    let pub_path = out.with_extension("pub");
    for p in [&key_path, &pub_path] {
        if p.exists() && !force {
            return Err(CliError::config(anyhow!(
                "{}: exists; pass --force to overwrite",
                p.display()
            )));
        }
    }
    let sk = sign::SigningKey::generate(&mut rand_core::OsRng);
    let vk = sk.verifying_key();
    atomic::write_file(&key_path, sk.to_secret_text().as_bytes(), 0o600)
        .with_context(|| format!("{}: cannot write", key_path.display()))
        .map_err(CliError::runtime)?;
    atomic::write_file(&pub_path, vk.to_public_text().as_bytes(), 0o644)
        .with_context(|| format!("{}: cannot write", pub_path.display()))
        .map_err(CliError::runtime)?;
    eprintln!(
        "wrote {} (secret, 0600) and {}",
        key_path.display(),
        pub_path.display()
    );
    print!("{}", vk.to_public_text());
    Ok(())
}

/// Reads every regular file under `dir` (relative `/` paths) that `keep` accepts, refusing
/// symlinks and specials.
fn read_tree(dir: &Path, keep: &dyn Fn(&str) -> bool) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    fn walk(
        base: &Path,
        dir: &Path,
        keep: &dyn Fn(&str) -> bool,
        out: &mut Vec<(String, Vec<u8>)>,
    ) -> anyhow::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("{}: cannot read directory", dir.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}: cannot read directory", dir.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let ft = e
                .file_type()
                .with_context(|| format!("{}: cannot stat", path.display()))?;
            let rel = path
                .strip_prefix(base)
                .map_err(|_| anyhow!("{}: outside {}", path.display(), base.display()))?;
            let rel = rel
                .to_str()
                .ok_or_else(|| anyhow!("{}: file name is not UTF-8", path.display()))?
                .to_owned();
            if ft.is_dir() {
                walk(base, &path, keep, out)?;
            } else if !keep(&rel) {
                continue;
            } else if ft.is_symlink() {
                bail!(
                    "{}: symbolic links cannot go into a bundle; copy the file instead",
                    path.display()
                );
            } else if ft.is_file() {
                let bytes = std::fs::read(&path)
                    .with_context(|| format!("{}: cannot read", path.display()))?;
                out.push((rel, bytes));
            } else {
                bail!("{}: not a regular file", path.display());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, keep, &mut out)?;
    Ok(out)
}

fn pack(dir: &Path, output: &Path) -> CliResult {
    let t0 = Instant::now();
    let pb = progress(&format!("reading {}", dir.display()));
    // The manifest as a node will read it: `outpost.toml`, else the Spin app's `spin.toml`
    // converted, which goes into the bundle as its `outpost.toml` (nodes need nothing new).
    let read = crate::runtime::app::read_dir_manifest(dir).map_err(CliError::app)?;
    for note in &read.notes {
        eprintln!("{}: note: {note}", read.path.display());
    }
    let spin = !read.path.ends_with(MANIFEST_FILE_NAME);
    let mut entries = if spin {
        // A Spin app directory usually holds its sources and build tree too; the bundle takes
        // only what the app uses: spin.toml, the components and the granted directories.
        let manifest = &read.manifest;
        let keep = |rel: &str| {
            rel == crate::bundle::spin::SPIN_MANIFEST_FILE_NAME
                || manifest.components.iter().any(|c| {
                    Path::new(rel) == c.source
                        || c.files.iter().any(|f| {
                            f.source == Path::new(".") || Path::new(rel).starts_with(&f.source)
                        })
                })
        };
        let mut entries = read_tree(dir, &keep).map_err(CliError::app)?;
        entries.push((
            MANIFEST_FILE_NAME.to_owned(),
            read.text.clone().into_bytes(),
        ));
        entries
    } else {
        read_tree(dir, &|_| true).map_err(CliError::app)?
    };
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let manifest = read.manifest;
    let manifest_path = read.path.display().to_string();
    // A bundle exists to be signed, and a signed release's version is MAJOR.MINOR.PATCH (nodes
    // order releases by it). The manifest also allows `1.2.0-rc.1` for `outpost serve`; refuse it
    // here rather than let `sign` fail on a bundle that was already made.
    if let Err(e) = manifest
        .application
        .version
        .parse::<crate::bundle::sign::Version>()
    {
        return Err(CliError::app(anyhow!(
            "{manifest_path}: application.version: {e}; a bundle becomes a signed release, and \
             releases carry no pre-release or build suffix (nodes order them numerically)"
        )));
    }
    let unpacked_size: u64 = entries.iter().map(|(_, b)| b.len() as u64).sum();
    pb.set_message(format!(
        "compressing {} files ({})",
        entries.len(),
        crate::base::units::format_bytes(unpacked_size)
    ));
    let bytes = archive::pack(entries).map_err(CliError::app)?;
    // Check what we made the way a node will, so a bundle that packs also installs.
    let unpacked = archive::unpack(&bytes, &Limits::default()).map_err(CliError::app)?;
    install::check_contents(
        &unpacked,
        &manifest.application.name,
        &manifest.application.version,
    )
    .map_err(CliError::app)?;
    pb.set_message(format!("writing {}", output.display()));
    atomic::write_file(output, &bytes, 0o644)
        .with_context(|| format!("{}: cannot write", output.display()))
        .map_err(CliError::runtime)?;
    pb.finish_and_clear();
    let digest = bundle_mod::digest(&bytes);
    eprintln!(
        "packed {} {} ({} files, {} → {}) in {:.2?}",
        manifest.application.name,
        manifest.application.version,
        unpacked.files().len(),
        crate::base::units::format_bytes(unpacked_size),
        crate::base::units::format_bytes(bytes.len() as u64),
        t0.elapsed()
    );
    println!("{digest}");
    Ok(())
}

fn sign_cmd(
    bundle: &Path,
    key: &Path,
    expires_in: Duration,
    tenant: Option<String>,
    sig: Option<PathBuf>,
) -> CliResult {
    let t0 = Instant::now();
    let key_text = std::fs::read_to_string(key)
        .with_context(|| format!("{}: cannot read key", key.display()))
        .map_err(CliError::config)?;
    let sk = sign::parse_secret_key(&key_text)
        .with_context(|| format!("{}", key.display()))
        .map_err(CliError::config)?;
    let pb = progress(&format!("hashing {}", bundle.display()));
    let bytes = install::read_bundle_file(bundle, Limits::default().max_compressed)
        .map_err(CliError::app)?;
    let digest = bundle_mod::digest(&bytes);
    let sig_path = sig_path(bundle, sig);

    let mut signed = match read_sig_opt(&sig_path)? {
        Some(existing) => {
            let signed = SignedDoc::parse(&existing, MAX_SIG_FILE)
                .with_context(|| format!("{}", sig_path.display()))
                .map_err(CliError::app)?;
            if signed.doc().digest != digest || signed.doc().size != bytes.len() as u64 {
                return Err(CliError::app(anyhow!(
                    "{}: signs {} but {} is {digest}; remove it to sign afresh",
                    sig_path.display(),
                    signed.doc().digest,
                    bundle.display()
                )));
            }
            signed
        }
        None => {
            pb.set_message("reading the manifest");
            let unpacked = archive::unpack(&bytes, &Limits::default())
                .with_context(|| format!("{}", bundle.display()))
                .map_err(CliError::app)?;
            let manifest = unpacked
                .get("outpost.toml")
                .and_then(|t| std::str::from_utf8(t).ok())
                .ok_or_else(|| anyhow!("{}: no readable outpost.toml", bundle.display()))
                .map_err(CliError::app)?;
            let manifest = crate::bundle::manifest::Manifest::parse(
                manifest,
                &format!("{}:outpost.toml", bundle.display()),
            )
            .map_err(CliError::app)?;
            let now = unix_now();
            let doc = ReleaseDoc {
                app: manifest.application.name,
                version: manifest.application.version,
                digest,
                size: bytes.len() as u64,
                created: now,
                expires: now.saturating_add(expires_in.as_secs()),
                tenant,
            };
            SignedDoc::new(doc)
                .with_context(|| format!("{}", bundle.display()))
                .map_err(CliError::app)?
        }
    };
    signed
        .add_signature(&sk)
        .with_context(|| format!("{}", sig_path.display()))
        .map_err(CliError::app)?;
    atomic::write_file(&sig_path, &signed.encode(), 0o644)
        .with_context(|| format!("{}: cannot write", sig_path.display()))
        .map_err(CliError::runtime)?;
    pb.finish_and_clear();
    eprintln!(
        "signed {} {} ({digest}) with key {}; {} signature(s) in {} ({:.2?})",
        signed.doc().app,
        signed.doc().version,
        sk.id(),
        signed.signatures().len(),
        sig_path.display(),
        t0.elapsed()
    );
    Ok(())
}

fn verify_cmd(
    bundle: &Path,
    trust: &[String],
    threshold: usize,
    sig: Option<PathBuf>,
) -> CliResult {
    let t0 = Instant::now();
    let keys: Vec<(String, String)> = trust
        .iter()
        .map(|k| ("--trust".to_owned(), k.clone()))
        .collect();
    let policy = crate::node::trust::trust_policy(&keys, threshold, BTreeMap::new())
        .map_err(CliError::config)?;
    let pb = progress(&format!("verifying {}", bundle.display()));
    let bytes = install::read_bundle_file(bundle, Limits::default().max_compressed)
        .map_err(CliError::app)?;
    let sig_path = sig_path(bundle, sig);
    let sig = read_sig_file(bundle, &sig_path)?;
    let install::VerifiedBundle {
        verified, digest, ..
    } = install::verify_bundle(&bytes, &sig, &policy, unix_now(), &Limits::default())
        .map_err(|e| match e {
            install::InstallError::Signature(_) => anyhow!("{}: {e}", sig_path.display()),
            e => anyhow!("{}: {e}", bundle.display()),
        })
        .map_err(CliError::app)?;
    pb.finish_and_clear();
    println!(
        "ok: {} {} {digest} signed by {} ({:.2?})",
        verified.doc.app,
        verified.doc.version,
        verified
            .keys
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        t0.elapsed()
    );
    Ok(())
}

fn inspect(bundle: &Path, sig: Option<PathBuf>) -> CliResult {
    let bytes = install::read_bundle_file(bundle, Limits::default().max_compressed)
        .map_err(CliError::app)?;
    let digest: Digest = bundle_mod::digest(&bytes);
    println!("bundle:  {}", bundle.display());
    println!("digest:  {digest}");
    println!("size:    {} bytes", bytes.len());
    match archive::unpack(&bytes, &Limits::default()) {
        Ok(u) => {
            println!("files:");
            for (path, data) in u.files() {
                println!("  {:>10}  {path}", data.len());
            }
            if let Some(Ok(text)) = u.get("outpost.toml").map(std::str::from_utf8) {
                match crate::bundle::manifest::Manifest::parse(text, "outpost.toml") {
                    Ok(m) => {
                        println!("app:     {} {}", m.application.name, m.application.version);
                        for c in &m.components {
                            let routes: Vec<String> =
                                c.routes.iter().map(ToString::to_string).collect();
                            println!(
                                "  component {} ({}) routes [{}]",
                                c.id,
                                c.source.display(),
                                routes.join(", ")
                            );
                        }
                    }
                    Err(e) => println!("manifest: invalid: {e}"),
                }
            }
        }
        Err(e) => println!("archive: invalid: {e}"),
    }
    let explicit = sig.is_some();
    let sig_path = sig_path(bundle, sig);
    // A signature file that cannot be read or is oversized is reported like an invalid one:
    // inspecting is for looking at broken bundles too.
    let sig_file = match install::read_sig_file(&sig_path) {
        Ok(bytes) => Some(Ok(bytes)),
        Err(install::InstallError::Read { source, .. })
            if !explicit && source.kind() == std::io::ErrorKind::NotFound =>
        {
            None
        }
        Err(e) => Some(Err(e)),
    };
    match sig_file {
        Some(Err(e @ install::InstallError::Read { .. })) => {
            return Err(CliError::app(anyhow!("{e}")));
        }
        Some(Err(e)) => println!("signature file {}: invalid: {e}", sig_path.display()),
        Some(Ok(s)) => match SignedDoc::parse(&s, MAX_SIG_FILE) {
            Ok(signed) => {
                let d = signed.doc();
                println!("signed document ({}, NOT verified):", sig_path.display());
                println!(
                    "  app {} version {} tenant {}",
                    d.app,
                    d.version,
                    d.tenant.as_deref().unwrap_or("-")
                );
                println!("  digest {} size {}", d.digest, d.size);
                println!("  created {} expires {}", d.created, d.expires);
                if d.digest != digest {
                    println!("  WARNING: the document covers a different digest than this bundle");
                }
                for (id, _) in signed.signatures() {
                    println!("  signature by key {id}");
                }
            }
            Err(e) => println!("signature file {}: invalid: {e}", sig_path.display()),
        },
        None => println!("unsigned (no {})", sig_path.display()),
    }
    Ok(())
}

fn install_cmd(bundle: &Path, config: Option<PathBuf>, sig: Option<PathBuf>) -> CliResult {
    let t0 = Instant::now();
    let cfg = match &config {
        Some(p) => crate::ops::config::Config::load(p).map_err(CliError::config)?,
        None => crate::ops::config::Config::embedded_default(),
    };
    let pb = progress(&format!("installing {}", bundle.display()));
    // Each component's compile on a line of its own: a Python or JavaScript component takes
    // seconds, once per node (the code cache makes every later start and request skip it).
    let shown = pb.clone();
    let on_component: crate::runtime::LoadObserver = std::sync::Arc::new(move |e| match e {
        crate::runtime::LoadEvent::Start {
            app,
            component,
            bytes,
        } => shown.set_message(format!(
            "compiling {app}/{component} ({})",
            crate::sizing::human_bytes(bytes as u64)
        )),
        crate::runtime::LoadEvent::Done {
            app,
            component,
            info,
        } => shown.suspend(|| {
            let how = if info.cache_hit {
                "read from the code cache"
            } else {
                "compiled"
            };
            eprintln!("  {app}/{component}: {how} in {:.2?}", info.elapsed);
        }),
    });
    let installed = crate::node::install::install_bundle(
        &cfg,
        bundle,
        &sig_path(bundle, sig),
        |r| pb.set_message(format!("compiling {} {}", r.app, r.version)),
        Some(on_component),
    );
    pb.finish_and_clear();
    let installed = installed?;
    let r = &installed.release;
    if installed.unchanged {
        println!("{} {} ({}) already active", r.app, r.version, r.digest);
    } else {
        println!(
            "installed {} {} ({}) in {:.2?}",
            r.app,
            r.version,
            r.digest,
            t0.elapsed()
        );
    }
    Ok(())
}

/// Reads a bundle's detached signature file, capped at [`MAX_SIG_FILE`] before it is read;
/// `None` when there is none.
fn read_sig_opt(sig_path: &Path) -> Result<Option<Vec<u8>>, CliError> {
    match install::read_sig_file(sig_path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(install::InstallError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(e) => Err(CliError::app(anyhow!("{e}"))),
    }
}

/// The signature file of a bundle that must be signed: a missing file says so.
fn read_sig_file(bundle: &Path, sig_path: &Path) -> Result<Vec<u8>, CliError> {
    install::read_required_sig_file(bundle, sig_path).map_err(CliError::app)
}

// === OCI registries ===

/// The parsed reference and a client for its registry.
fn registry_client(
    reference: &str,
    args: &RegistryArgs,
) -> Result<(oci::Reference, oci::Client), CliError> {
    let reference: oci::Reference = reference.parse().map_err(CliError::config)?;
    let options = args.options()?;
    let client = oci::Client::new(&reference.registry, options).map_err(CliError::config)?;
    Ok((reference, client))
}

impl RegistryArgs {
    /// The client options these flags ask for.
    pub(crate) fn options(&self) -> Result<oci::ClientOptions, CliError> {
        let args = self;
        Ok(oci::ClientOptions {
            insecure: args.insecure,
            ca_file: args.ca_file.clone(),
            credentials: match (&args.username, &args.password) {
                (Some(u), Some(p)) => Some(oci::Credentials::new(u.clone(), p.clone())),
                (None, Some(_)) => {
                    return Err(CliError::config(anyhow!(
                        "a registry password is given (--password or OUTPOST_REGISTRY_PASSWORD) but \
                     no --username"
                    )));
                }
                _ => None,
            },
            ..oci::ClientOptions::default()
        })
    }
}

/// The exit code an OCI failure maps to: what the registry sent is the app's (65), a
/// reference or option the user gave is config (64), the rest runtime (1).
fn oci_error(e: oci::OciError) -> CliError {
    use oci::OciError as E;
    match e {
        E::Reference(_) | E::Setup(_) | E::Credentials(_) => CliError::config(e),
        E::DigestMismatch { .. }
        | E::SizeMismatch { .. }
        | E::TooLarge { .. }
        | E::MediaType { .. }
        | E::Invalid { .. } => CliError::app(e),
        _ => CliError::runtime(e),
    }
}

/// A progress display for an OCI push or pull: a spinner with the phase, a byte count while
/// the bundle layer moves. Invisible when stderr is not a terminal.
fn oci_progress(
    verb: &'static str,
    pb: &indicatif::ProgressBar,
) -> impl Fn(oci::artifact::Step<'_>) + Sync {
    let pb = pb.clone();
    move |step| match step {
        oci::artifact::Step::Phase(p) => pb.set_message(format!("{verb} {p}")),
        oci::artifact::Step::Bytes { done, total } => pb.set_message(format!(
            "{verb} bundle layer: {} of {}",
            crate::base::units::format_bytes(done),
            crate::base::units::format_bytes(total)
        )),
    }
}

fn push_cmd(
    bundle: &Path,
    reference: &str,
    sig: Option<PathBuf>,
    args: &RegistryArgs,
) -> CliResult {
    let t0 = Instant::now();
    let (reference, client) = registry_client(reference, args)?;
    if reference.tag.is_none() {
        return Err(CliError::config(anyhow!(
            "{reference}: a push needs a tag (oci://HOST/REPO:TAG); the digest is computed \
             from what is pushed"
        )));
    }
    let bytes = install::read_bundle_file(bundle, Limits::default().max_compressed)
        .map_err(CliError::app)?;
    let digest = bundle_mod::digest(&bytes);
    let sig_path = sig_path(bundle, sig);
    let sig = read_sig_file(bundle, &sig_path)?;
    let signed = SignedDoc::parse(&sig, MAX_SIG_FILE)
        .with_context(|| format!("{}", sig_path.display()))
        .map_err(CliError::app)?;
    let doc = signed.doc();
    if doc.digest != digest || doc.size != bytes.len() as u64 {
        return Err(CliError::app(anyhow!(
            "{}: signs {} but {} is {digest}; sign the bundle again",
            sig_path.display(),
            doc.digest,
            bundle.display()
        )));
    }
    let config = oci::artifact::BundleConfig {
        app: doc.app.clone(),
        version: doc.version.clone(),
        digest,
        size: bytes.len() as u64,
    };
    let rt = crate::ops::process::tokio_runtime(2)?;
    let pb = progress(&format!("pushing to {reference}"));
    let pushed = rt.block_on(oci::artifact::push_bundle(
        &client,
        &reference,
        bytes.into(),
        sig.into(),
        &config,
        &oci_progress("pushing", &pb),
    ));
    pb.finish_and_clear();
    let pushed = pushed.map_err(oci_error)?;
    let how = match pushed.referrers {
        oci::client::ReferrersSource::Api => "found by the referrers API".to_owned(),
        oci::client::ReferrersSource::FallbackTag => format!(
            "listed at tag {}",
            oci::client::fallback_tag(&pushed.manifest.digest)
        ),
    };
    eprintln!(
        "pushed {} {} ({digest}) to {reference} in {:.2?}; signature attached as {} ({how})",
        config.app,
        config.version,
        t0.elapsed(),
        pushed.signature.digest
    );
    println!("{}", reference.pinned(&pushed.manifest.digest));
    Ok(())
}

/// What the signed document of an `oci://` artifact says besides its digest and size.
struct OciRelease {
    app: Option<String>,
    version: Option<String>,
    expires_in: Duration,
    tenant: Option<String>,
}

/// `bundle sign oci://…`: signs the manifest the reference resolves to (its digest and byte
/// length: the manifest names every layer by digest, so this covers the content) and attaches
/// the signature file to it.
fn sign_oci_cmd(
    reference: &str,
    key: &Path,
    release: OciRelease,
    args: &RegistryArgs,
) -> CliResult {
    let t0 = Instant::now();
    let key_text = std::fs::read_to_string(key)
        .with_context(|| format!("{}: cannot read key", key.display()))
        .map_err(CliError::config)?;
    let sk = sign::parse_secret_key(&key_text)
        .with_context(|| format!("{}", key.display()))
        .map_err(CliError::config)?;
    let (reference, client) = registry_client(reference, args)?;
    let app = match release.app {
        Some(app) => app,
        None => default_app_name(&reference.repository).ok_or_else(|| {
            CliError::config(anyhow!(
                "{reference}: cannot make an app name of the repository {:?}; pass --app NAME",
                reference.repository
            ))
        })?,
    };
    let version = match (release.version, &reference.tag) {
        (Some(v), _) => v,
        (None, Some(tag)) if tag.parse::<sign::Version>().is_ok() => tag.clone(),
        (None, tag) => {
            return Err(CliError::config(anyhow!(
                "{reference}: the tag {} is not a release version (MAJOR.MINOR.PATCH); pass \
                 --version X.Y.Z",
                tag.as_deref()
                    .map_or("(none)".to_owned(), |t| format!("{t:?}"))
            )));
        }
    };
    let rt = crate::ops::process::tokio_runtime(2)?;
    let pb = progress(&format!("resolving {reference}"));
    let repo = reference.repository.clone();
    let fetched = rt
        .block_on(client.get_manifest(&repo, &reference.target()))
        .map_err(oci_error);
    let fetched = match fetched {
        Ok(f) => f,
        Err(e) => {
            pb.finish_and_clear();
            return Err(e);
        }
    };
    let kind = match &fetched.manifest {
        oci::Manifest::Image(m) => match oci::artifact::kind_of(m) {
            oci::artifact::ArtifactKind::OutpostBundle => "Outpost bundle".to_owned(),
            oci::artifact::ArtifactKind::WasmComponent => "Wasm component".to_owned(),
            oci::artifact::ArtifactKind::SpinApp => "Spin app".to_owned(),
            oci::artifact::ArtifactKind::Unknown(t) => format!("{t:?}"),
        },
        oci::Manifest::Index(_) => "image index".to_owned(),
    };
    let subject = oci::Descriptor::of(&fetched.media_type, &fetched.bytes);
    let now = unix_now();
    let doc = ReleaseDoc {
        app,
        version,
        digest: subject.digest,
        size: subject.size,
        created: now,
        expires: now.saturating_add(release.expires_in.as_secs()),
        tenant: release.tenant,
    };
    let mut signed = SignedDoc::new(doc)
        .with_context(|| format!("{reference}"))
        .map_err(CliError::config)?;
    signed
        .add_signature(&sk)
        .with_context(|| format!("{reference}"))
        .map_err(CliError::app)?;
    pb.set_message(format!("attaching the signature to {reference}"));
    let attached = rt.block_on(oci::artifact::attach_signature(
        &client,
        &repo,
        &subject,
        signed.encode().into(),
    ));
    pb.finish_and_clear();
    let attached = attached.map_err(oci_error)?;
    eprintln!(
        "signed {} {} ({kind} manifest {}, {} bytes) with key {}; signature attached as {} in \
         {:.2?}",
        signed.doc().app,
        signed.doc().version,
        subject.digest,
        subject.size,
        sk.id(),
        attached.signature.digest,
        t0.elapsed()
    );
    println!("{}", reference.pinned(&subject.digest));
    Ok(())
}

/// `bundle pull` of a Spin app: the directory it was pushed from (`spin.toml`, components,
/// files), as `DIR/APP-VERSION/`, written whole into a temporary sibling and renamed into place
/// (an existing directory is never touched). Pack, sign and push it as a bundle to give it to
/// nodes; the attached signatures (over the registry manifest) do not carry over.
fn write_pulled_spin_app(
    reference: &oci::Reference,
    pulled: oci::artifact::PulledSpinApp,
    output: &Path,
    t0: Instant,
) -> CliResult {
    let origin = format!("{reference} (locked app)");
    let layout = crate::bundle::spin_locked::layout(&pulled.locked, &origin, None)
        .map_err(|e| CliError::app(anyhow!(e)))?;
    // The name and version as the `spin.toml` mapping reads them (made valid, with notes).
    let spin = crate::bundle::spin::SpinApp::parse(&layout.spin_toml, &origin)
        .map_err(|e| CliError::app(anyhow!(e)))?;
    let (name, version) = spin.name_and_version();
    let dir = output.join(format!("{name}-{version}"));
    if dir.exists() {
        return Err(CliError::config(anyhow!(
            "{}: already exists; remove it or pull into another directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(output)
        .with_context(|| format!("{}: cannot create directory", output.display()))
        .map_err(CliError::runtime)?;
    let tmp = output.join(format!(".{name}-{version}.pulling-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let written =
        crate::node::dev::write_spin_layout(&tmp, &layout, &pulled.blobs).and_then(|()| {
            std::fs::rename(&tmp, &dir)
                .with_context(|| format!("{}: cannot rename into place", dir.display()))
        });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(CliError::runtime(e));
    }
    for note in &layout.notes {
        eprintln!("note: {note}");
    }
    eprintln!(
        "pulled Spin app {name} {version} ({} layers) from {reference} in {:.2?} into {}; \
         nothing was verified: serve it with `outpost serve`, or pack and sign it with \
         `outpost bundle pack` and `outpost bundle sign` for nodes",
        pulled.blobs.len(),
        t0.elapsed(),
        dir.display()
    );
    println!("{}", dir.display());
    Ok(())
}

/// The app name a repository path suggests: its last segment, lowercased, other characters
/// made `-`; `None` when nothing valid is left.
fn default_app_name(repository: &str) -> Option<String> {
    let last = repository.rsplit('/').next().unwrap_or(repository);
    let name = crate::bundle::manifest::sanitise_name(last);
    crate::bundle::manifest::is_valid_name(&name).then_some(name)
}

fn parse_size(s: &str) -> Result<u64, String> {
    crate::base::units::parse_bytes(s).map_err(|e| e.to_string())
}

fn pull_cmd(reference: &str, output: &Path, max_size: u64, args: &RegistryArgs) -> CliResult {
    let t0 = Instant::now();
    let (reference, client) = registry_client(reference, args)?;
    let limits = oci::artifact::PullLimits {
        max_bundle: max_size,
        max_signature: MAX_SIG_FILE as u64,
        ..oci::artifact::PullLimits::default()
    };
    let rt = crate::ops::process::tokio_runtime(2)?;
    let pb = progress(&format!("pulling {reference}"));
    // A Spin app is pulled as the Spin app directory it was pushed from.
    let repo = reference.repository.clone();
    let fetched = rt.block_on(client.get_manifest(&repo, &reference.target()));
    if let Ok(f) = &fetched
        && let oci::Manifest::Image(m) = &f.manifest
        && oci::artifact::kind_of(m) == oci::artifact::ArtifactKind::SpinApp
    {
        let pinned = reference.with_digest(f.digest);
        let pulled = rt.block_on(oci::artifact::pull_spin_app(&client, &pinned, &limits));
        pb.finish_and_clear();
        return write_pulled_spin_app(&pinned, pulled.map_err(oci_error)?, output, t0);
    }
    let pulled = rt.block_on(oci::artifact::pull_bundle(
        &client,
        &reference,
        &limits,
        &oci_progress("pulling", &pb),
    ));
    pb.finish_and_clear();
    let pulled = pulled.map_err(oci_error)?;
    let digest = bundle_mod::digest(&pulled.bundle);
    // The signature file that signs these bytes; a re-signed bundle may carry several, the
    // last listed is the newest.
    let signed = pulled
        .signatures
        .iter()
        .rev()
        .filter_map(|s| SignedDoc::parse(s, MAX_SIG_FILE).ok().map(|d| (s, d)))
        .find(|(_, d)| d.doc().digest == digest && d.doc().size == pulled.bundle.len() as u64);
    let Some((sig, signed)) = signed else {
        return Err(CliError::app(anyhow!(
            "{}: no signature file that signs bundle {digest} is attached ({} attached \
             signature artifact(s) found); push it with `outpost bundle push`",
            reference.pinned(&pulled.manifest_digest),
            pulled.signatures.len()
        )));
    };
    let doc = signed.doc();
    let safe = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    if !safe(&doc.app) || !safe(&doc.version) {
        return Err(CliError::app(anyhow!(
            "{}: the signed document names app {:?} version {:?}, which cannot be a file name",
            reference.pinned(&pulled.manifest_digest),
            doc.app,
            doc.version
        )));
    }
    if pulled.config.app != doc.app || pulled.config.version != doc.version {
        eprintln!(
            "warning: the manifest's config says {} {}, the signed document {} {}; the signed \
             document is what counts",
            pulled.config.app, pulled.config.version, doc.app, doc.version
        );
    }
    std::fs::create_dir_all(output)
        .with_context(|| format!("{}: cannot create directory", output.display()))
        .map_err(CliError::runtime)?;
    let bundle_path = output.join(format!("{}-{}.bundle", doc.app, doc.version));
    let sig_path = install::sig_path_for(&bundle_path);
    atomic::write_file(&bundle_path, &pulled.bundle, 0o644)
        .with_context(|| format!("{}: cannot write", bundle_path.display()))
        .map_err(CliError::runtime)?;
    if let Err(e) = atomic::write_file(&sig_path, sig, 0o644) {
        // Never leave a bundle without the signature file it came with.
        let _ = std::fs::remove_file(&bundle_path);
        return Err(CliError::runtime(
            anyhow!(e).context(format!("{}: cannot write", sig_path.display())),
        ));
    }
    eprintln!(
        "pulled {} {} ({digest}, {}) from {} in {:.2?}; signature NOT verified here: run \
         `outpost bundle verify`",
        doc.app,
        doc.version,
        crate::base::units::format_bytes(pulled.bundle.len() as u64),
        reference.pinned(&pulled.manifest_digest),
        t0.elapsed()
    );
    println!("{}", bundle_path.display());
    Ok(())
}
