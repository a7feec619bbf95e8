//! The node started in-process through its composition root (`node::run::Node`), the way a test
//! or an embedding program can without spawning the binary: from a config to serving, then a
//! clean drain when the shutdown future resolves.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use outpost::node::run::{Node, RunOptions, Sockets};
use outpost::ops::config::Config;

/// A listener on 127.0.0.1 with a port the kernel picked; the node adopts it as it is.
fn bound() -> (std::net::TcpListener, std::net::SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_runs_in_process_and_drains_on_its_shutdown_future() {
    let dir = tempfile::tempdir().unwrap();
    // The config names ports 1 and 2, which no test may bind: the sockets handed in replace them.
    let text = format!(
        "[node]\nstate_dir = \"{}\"\n[listen]\nhttp = [\"127.0.0.1:1\"]\n\
         admin = \"127.0.0.1:2\"\ndrain_timeout = \"1s\"\n\
         [[app]]\nsource = \"builtin:demo\"\nhosts = [\"*\"]\n",
        dir.path().join("state").display()
    );
    let cfg = Config::parse(&text, "in-process.toml").unwrap();
    let node = Node::from_config(cfg, RunOptions::default()).unwrap();
    let ((http, addr), (admin, admin_addr)) = (bound(), bound());
    let sockets = Sockets {
        http: vec![http],
        admin: Some(admin),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(node.run(sockets, async {
        let _ = stopped.await;
    }));

    let mut served = None;
    for _ in 0..600 {
        if let Ok(r) = try_get(addr, "/").await {
            served = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = served.expect("the in-process node never answered on its listener");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body.trim_end(), "hello from outpost");
    let ready = get(admin_addr, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body);

    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the node did not drain within 30 s of its shutdown future")
        .unwrap();
    assert!(result.is_ok(), "{:?}", result.err());
    assert!(
        try_get(addr, "/").await.is_err(),
        "the listener is closed once run returns"
    );
}

#[test]
fn a_bad_config_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[node]\nstate_dir = \"{}\"\n[listen]\nhttp = [\"127.0.0.1:0\"]\n\
         [[app]]\nsource = \"builtin:demo\"\nhosts = [\"*\"]\n[trust]\nkeys = [\"nope.pub\"]\n",
        dir.path().join("state").display()
    );
    let cfg = Config::parse(&text, "bad.toml").unwrap();
    let err = Node::from_config(cfg, RunOptions::default())
        .err()
        .expect("a missing trust key file is a config error");
    assert_eq!(err.code, 64, "{:#}", err.error);
    assert!(
        format!("{:#}", err.error).contains("nope.pub"),
        "{:#}",
        err.error
    );
    assert!(
        !dir.path().join("state").exists(),
        "nothing is created for a bad config"
    );
}

#[test]
fn a_control_plane_key_line_that_does_not_parse_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    // The key id does not match the key: a well-formed line that is still not this key.
    let line =
        "outpost-public-key-v1 0102030405060708 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let text = format!(
        "[node]\nstate_dir = \"{}\"\n[listen]\nhttp = [\"127.0.0.1:0\"]\n\
         [control_plane]\nurl = \"http://127.0.0.1:1\"\nkey = \"{line}\"\ntoken = \"t\"\n",
        dir.path().join("state").display()
    );
    let cfg = Config::parse(&text, "cp.toml").unwrap();
    let err = Node::from_config(cfg, RunOptions::default())
        .err()
        .expect("a key line that does not parse is a config error");
    assert_eq!(err.code, 64, "{:#}", err.error);
    let msg = format!("{:#}", err.error);
    assert!(msg.starts_with("cp.toml: "), "{msg}");
    assert!(msg.contains("control_plane.key"), "{msg}");
    assert!(
        !dir.path().join("state").exists(),
        "nothing is created for a bad config"
    );
}
