//! End-to-end tests of shutting a node down, explicitly and by dropping its last handle: its
//! peers see a goodbye (not a failure) and do not try to reconnect.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use chaski::{EventStream, NodeEvent, NodeId, membership::Event as MembershipEvent};
use common::{bounded, builder, start, until_peers};

/// Waits for the `PeerDown` of `peer` on `events` and checks that it was a goodbye.
async fn goodbye_from(events: &mut EventStream, peer: NodeId) -> Result<()> {
    loop {
        if let NodeEvent::Membership(MembershipEvent::PeerDown {
            peer: p, reason, ..
        }) = events.recv().await.context("events")?
        {
            if p == peer {
                assert!(!reason.is_failure(), "a shutdown is a goodbye: {reason:?}");
                return Ok(());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_is_a_goodbye_and_is_not_redialed() -> Result<()> {
    bounded("graceful shutdown", async {
        let stayer = start(
            builder("stayer", &["t"])
                .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(100)),
        )
        .await?;
        let leaver =
            start(builder("leaver", &["t"]).seeds([stayer.local_addr().to_string()])).await?;
        let (id, addr) = (leaver.id(), leaver.local_addr());
        until_peers(&stayer, |peers| peers.iter().any(|p| p.id == id)).await?;
        let mut events = stayer.events();
        leaver.shutdown().await?;
        // `shutdown` returns once the listening socket is closed: the port is free at once.
        drop(std::net::TcpListener::bind(addr).context("the port is still taken after shutdown")?);
        goodbye_from(&mut events, id).await?;
        until_peers(&stayer, |peers| !peers.iter().any(|p| p.id == id)).await?;
        // Other handles of a shut-down node get a clear error.
        assert!(matches!(
            leaver.publish("t", "late").await,
            Err(chaski::Error::Shutdown)
        ));
        // Nothing may dial the leaver again. A re-dial would start within the backoff (50-100 ms)
        // and show in the stayer's dial count (refreshed by its driver every turn, at least every
        // ping interval). There is no event for "nothing happened": wait ten times as long.
        let dials = stayer.stats().dials;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            stayer.stats().dials,
            dials,
            "the stayer re-dialed a node that said goodbye"
        );
        stayer.shutdown().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_says_goodbye() -> Result<()> {
    bounded("drop", async {
        let stayer = start(builder("stayer", &["t"])).await?;
        let dropped =
            start(builder("dropped", &["t"]).seeds([stayer.local_addr().to_string()])).await?;
        let id = dropped.id();
        until_peers(&stayer, |peers| peers.iter().any(|p| p.id == id)).await?;
        let mut events = stayer.events();
        let clone = dropped.clone();
        drop(dropped);
        assert!(
            stayer.peers().iter().any(|p| p.id == id),
            "a clone keeps the node alive"
        );
        drop(clone);
        goodbye_from(&mut events, id).await?;
        stayer.shutdown().await?;
        Ok(())
    })
    .await
}
