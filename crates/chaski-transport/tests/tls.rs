//! TLS between endpoints: both sides proven by their node keys, nothing in clear on the wire,
//! and plaintext or lying peers refused with errors that say why.

mod common;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Result, bail, ensure};
use bytes::Bytes;
use chaski_transport::{Config, Direction, Endpoint, Error, Events, Identity, Security};
use chaski_wire::{Frame, GoodbyeReason, NodeId};
use common::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};

/// An endpoint with a fresh identity, over TLS.
async fn tls_endpoint(name: &str) -> Result<(Endpoint, Events, Identity)> {
    let identity = Identity::generate()?;
    let config = Config::builder()
        .security(Security::tls(&identity)?)
        .build()?;
    let (endpoint, events) = endpoint_with_id(name, identity.node_id(), config).await?;
    Ok((endpoint, events, identity))
}

/// Copies `from` to `to`, keeping every byte in `seen`.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    seen: Arc<Mutex<Vec<u8>>>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        seen.lock().unwrap().extend_from_slice(&buf[..n]);
        to.write_all(&buf[..n]).await?;
    }
}

/// A TCP proxy from a local port to `to` that keeps every byte it forwards, both ways (one
/// connection).
async fn recording_proxy(to: SocketAddr) -> Result<(SocketAddr, Arc<Mutex<Vec<u8>>>)> {
    let listener = TcpListener::bind(localhost()).await?;
    let addr = listener.local_addr()?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await?;
        let server = TcpStream::connect(to).await?;
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let up = tokio::spawn(pipe(client_read, server_write, record.clone()));
        let down = tokio::spawn(pipe(server_read, client_write, record));
        let _ = tokio::join!(up, down);
        Ok::<_, anyhow::Error>(())
    });
    Ok((addr, seen))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_endpoints_talk_over_tls_and_nothing_is_in_clear_on_the_wire() -> Result<()> {
    bounded(async {
        let (server, mut server_events, server_id) = tls_endpoint("server-node-name").await?;
        let (client, _client_events, client_id) = tls_endpoint("client-node-name").await?;
        let (via, seen) = recording_proxy(server.local_addr()).await?;
        let connection = client.connect(via).await?;
        assert_eq!(connection.node_id(), server_id.node_id());
        let inbound = connected(&mut server_events).await?;
        assert_eq!(inbound.node_id(), client_id.node_id());

        let secret = Bytes::from_static(b"a payload nobody on the path may read");
        connection
            .send(Frame::Publish(message(1, secret.clone())))
            .await?;
        let frames = frames(&mut server_events, inbound.id(), 1).await?;
        match &frames[..] {
            [Frame::Publish(m)] => assert_eq!(m.payload, secret),
            other => bail!("expected the message, got {other:?}"),
        }
        let wire = seen.lock().unwrap().clone();
        ensure!(
            wire.len() > 1000,
            "only {} bytes crossed the proxy",
            wire.len()
        );
        for clear in [
            &secret[..],
            b"server-node-name",
            b"client-node-name",
            &client_id.node_id().as_u128().to_le_bytes()[..8],
        ] {
            ensure!(
                !contains(&wire, clear),
                "{:?} crossed the wire in clear",
                String::from_utf8_lossy(clear)
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_that_claims_another_id_than_the_certificate_proves_is_refused() -> Result<()> {
    bounded(async {
        let (server, _server_events, _) = tls_endpoint("server").await?;
        // A client whose certificate carries one key and whose hello claims another node.
        let key = Identity::generate()?;
        let claimed = NodeId::random();
        let (liar, mut liar_events) = endpoint_with_id("liar", claimed, Config::default()).await?;
        let tls = chaski_transport::tls::Tls::new(&key)?;
        let tcp = TcpStream::connect(server.local_addr()).await?;
        let name = rustls::pki_types::ServerName::try_from("chaski")?;
        let secured = tls.connector().connect(name, tcp).await?;
        // The liar's side completes its hello exchange; the server then refuses it.
        let connection = liar
            .establish(secured, server.local_addr(), Direction::Outbound)
            .await?;
        match until_closed(&mut liar_events, connection.id()).await?.1 {
            chaski_transport::CloseReason::Goodbye {
                reason, message, ..
            } => {
                assert_eq!(reason, GoodbyeReason::ProtocolError);
                assert!(message.contains("certificate proves"), "{message}");
            }
            other => bail!("expected a refusal, got {other:?}"),
        }
        let failures = server.stats().handshake_failures;
        assert_eq!(failures.get("identity_mismatch"), 1, "{failures:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_tls_refuse_each_other_with_a_reason() -> Result<()> {
    bounded(async {
        let (tls_node, _tls_events, _) = tls_endpoint("tls").await?;
        let (plain, _plain_events) = endpoint("plain", Config::default()).await?;
        // Plaintext dialing TLS: told in plain words.
        match plain.connect(tls_node.local_addr()).await {
            Err(Error::Handshake {
                source: chaski_transport::HandshakeError::Refused { message, .. },
                ..
            }) => assert!(message.contains("requires TLS"), "{message}"),
            other => bail!("expected a refusal, got {other:?}"),
        }
        assert_eq!(tls_node.stats().handshake_failures.get("plaintext_peer"), 1);
        // TLS dialing plaintext: the dialer recognises the plaintext hello.
        match tls_node.connect(plain.local_addr()).await {
            Err(Error::Handshake { source, .. }) => {
                assert_eq!(source.cause(), "plaintext_peer", "{source}");
            }
            other => bail!("expected a plaintext peer, got {other:?}"),
        }
        // And the plaintext side recognises the TLS record where a hello should be. Its verdict
        // is reached in its own task and has no event: poll the counter, at most 10 s.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut failures = plain.stats().handshake_failures;
        while failures.get("tls_peer") == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            failures = plain.stats().handshake_failures;
        }
        assert_eq!(failures.get("tls_peer"), 1, "{failures:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_dial_that_expects_a_node_refuses_another_key() -> Result<()> {
    bounded(async {
        let (server, _server_events, server_id) = tls_endpoint("server").await?;
        let (client, _client_events, _) = tls_endpoint("client").await?;
        let someone_else = NodeId::random();
        match client
            .connect_expecting(server.local_addr(), someone_else)
            .await
        {
            Err(Error::Handshake { source, .. }) => {
                assert_eq!(source.cause(), "unexpected_peer", "{source}");
            }
            other => bail!("expected an unexpected peer, got {other:?}"),
        }
        let connection = client
            .connect_expecting(server.local_addr(), server_id.node_id())
            .await?;
        assert_eq!(connection.node_id(), server_id.node_id());
        Ok(())
    })
    .await
}
