//! systemd integration through the real binary: readiness, watchdog and stop notifications on a
//! fake `NOTIFY_SOCKET`, and socket activation through `systemd-socket-activate`.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn write_config(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("outpost.toml");
    std::fs::write(
        &p,
        format!(
            "[node]\nstate_dir = \"{}\"\n[listen]\nhttp = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\ndrain_timeout = \"5s\"\n[[app]]\nsource = \"builtin:demo\"\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    p
}

/// Kills the child on drop, so a failed assertion does not leak a daemon.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn recv(sock: &UnixDatagram, log: &Path) -> String {
    let mut buf = [0u8; 1024];
    match sock.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(e) => panic!(
            "no notification ({e}); stderr:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        ),
    }
}

/// `outpost run` on the demo config in `dir` with a fake `NOTIFY_SOCKET` (bound here) and a
/// 0.4 s watchdog (pings every 0.2 s, so tests see several quickly); stderr goes to the returned
/// log file. `stdout` is where the daemon's stdout goes; `env` is added.
fn spawn_notified(
    dir: &Path,
    stdout: Stdio,
    env: &[(&str, &str)],
) -> (Kill, UnixDatagram, std::path::PathBuf) {
    let cfg = write_config(dir);
    let notify = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    // Generous bounds: they only turn a hang into a failure, nothing is timed.
    sock.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let log = dir.join("stderr.log");
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config", cfg.to_str().unwrap()])
        .env("HOME", dir)
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .env_remove("OUTPOST_LOG")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    (Kill(cmd.spawn().unwrap()), sock, log)
}

/// Sends signal `name` to the daemon with kill(1).
fn signal(child: &Kill, name: &str) {
    let st = Command::new("kill")
        .args([format!("-{name}"), child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Receives datagrams until one contains `line`; returns it.
fn recv_until(sock: &UnixDatagram, line: &str, log: &Path) -> String {
    loop {
        let m = recv(sock, log);
        if m.lines().any(|l| l == line) {
            return m;
        }
    }
}

#[tokio::test]
async fn run_notifies_ready_after_listening_pings_watchdog_reloads_and_notifies_stopping() {
    let dir = tempfile::tempdir().unwrap();
    // stdout is a socket pair rather than a pipe so the test can look at what had been printed
    // by the time READY arrived, without blocking.
    let (out, child_out) = UnixStream::pair().unwrap();
    let (mut child, sock, log) =
        spawn_notified(dir.path(), Stdio::from(OwnedFd::from(child_out)), &[]);

    let ready = recv_until(&sock, "READY=1", &log);
    // Everything printed before READY is already readable.
    out.set_nonblocking(true).unwrap();
    let mut printed = String::new();
    let mut buf = [0u8; 4096];
    loop {
        match (&out).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => printed.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("reading stdout: {e}"),
        }
    }
    let addr: SocketAddr = printed
        .lines()
        .find_map(|l| l.strip_prefix("listening on http://"))
        .unwrap_or_else(|| panic!("READY=1 before the listening line; stdout so far: {printed:?}"))
        .parse()
        .unwrap();
    assert!(
        ready.contains(&format!("STATUS=serving 1 app (1 component) on {addr}")),
        "{ready:?}"
    );
    let r = get(addr, "/").await;
    assert_eq!((r.status, r.body.as_str()), (200, "hello from outpost\n"));

    for _ in 0..3 {
        recv_until(&sock, "WATCHDOG=1", &log);
    }

    // A reload (what `ExecReload=` sends) is announced and its end too, with the counts.
    signal(&child, "HUP");
    let reloading = recv_until(&sock, "RELOADING=1", &log);
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading:?}"))
        .parse()
        .unwrap();
    assert!(usec > 0);
    let reloaded = recv_until(&sock, "READY=1", &log);
    assert!(
        reloaded.contains(&format!("STATUS=serving 1 app (1 component) on {addr}")),
        "{reloaded:?}"
    );
    let r = get(addr, "/").await;
    assert_eq!(r.status, 200);

    signal(&child, "TERM");
    let stopping = recv_until(&sock, "STOPPING=1", &log);
    assert!(stopping.contains("STATUS=draining"), "{stopping:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st.code();
        }
        assert!(
            Instant::now() < deadline,
            "outpost did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
}

/// The watchdog is fed only while every serving thread answers. No guest can wedge one (guests
/// yield at every epoch tick and blocking WASI calls run off-thread), so a debug-build-only
/// failpoint blocks serving thread 0 the way a host bug would; the pings must stop, with the
/// reason in the log, and systemd would restart the service.
#[tokio::test]
async fn a_wedged_serving_thread_withholds_the_watchdog_ping() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, sock, log) = spawn_notified(
        dir.path(),
        Stdio::null(),
        &[("OUTPOST_DEBUG_WEDGE_SERVING_THREAD_AFTER_MS", "1000")],
    );
    recv_until(&sock, "READY=1", &log);
    let deadline = Instant::now() + Duration::from_secs(120);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    while !read_log().contains("withholding the systemd watchdog ping") {
        assert!(
            Instant::now() < deadline,
            "the probe never failed; stderr:\n{}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(read_log().contains("failpoint: wedging serving thread 0"));
    // Whatever was sent before the probe failed is drained; then nothing more comes, over ten
    // ping intervals.
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1024];
    while sock.recv(&mut buf).is_ok() {}
    sock.set_nonblocking(false).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(
                    !m.lines().any(|l| l == "WATCHDOG=1"),
                    "pinged while wedged: {m:?}"
                );
            }
            Err(_) => break,
        }
    }
}

#[tokio::test]
async fn run_serves_on_a_socket_passed_by_systemd_socket_activate() {
    let activate = Command::new("sh")
        .args(["-c", "command -v systemd-socket-activate"])
        .output()
        .unwrap();
    if !activate.status.success() {
        // CI installs it (.ci/run) and must prove socket activation, so a missing tool there is
        // a broken CI setup, not a reason to pass.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but systemd-socket-activate is not installed (.ci/run installs the \
             systemd package before the tests)"
        );
        eprintln!(
            "SKIPPED: systemd-socket-activate is not installed (apt-get install systemd provides it)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    // A free port for systemd-socket-activate to listen on (it binds the socket, like systemd).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let log = dir.path().join("stderr.log");
    let home = format!("HOME={}", dir.path().display());
    let child = Command::new("systemd-socket-activate")
        .args(["-l", &listen, "--fdname=http", "-E", &home, "-E", "PATH"])
        .args([BIN, "run", "--config", cfg.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut child = Kill(child);
    // systemd-socket-activate starts outpost on the first connection; that request waits in
    // the backlog of the inherited socket until outpost accepts it.
    let addr: SocketAddr = listen.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "systemd-socket-activate is not listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = get(addr, "/").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello from outpost\n"),
        "stderr:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // outpost announces the inherited socket, not the configured port 0.
    let mut out = child.0.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 1024];
    while !seen.contains(&format!("listening on http://{listen}\n")) {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "stdout closed; saw {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log_text.contains("tenant HTTP sockets from systemd"),
        "{log_text}"
    );
}
