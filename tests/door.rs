//! The shared door of every listener, against the real binary: slow and silent clients are
//! closed at the header deadline, idle keep-alive connections at the idle timeout, a flood of
//! slow connections at the connection cap cannot lock out a normal client, the per-client-IP cap,
//! and the admin listener's own cap and header deadline. Deadlines are set short in the config so
//! the tests run fast; waits are generous failure guards, never timing asserts.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any one wait may take before the test fails (the deadlines under test are ≤ 1 s).
const GUARD: Duration = Duration::from_secs(30);

fn write_config(dir: &std::path::Path, listen_extra: &str, runtime: &str) -> std::path::PathBuf {
    write_node_config(
        dir,
        "outpost-door.toml",
        &format!("drain_timeout = \"1s\"\n{listen_extra}"),
        &format!("[runtime]\n{runtime}\n[[app]]\nsource = \"builtin:demo\"\nhosts = [\"*\"]"),
    )
}

/// Reads until the server closes the connection (EOF or reset): true; false when `GUARD`
/// passes first.
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(GUARD, read_all).await.is_ok()
}

/// Whether the server has closed `s` already (a read would not block).
async fn already_closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// A connection that sends part of a request head and then nothing.
async fn partial_head(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    s
}

/// The value of the `outpost_connections_closed_total` series for `listener` and `reason`.
async fn closed_count(admin: SocketAddr, listener: &str, reason: &str) -> u64 {
    let m = get(admin, "/metrics").await;
    let needle =
        format!("outpost_connections_closed_total{{listener=\"{listener}\",reason=\"{reason}\"}} ");
    m.body
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn slow_silent_and_idle_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "header_timeout = \"1s\"\nidle_timeout = \"1s\"",
        "",
    );
    let d = Daemon::run_config(&cfg);
    let admin = d.admin.unwrap();

    // A partial head, then silence.
    let mut slow = partial_head(d.addr()).await;
    // Connected, then nothing at all.
    let mut silent = TcpStream::connect(d.addr()).await.unwrap();
    // A head trickled a byte at a time: the deadline is for the whole head, not between bytes.
    let trickle = tokio::spawn({
        let addr = d.addr();
        async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Trickle: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
                if s.write_all(&[*b]).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            closed_by_server(&mut s).await
        }
    });
    assert!(closed_by_server(&mut slow).await, "partial head held open");
    assert!(
        closed_by_server(&mut silent).await,
        "silent connection held open"
    );
    assert!(trickle.await.unwrap(), "trickled head held open");

    // A keep-alive connection that answered a request and then sits idle.
    let mut idle = TcpStream::connect(d.addr()).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("hello from outpost") {
        let n = tokio::time::timeout(GUARD, idle.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the response");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert!(
        closed_by_server(&mut idle).await,
        "idle connection held open"
    );

    assert!(closed_count(admin, "tenant", "header_timeout").await >= 3);
    assert!(closed_count(admin, "tenant", "idle_timeout").await >= 1);
    // The door closed them; normal requests are unaffected.
    assert_eq!(get(d.addr(), "/").await.status, 200);
}

#[tokio::test]
async fn a_normal_client_is_served_during_a_slow_header_flood_at_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    // Long deadlines: only eviction at the cap can let the normal client in quickly.
    let cfg = write_config(
        dir.path(),
        "header_timeout = \"300s\"\nidle_timeout = \"3600s\"",
        "max_connections = 32",
    );
    let d = Daemon::run_config(&cfg);
    let admin = d.admin.unwrap();
    // More slow connections than the cap; those beyond it wait in the kernel backlog.
    let mut flood = Vec::new();
    for _ in 0..48 {
        flood.push(partial_head(d.addr()).await);
    }
    // Let the accept loop take in what it will before the normal client arrives.
    while closed_count(admin, "tenant", "evicted").await < 48 - 32 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        let r = tokio::time::timeout(GUARD, try_get(d.addr(), "/"))
            .await
            .expect("a normal client is locked out by slow connections");
        assert_eq!(r.unwrap().status, 200);
    }
    // The slow connections were the ones to go, oldest first; the newest are still open.
    let mut closed = 0;
    for s in &mut flood {
        if already_closed(s).await {
            closed += 1;
        }
    }
    assert!(
        closed >= 48 - 32,
        "only {closed} slow connections were closed"
    );
    assert!(closed < 48, "every slow connection was closed");
    assert!(!already_closed(flood.last_mut().unwrap()).await);
}

#[tokio::test]
async fn per_client_ip_cap_closes_the_connection_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "header_timeout = \"300s\"\nmax_connections_per_ip = 3",
        "",
    );
    let d = Daemon::run_config(&cfg);
    let admin = d.admin.unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(partial_head(d.addr()).await);
    }
    let mut over = TcpStream::connect(d.addr()).await.unwrap();
    assert!(closed_by_server(&mut over).await);
    assert_eq!(closed_count(admin, "tenant", "per_ip_limit").await, 1);
    for s in &mut held {
        assert!(
            !already_closed(s).await,
            "a connection under the cap was closed"
        );
    }
    // A slot freed by the client is usable again.
    drop(held.pop());
    let r = tokio::time::timeout(GUARD, async {
        loop {
            match try_get(d.addr(), "/").await {
                Ok(r) => return r,
                // The server may not have seen the close yet.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn the_admin_listener_has_a_cap_and_a_header_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "header_timeout = \"2s\"\nadmin_max_connections = 4",
        "",
    );
    let d = Daemon::run_config(&cfg);
    let admin = d.admin.unwrap();

    let mut silent = TcpStream::connect(admin).await.unwrap();
    let mut slow = partial_head(admin).await;
    assert!(
        closed_by_server(&mut silent).await,
        "silent admin connection held open"
    );
    assert!(
        closed_by_server(&mut slow).await,
        "partial head held open on the admin listener"
    );
    assert!(closed_count(admin, "admin", "header_timeout").await >= 2);

    // Ten slow connections against a cap of four: the oldest are closed to make room, and a
    // scrape still gets through.
    let mut flood = Vec::new();
    for _ in 0..10 {
        flood.push(partial_head(admin).await);
    }
    // A scrape may itself be closed under pressure (its connection is the newest waiting for a
    // head, with the shortened deadline on a loaded machine); what must not happen is a lockout.
    let m = tokio::time::timeout(GUARD, async {
        loop {
            match try_get(admin, "/metrics").await {
                Ok(m) => break m,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("the admin listener is locked out by slow connections");
    assert_eq!(m.status, 200);
    let mut closed = 0;
    for s in &mut flood {
        if closed_by_server(s).await {
            closed += 1;
        }
    }
    // Every one of them goes: evicted at the cap or at the header deadline.
    assert_eq!(closed, 10);
    assert!(closed_count(admin, "admin", "evicted").await >= 10 - 4);
}
