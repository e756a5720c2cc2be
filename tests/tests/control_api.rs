//! The local control API: address and 0600 token files in the data dir,
//! 401 without the token, the status JSON with the fields `formic status`
//! prints, and a clear "no node is running" once the node stopped. The
//! governor, running-unit and credit parts of the status are tested on a
//! computing volunteer in node/tests/governed_compute.rs.

// Test code: a failing unwrap or expect is a test failure with its message
// (clippy.toml allows them only inside #[test] functions and test modules).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use formic_node::api::{API_ADDR_FILE, API_TOKEN_FILE, STATUS_PATH, client};
use formic_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_api_requires_token_and_reports_the_node() -> anyhow::Result<()> {
    init_tracing();
    let dirs: Vec<_> = (0..2)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let mut config = test_config(dirs[0].path(), vec![]);
    config.api_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let node = formic_node::node::start(config).await?;
    let peer = start_node(dirs[1].path(), node.dial_addrs()).await?;
    let dir = dirs[0].path().to_path_buf();

    assert!(dir.join(API_ADDR_FILE).is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(API_TOKEN_FILE))?
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "token file mode {mode:o}");
    }
    let (addr, _token) = client::endpoint(&dir)?;
    let blocking = tokio::task::spawn_blocking(move || client::get(addr, None, STATUS_PATH));
    let (code, _) = blocking.await??;
    assert_eq!(code, 401);
    let wrong = tokio::task::spawn_blocking(move || client::get(addr, Some("0000"), STATUS_PATH));
    assert_eq!(wrong.await??.0, 401);

    let peer_id = peer.peer_id().to_string();
    wait_until(Duration::from_secs(10), "the status lists the peer", || {
        let dir = dir.clone();
        let peer_id = peer_id.clone();
        async move {
            tokio::task::spawn_blocking(move || client::status(&dir))
                .await
                .is_ok_and(|s| s.is_ok_and(|s| s.network.peers.contains(&peer_id)))
        }
    })
    .await?;

    // The raw JSON has the documented fields.
    let (addr, token) = client::endpoint(&dir)?;
    let (code, body) =
        tokio::task::spawn_blocking(move || client::get(addr, Some(&token), STATUS_PATH)).await??;
    assert_eq!(code, 200);
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(json["peer_id"], node.peer_id().to_string());
    let listen = json["listen_addrs"].as_array().cloned().unwrap_or_default();
    assert!(
        !listen.is_empty()
            && listen
                .iter()
                .all(|a| a.as_str().is_some_and(|s| s.contains("/p2p/")))
    );
    assert!(json["peers"].as_array().is_some_and(|p| p.len() == 1));
    for field in ["routing_table_size", "topics", "blob_store"] {
        assert!(!json[field].is_null(), "missing {field}");
    }
    // A bare network node runs no governor and no computing layer: those
    // keys are absent, not empty, and no unit runs
    // (node/tests/governed_compute.rs checks them on a volunteer).
    assert!(json["governor"].is_null() && json["compute"].is_null());
    assert_eq!(json["running_units"], serde_json::json!([]));

    node.shutdown().await?;
    peer.shutdown().await?;
    let err = client::status(&dir)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("no node is running"), "{err}");
    Ok(())
}
