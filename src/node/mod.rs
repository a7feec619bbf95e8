//! The node's composition root: `outpost run` put together — config → sizing → runtime →
//! store and installs → routes → systemd → listeners → agent → drain ([`run`]), and reloading it
//! on SIGHUP ([`reload`]), with the trust policy built from `[trust]` ([`trust`]).
//!
//! Owns: the order in which the daemon's parts are built, started and stopped, and the wiring
//! between them (which part gets which handle); the process-level helpers every server
//! subcommand shares (the async runtime, SIGTERM/SIGINT, the address lines on stdout, TLS setup
//! from a certificate spec). Errors carry the exit code they map to
//! (`ops::process::ExitError`).
//! Must not: parse arguments or print for people beyond the address lines supervisors and tests
//! read (that is `cli`), or hold logic another module needs (installs are `sync::pipeline`,
//! serving is `serve`, the agent is `sync`).

pub mod dev;
pub mod install;
mod oci;
pub mod reload;
pub mod run;
pub mod trust;

use crate::ops::process::{ExitError, announce, announce_scheme};

/// One log line with the numbers that shape the node, and why the allocator is what it is (on a
/// 39-bit Raspberry Pi kernel this is where "reservations shrunk" or "on-demand" shows up).
pub fn log_sizing(s: &crate::sizing::Sizing) {
    use crate::sizing::human_bytes;
    tracing::info!(
        worker_threads = s.worker_threads.value,
        instance_slots = s.instance_slots.value,
        memory_reservation = %human_bytes(s.memory.memory_reservation.value),
        max_memory_per_instance = %human_bytes(s.max_memory_per_instance.value),
        allocator = ?s.allocator.value,
        reason = %s.allocator.reason,
        "sized for this machine (details: outpost info)"
    );
    tracing::info!(
        allocator = ?s.wasi03.allocator.value,
        memory_reservation = %human_bytes(s.wasi03.memory.memory_reservation.value),
        reason = %s.wasi03.allocator.reason,
        "WASI 0.3 engine sized"
    );
}

/// Announces every tenant listener: `listening on http://…`, `https://…`, `h3://…`.
pub fn announce_listeners(listeners: &crate::serve::Listeners) {
    for a in listeners.http_addrs() {
        announce("listening on", a);
    }
    for a in listeners.https_addrs() {
        announce_scheme("listening on", "https", a);
    }
    for a in listeners.h3_addrs() {
        announce_scheme("listening on", "h3", a);
    }
}

/// Certificates and TLS/QUIC configs for the https listeners, loaded (or generated) and checked
/// before any port is bound: a missing or broken certificate is a config error (exit 64).
/// `self_signed_pem`: where to write a generated development certificate for clients to trust
/// (`None`: write nothing).
pub fn tls_setup(
    mut spec: crate::serve::certs::CertSpec,
    self_signed: bool,
    self_signed_pem: Option<&std::path::Path>,
    h3: bool,
    sizing: &crate::sizing::Sizing,
    handshake_timeout: std::time::Duration,
) -> Result<crate::serve::tls::TlsSetup, ExitError> {
    use crate::serve::certs::{CertStore, DefaultCert, SELF_SIGNED_NAMES, SelfSigned};
    if self_signed {
        let cert = SelfSigned::generate().map_err(ExitError::runtime)?;
        let written = match self_signed_pem {
            Some(path) => match cert.write_pem(path) {
                Ok(()) => Some(path.display().to_string()),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot save the self-signed certificate for clients to trust");
                    None
                }
            },
            None => None,
        };
        tracing::warn!(
            names = %SELF_SIGNED_NAMES.join(", "),
            sha256 = %cert.fingerprint,
            pem = written.as_deref().unwrap_or("(not written)"),
            "generated a self-signed TLS certificate (development only: clients must be told to trust it)"
        );
        spec.default = Some(DefaultCert::SelfSigned(cert));
    }
    let certs = CertStore::load(spec).map_err(ExitError::config)?;
    let limits = h3.then(|| {
        crate::serve::tls::QuicLimits::from_sizing(&sizing.quic, sizing.max_connections.value)
    });
    crate::serve::tls::TlsSetup::new(
        std::sync::Arc::new(certs),
        limits.as_ref(),
        handshake_timeout,
    )
    .map_err(ExitError::runtime)
}
