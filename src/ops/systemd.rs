//! systemd integration without libsystemd: readiness and status notifications (`sd_notify`
//! over `$NOTIFY_SOCKET`), the watchdog, and socket activation (`$LISTEN_FDS`).
//!
//! Owns: the notify wire format, parsing the `NOTIFY_SOCKET` / `WATCHDOG_*` / `LISTEN_*`
//! environment, the watchdog loop (ping only while a health probe passes), and adopting the
//! listening sockets systemd passes in — one of the crate's two `unsafe` blocks lives here, in
//! [`adopt_inherited_fd`] (the other maps compiled code: `runtime::compile`).
//! Must not: decide *when* the daemon is ready or healthy (the caller passes the probe and
//! sends READY), bind sockets, or route traffic. Every function is a no-op outside systemd.
#![deny(unsafe_code)]

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// One `KEY=VALUE` assignment of the notify protocol (`man sd_notify`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notify {
    /// Start-up finished: listeners bound, apps loaded.
    Ready,
    /// Shutdown (drain) has begun.
    Stopping,
    /// The watchdog keep-alive.
    Watchdog,
    /// A reload (SIGHUP) has begun, at `monotonic_usec` on `CLOCK_MONOTONIC` (as
    /// `sd_notify(3)` asks); [`Notify::Ready`] again says it finished.
    Reloading { monotonic_usec: u64 },
    /// Free-form status shown by `systemctl status`; newlines are replaced by spaces.
    Status(String),
}

/// The datagram for `msgs`: one `KEY=VALUE` line each.
pub fn format_message(msgs: &[Notify]) -> String {
    let mut out = String::new();
    for m in msgs {
        match m {
            Notify::Ready => out.push_str("READY=1"),
            Notify::Stopping => out.push_str("STOPPING=1"),
            Notify::Watchdog => out.push_str("WATCHDOG=1"),
            Notify::Reloading { monotonic_usec } => {
                out.push_str("RELOADING=1\nMONOTONIC_USEC=");
                out.push_str(&monotonic_usec.to_string());
            }
            Notify::Status(s) => {
                out.push_str("STATUS=");
                out.extend(s.chars().map(|c| if c == '\n' { ' ' } else { c }));
            }
        }
        out.push('\n');
    }
    out
}

/// `CLOCK_MONOTONIC` now, in microseconds: the clock `MONOTONIC_USEC=` is read against.
pub fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0) / 1_000)
}

/// `serving 2 apps (3 components) on 127.0.0.1:8080, [::]:8443` — the STATUS line once ready.
pub fn serving_status(apps: usize, components: usize, addrs: &[SocketAddr]) -> String {
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let on = if addrs.is_empty() {
        "no tenant listeners".to_owned()
    } else {
        addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "serving {} ({}) on {on}",
        plural(apps, "app", "apps"),
        plural(components, "component", "components")
    )
}

/// What can go wrong talking to systemd; the caller decides whether it matters.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("NOTIFY_SOCKET={0:?}: not an absolute path or @abstract name")]
    BadNotifySocket(String),
    #[error("NOTIFY_SOCKET: {0}")]
    NotifySocket(#[source] std::io::Error),
    #[error("sending to NOTIFY_SOCKET: {0}")]
    Send(#[source] std::io::Error),
    #[error("{var}={value:?}: {why}")]
    BadEnv {
        var: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("socket activation: fd {fd}: {why}")]
    BadFd { fd: RawFd, why: String },
}

// === impl Notifier ===

/// A connection-less sender to `$NOTIFY_SOCKET`.
#[derive(Debug)]
pub struct Notifier {
    sock: UnixDatagram,
    addr: UnixAddr,
}

impl Notifier {
    /// The notifier for `$NOTIFY_SOCKET`, or `None` when it is unset or empty (not under
    /// systemd, or `Type=` is not `notify`).
    pub fn from_env() -> Result<Option<Self>, SystemdError> {
        Self::for_socket(std::env::var_os("NOTIFY_SOCKET").as_deref())
    }

    /// The notifier for a `NOTIFY_SOCKET` value: an absolute path or `@name` (abstract
    /// namespace).
    pub fn for_socket(value: Option<&OsStr>) -> Result<Option<Self>, SystemdError> {
        let Some(v) = value.filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let s = v.to_string_lossy();
        let addr = if let Some(name) = s.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            UnixAddr::from_abstract_name(name.as_bytes()).map_err(SystemdError::NotifySocket)?
        } else if s.starts_with('/') {
            UnixAddr::from_pathname(std::path::Path::new(v)).map_err(SystemdError::NotifySocket)?
        } else {
            return Err(SystemdError::BadNotifySocket(s.into_owned()));
        };
        let sock = UnixDatagram::unbound().map_err(SystemdError::NotifySocket)?;
        // A full receive queue must not stall a runtime thread: such a message is dropped.
        sock.set_nonblocking(true)
            .map_err(SystemdError::NotifySocket)?;
        Ok(Some(Self { sock, addr }))
    }

    /// Sends `msgs` as one datagram.
    pub fn send(&self, msgs: &[Notify]) -> Result<(), SystemdError> {
        self.sock
            .send_to_addr(format_message(msgs).as_bytes(), &self.addr)
            .map(drop)
            .map_err(SystemdError::Send)
    }

    /// [`Notifier::send`], logging a failure instead of returning it.
    pub fn send_or_log(&self, msgs: &[Notify]) {
        if let Err(e) = self.send(msgs) {
            tracing::warn!(error = %e, "systemd notification not sent");
        }
    }
}

// === watchdog ===

/// How often to ping: half of `WATCHDOG_USEC` (what `sd_watchdog_enabled` advises), or `None`
/// when the watchdog is off or meant for another process (`WATCHDOG_PID` ≠ `my_pid`).
pub fn watchdog_interval(
    usec: Option<&OsStr>,
    pid: Option<&OsStr>,
    my_pid: u32,
) -> Result<Option<Duration>, SystemdError> {
    let Some(usec) = usec.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if let Some(pid) = pid.filter(|v| !v.is_empty())
        && pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(my_pid)
    {
        return Ok(None);
    }
    let bad = |why| SystemdError::BadEnv {
        var: "WATCHDOG_USEC",
        value: usec.to_string_lossy().into_owned(),
        why,
    };
    let n: u64 = usec
        .to_str()
        .and_then(|u| u.parse().ok())
        .ok_or_else(|| bad("not a number of microseconds"))?;
    if n == 0 {
        return Err(bad("zero"));
    }
    Ok(Some(Duration::from_micros(n / 2)))
}

/// [`watchdog_interval`] for this process's environment.
pub fn watchdog_interval_from_env() -> Result<Option<Duration>, SystemdError> {
    watchdog_interval(
        std::env::var_os("WATCHDOG_USEC").as_deref(),
        std::env::var_os("WATCHDOG_PID").as_deref(),
        std::process::id(),
    )
}

/// One watchdog step: runs `probe` and pings only if it reports healthy. Returns whether it
/// pinged.
pub async fn watchdog_step<F: Future<Output = bool>>(notifier: &Notifier, probe: F) -> bool {
    if !probe.await {
        tracing::error!("health probe failed: withholding the systemd watchdog ping");
        return false;
    }
    notifier.send_or_log(&[Notify::Watchdog]);
    true
}

/// Pings every `interval` for as long as `probe` passes; runs until dropped/aborted. The
/// loop itself runs on the caller's runtime, so a wedged runtime also stops the pings.
pub async fn run_watchdog<P, F>(notifier: std::sync::Arc<Notifier>, interval: Duration, probe: P)
where
    P: Fn() -> F,
    F: Future<Output = bool>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        watchdog_step(&notifier, probe()).await;
    }
}

/// True when every runtime in `handles` runs a no-op task within `within`: a runtime whose
/// thread is blocked (a wedged guest or host call) never polls it. The spawned no-ops of a
/// wedged runtime stay queued; one per probe is negligible.
pub async fn runtimes_answer(handles: &[tokio::runtime::Handle], within: Duration) -> bool {
    let probes = futures::future::join_all(handles.iter().map(|h| h.spawn(async {})));
    tokio::time::timeout(within, probes)
        .await
        .is_ok_and(|r| r.iter().all(Result::is_ok))
}

// === socket activation ===

/// What an inherited listening socket is for, from its `FileDescriptorName=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Tenant HTTP (any name but `admin`).
    Http,
    /// The admin endpoints (name `admin`).
    Admin,
}

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;
/// More inherited sockets than this is a broken environment, not a configuration.
const MAX_LISTEN_FDS: usize = 256;

/// Which fds are ours and their roles, from `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`.
/// `None`: no socket activation for this process. Pure, for tests.
pub fn activation_plan(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    fd_names: Option<&str>,
    my_pid: u32,
) -> Result<Option<Vec<(RawFd, Role)>>, SystemdError> {
    let (Some(pid), Some(fds)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    if pid.parse::<u32>().ok() != Some(my_pid) {
        return Ok(None);
    }
    let bad = |var, value: &str, why| SystemdError::BadEnv {
        var,
        value: value.to_owned(),
        why,
    };
    let n: usize = fds
        .parse()
        .map_err(|_| bad("LISTEN_FDS", fds, "not a number"))?;
    if n > MAX_LISTEN_FDS {
        return Err(bad("LISTEN_FDS", fds, "more than 256 sockets"));
    }
    let names: Vec<&str> = match fd_names {
        Some(s) if !s.is_empty() => s.split(':').collect(),
        _ => Vec::new(),
    };
    if !names.is_empty() && names.len() != n {
        return Err(bad(
            "LISTEN_FDNAMES",
            fd_names.unwrap_or_default(),
            "not one name per LISTEN_FDS socket",
        ));
    }
    let plan: Vec<(RawFd, Role)> = (0..n)
        .map(|i| {
            let role = match names.get(i) {
                Some(&"admin") => Role::Admin,
                _ => Role::Http,
            };
            (LISTEN_FDS_START + i as RawFd, role)
        })
        .collect();
    if plan.iter().filter(|(_, r)| *r == Role::Admin).count() > 1 {
        return Err(bad(
            "LISTEN_FDNAMES",
            fd_names.unwrap_or_default(),
            "more than one `admin` socket",
        ));
    }
    Ok(Some(plan))
}

/// Listening sockets handed to the node already bound, by role: passed in by systemd
/// ([`take_listeners`]), or bound by a test or an embedding program (port 0 included). Each role
/// given replaces the configured addresses of that role.
#[derive(Debug, Default)]
pub struct Sockets {
    pub http: Vec<std::net::TcpListener>,
    pub admin: Option<std::net::TcpListener>,
}

/// Set once the inherited fds have been adopted: they are owned exactly once.
static ADOPTED: AtomicBool = AtomicBool::new(false);

/// Takes the sockets systemd passed to this process (`None` without socket activation).
/// Each is checked to be a TCP socket, made non-blocking and close-on-exec. Only the first
/// call adopts anything; later calls return `None`.
pub fn take_listeners() -> Result<Option<Sockets>, SystemdError> {
    let var = |k| std::env::var(k).ok();
    let Some(plan) = activation_plan(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    )?
    else {
        return Ok(None);
    };
    if ADOPTED.swap(true, Ordering::AcqRel) {
        return Ok(None);
    }
    let mut out = Sockets::default();
    for (fd, role) in plan {
        let bad = |why: String| SystemdError::BadFd { fd, why };
        // The fd must be open and a socket before it is adopted; /proc says so without a syscall
        // wrapper (and a closed fd is never turned into an `OwnedFd`).
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .map_err(|e| bad(format!("not an open file descriptor: {e}")))?;
        if !link.to_string_lossy().starts_with("socket:") {
            return Err(bad(format!("not a socket but {}", link.display())));
        }
        let inherited = std::net::TcpListener::from(adopt_inherited_fd(fd));
        inherited
            .local_addr()
            .map_err(|e| bad(format!("not a TCP socket: {e}")))?;
        // systemd passes the fds without FD_CLOEXEC; `try_clone` duplicates with it set
        // (F_DUPFD_CLOEXEC), and dropping the original closes the inheritable number.
        let l = inherited.try_clone().map_err(|e| bad(e.to_string()))?;
        drop(inherited);
        l.set_nonblocking(true).map_err(|e| bad(e.to_string()))?;
        match role {
            Role::Http => out.http.push(l),
            Role::Admin => out.admin = Some(l),
        }
    }
    Ok(Some(out))
}

/// Turns an inherited descriptor number into an owned fd.
#[allow(unsafe_code)]
fn adopt_inherited_fd(fd: RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` is one of 3..3+LISTEN_FDS with LISTEN_PID equal to our pid, so systemd (or
    // `systemd-socket-activate`) opened it for this process and nothing else in the process
    // owns it; the caller checked through /proc that it is open and a socket; `ADOPTED`
    // guarantees each number is adopted exactly once (the env vars cannot be removed safely in
    // a threaded process, so the flag stands in for unsetting them).
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_key_value_lines() {
        assert_eq!(
            format_message(&[Notify::Ready, Notify::Status("serving\n1 app".into())]),
            "READY=1\nSTATUS=serving 1 app\n"
        );
        assert_eq!(format_message(&[Notify::Stopping]), "STOPPING=1\n");
        assert_eq!(format_message(&[Notify::Watchdog]), "WATCHDOG=1\n");
        assert_eq!(
            format_message(&[Notify::Reloading {
                monotonic_usec: 12_345
            }]),
            "RELOADING=1\nMONOTONIC_USEC=12345\n"
        );
    }

    #[test]
    fn status_counts_apps_components_and_addresses() {
        let a: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let b: SocketAddr = "[::1]:8443".parse().unwrap();
        assert_eq!(
            serving_status(1, 1, &[a]),
            "serving 1 app (1 component) on 127.0.0.1:8080"
        );
        assert_eq!(
            serving_status(2, 3, &[a, b]),
            "serving 2 apps (3 components) on 127.0.0.1:8080, [::1]:8443"
        );
        assert_eq!(
            serving_status(0, 0, &[]),
            "serving 0 apps (0 components) on no tenant listeners"
        );
    }

    #[test]
    fn notify_socket_values() {
        assert!(Notifier::for_socket(None).unwrap().is_none());
        assert!(
            Notifier::for_socket(Some(OsStr::new("")))
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            Notifier::for_socket(Some(OsStr::new("relative/path"))),
            Err(SystemdError::BadNotifySocket(_))
        ));
        assert!(
            Notifier::for_socket(Some(OsStr::new("@outpost-test")))
                .unwrap()
                .is_some()
        );
    }

    fn receiver() -> (tempfile::TempDir, UnixDatagram, Notifier) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_nonblocking(true).unwrap();
        let n = Notifier::for_socket(Some(path.as_os_str()))
            .unwrap()
            .unwrap();
        (dir, rx, n)
    }

    fn recv(rx: &UnixDatagram) -> Option<String> {
        let mut buf = [0u8; 512];
        match rx.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("recv: {e}"),
        }
    }

    #[test]
    fn fake_notify_socket_receives_datagrams() {
        let (_dir, rx, n) = receiver();
        n.send(&[Notify::Ready, Notify::Status("up".into())])
            .unwrap();
        assert_eq!(recv(&rx).as_deref(), Some("READY=1\nSTATUS=up\n"));
        n.send(&[Notify::Stopping]).unwrap();
        assert_eq!(recv(&rx).as_deref(), Some("STOPPING=1\n"));
        assert_eq!(recv(&rx), None);
    }

    #[test]
    fn abstract_notify_socket_receives_datagrams() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("outpost-notify-test-{}", std::process::id());
        let addr = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        rx.set_nonblocking(true).unwrap();
        let n = Notifier::for_socket(Some(OsStr::new(&format!("@{name}"))))
            .unwrap()
            .unwrap();
        n.send(&[Notify::Watchdog]).unwrap();
        assert_eq!(recv(&rx).as_deref(), Some("WATCHDOG=1\n"));
    }

    #[tokio::test]
    async fn watchdog_pings_only_while_healthy() {
        let (_dir, rx, n) = receiver();
        assert!(watchdog_step(&n, async { true }).await);
        assert_eq!(recv(&rx).as_deref(), Some("WATCHDOG=1\n"));
        assert!(!watchdog_step(&n, async { false }).await);
        assert_eq!(recv(&rx), None);
    }

    /// A current-thread runtime driven by its own thread until `release` is dropped or sent to;
    /// `wedge` blocks that thread outside the runtime first, as a stuck serving thread would.
    fn runtime_thread(wedge: bool) -> (tokio::runtime::Handle, std::sync::mpsc::Sender<()>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let handle = rt.handle().clone();
        let (release, released) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if wedge {
                let _ = released.recv();
            } else {
                rt.block_on(async {
                    let _ = tokio::task::spawn_blocking(move || released.recv()).await;
                });
            }
        });
        (handle, release)
    }

    #[tokio::test]
    async fn probe_passes_for_running_runtimes_and_fails_for_a_wedged_one() {
        let (a, _keep_a) = runtime_thread(false);
        let (b, _keep_b) = runtime_thread(false);
        // Generous: a healthy runtime answers in microseconds; the bound only avoids a hang.
        assert!(runtimes_answer(&[a.clone(), b.clone()], Duration::from_secs(60)).await);
        let (stuck, _keep_stuck) = runtime_thread(true);
        // A wedged runtime never answers, whatever the bound.
        assert!(!runtimes_answer(&[a, stuck, b], Duration::from_millis(50)).await);
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_and_honours_the_pid() {
        let s = |v: &'static str| Some(OsStr::new(v));
        assert_eq!(watchdog_interval(None, None, 7).unwrap(), None);
        assert_eq!(
            watchdog_interval(s("30000000"), None, 7).unwrap(),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval(s("30000000"), s("7"), 7).unwrap(),
            Some(Duration::from_secs(15))
        );
        assert_eq!(watchdog_interval(s("30000000"), s("8"), 7).unwrap(), None);
        assert!(watchdog_interval(s("soon"), None, 7).is_err());
        assert!(watchdog_interval(s("0"), None, 7).is_err());
    }

    #[test]
    fn activation_plan_roles_and_pid() {
        assert_eq!(activation_plan(None, Some("1"), None, 7).unwrap(), None);
        assert_eq!(
            activation_plan(Some("8"), Some("1"), None, 7).unwrap(),
            None
        );
        assert_eq!(
            activation_plan(Some("7"), Some("2"), None, 7).unwrap(),
            Some(vec![(3, Role::Http), (4, Role::Http)])
        );
        assert_eq!(
            activation_plan(Some("7"), Some("2"), Some("admin:http"), 7).unwrap(),
            Some(vec![(3, Role::Admin), (4, Role::Http)])
        );
        assert_eq!(
            activation_plan(Some("7"), Some("1"), Some("outpost.socket"), 7).unwrap(),
            Some(vec![(3, Role::Http)])
        );
        assert!(activation_plan(Some("7"), Some("2"), Some("http"), 7).is_err());
        assert!(activation_plan(Some("7"), Some("2"), Some("admin:admin"), 7).is_err());
        assert!(activation_plan(Some("7"), Some("x"), None, 7).is_err());
        assert!(activation_plan(Some("7"), Some("100000"), None, 7).is_err());
    }
}
