//! Closed networks: only members (holders of the network key, or nodes the network's CA
//! issued) complete a handshake; everyone else is refused with an error that says why, on
//! both sides, and counted. Beacons are tagged, best-effort datagrams sealed.

mod common;

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use chaski_transport::{
    CertificateAuthority, CloseReason, Config, DatagramSocket, EncodedFrame, Endpoint, Error,
    Events, HandshakeError, Identity, Network, NetworkKey, Received, Security, Side,
};
use chaski_wire::{Frame, GoodbyeReason};
use common::*;

/// An endpoint over TLS with `security`, UDP on.
async fn with(name: &str, identity: &Identity, security: Security) -> Result<(Endpoint, Events)> {
    let config = Config::builder().security(security).udp(true).build()?;
    endpoint_with_id(name, identity.node_id(), config).await
}

async fn member(name: &str, network: &Network, identity: &Identity) -> Result<(Endpoint, Events)> {
    with(name, identity, Security::closed(identity, network)?).await
}

async fn open(name: &str, identity: &Identity) -> Result<(Endpoint, Events)> {
    with(name, identity, Security::tls(identity)?).await
}

/// The handshake error of a dial that must fail.
async fn refused(from: &Endpoint, to: &Endpoint) -> Result<HandshakeError> {
    match from.connect(to.local_addr()).await {
        Err(Error::Handshake { source, .. }) => Ok(source),
        Ok(c) => bail!("connected to {}", c.node_id()),
        Err(other) => bail!("failed otherwise: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_of_the_network_key_connect_and_others_are_refused_with_reasons() -> Result<()> {
    bounded(async {
        let key = NetworkKey::generate()?;
        let network = Network::from_key(&key)?;
        let (a_id, b_id, c_id, d_id) = (
            Identity::generate()?,
            Identity::generate()?,
            Identity::generate()?,
            Identity::generate()?,
        );
        let (a, _a_events) = member("a", &network, &a_id).await?;
        let (b, mut b_events) = member("b", &Network::from_key(&key)?, &b_id).await?;
        let connection = a.connect(b.local_addr()).await?;
        assert_eq!(connection.node_id(), b_id.node_id());
        assert_eq!(connected(&mut b_events).await?.node_id(), a_id.node_id());

        // Another key: each side says what it knows.
        let other = Network::from_key(&NetworkKey::generate()?)?;
        let (c, _c_events) = member("c", &other, &c_id).await?;
        let error = refused(&a, &c).await?;
        ensure!(
            matches!(error, HandshakeError::WrongNetworkKey),
            "a dialing c: {error}"
        );
        let error = refused(&c, &a).await?;
        ensure!(
            matches!(error, HandshakeError::WrongNetworkKey),
            "c dialing a: {error}"
        );

        // No key at all (an open node): refused as having no credentials.
        let (d, _d_events) = open("d", &d_id).await?;
        let error = refused(&d, &a).await?;
        ensure!(
            matches!(error, HandshakeError::CertificateRefused { .. }),
            "d dialing a: {error}"
        );
        // Counted before the dial returned (later, a's dial to d counts another, on d's side).
        ensure!(d.stats().handshake_failures.get("certificate_refused") == 1);
        let error = refused(&a, &d).await?;
        ensure!(
            matches!(error, HandshakeError::SelfSigned),
            "a dialing d: {error}"
        );
        // Each dialer counted its failure before returning it.
        let a_failures = a.stats().handshake_failures;
        ensure!(
            a_failures.get("wrong_network_key") == 1 && a_failures.get("self_signed") >= 1,
            "{a_failures:?}"
        );
        ensure!(
            a.connections().len() == 1,
            "a has only its member connection"
        );
        Ok(())
    })
    .await
}

/// A CA and the identity it issues, valid now.
fn issued(ca: &CertificateAuthority, name: &str) -> Result<Identity> {
    Ok(ca.issue(&Identity::generate()?, name, Duration::from_secs(3600))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_ca_admits_what_it_issued_and_refuses_the_rest_distinctly() -> Result<()> {
    bounded(async {
        let ca = CertificateAuthority::generate("test network")?;
        let revoked_id = issued(&ca, "revoked")?;
        let network = Network::from_ca(ca.certificate().clone())?.deny([revoked_id.node_id()]);
        let a_id = issued(&ca, "a")?;
        let b_id = issued(&ca, "b")?;
        let (a, _a_events) = member("a", &network, &a_id).await?;
        let (b, mut b_events) = member("b", &network, &b_id).await?;
        assert_eq!(a.connect(b.local_addr()).await?.node_id(), b_id.node_id());
        assert_eq!(connected(&mut b_events).await?.node_id(), a_id.node_id());

        // Signed by another CA.
        let other = CertificateAuthority::generate("another network")?;
        let stranger = issued(&other, "stranger")?;
        let (s, _s_events) = open("stranger", &stranger).await?;
        let error = refused(&a, &s).await?;
        ensure!(
            matches!(error, HandshakeError::UnknownCa),
            "other CA: {error}"
        );
        let error = refused(&s, &a).await?;
        ensure!(
            matches!(error, HandshakeError::CertificateRefused { .. }),
            "the stranger's side: {error}"
        );

        // Self-signed.
        let plain = Identity::generate()?;
        let (p, _p_events) = open("self-signed", &plain).await?;
        let error = refused(&a, &p).await?;
        ensure!(
            matches!(error, HandshakeError::SelfSigned),
            "self-signed: {error}"
        );

        // Expired yesterday.
        let now = SystemTime::now();
        let day = Duration::from_secs(24 * 3600);
        let expired =
            ca.issue_between(&Identity::generate()?, "expired", now - 30 * day, now - day)?;
        let (e, _e_events) = open("expired", &expired).await?;
        let error = refused(&a, &e).await?;
        ensure!(
            matches!(error, HandshakeError::CertificateExpired { .. }),
            "expired: {error}"
        );
        // A member cannot even start with an expired certificate.
        ensure!(Security::closed(&expired, &network).is_err());

        // Revoked (on the deny list), though validly issued.
        let (r, _r_events) = open("revoked", &revoked_id).await?;
        let error = refused(&a, &r).await?;
        ensure!(
            matches!(error, HandshakeError::CertificateRevoked),
            "revoked: {error}"
        );
        let stats = a.stats().handshake_failures;
        // The stranger's dial was refused here too, as from an unknown CA.
        ensure!(stats.get("unknown_ca") == 2, "{stats:?}");
        for cause in ["self_signed", "certificate_expired", "certificate_revoked"] {
            ensure!(stats.get(cause) == 1, "{cause} counted once: {stats:?}");
        }
        ensure!(a.connections().len() == 1);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closes_when_the_peers_certificate_expires() -> Result<()> {
    bounded(async {
        let ca = CertificateAuthority::generate("short lived")?;
        let network = Network::from_ca(ca.certificate().clone())?;
        let a_id = issued(&ca, "a")?;
        // Certificates count whole seconds: valid for two or three more.
        let now = SystemTime::now();
        let b_id = ca.issue_between(
            &Identity::generate()?,
            "b",
            now - Duration::from_secs(3600),
            now + Duration::from_secs(3),
        )?;
        let (a, mut a_events) = member("a", &network, &a_id).await?;
        let (b, _b_events) = member("b", &network, &b_id).await?;
        b.connect(a.local_addr()).await?;
        let inbound = connected(&mut a_events).await?;
        let until = inbound
            .peer_valid_until()
            .context("a TLS connection knows")?;
        let (_, reason) = until_closed(&mut a_events, inbound.id()).await?;
        ensure!(
            SystemTime::now() >= until,
            "closed before the certificate expired"
        );
        match reason {
            CloseReason::Goodbye {
                by: Side::Local,
                reason: GoodbyeReason::Unauthorized,
                ..
            } => {}
            other => bail!("closed otherwise: {other:?}"),
        }
        ensure!(a.stats().certificates_expired == 1);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_datagrams_pass_only_between_holders_of_the_tag() -> Result<()> {
    bounded(async {
        let key = NetworkKey::generate()?;
        let network = Network::from_key(&key)?;
        let outsider = Network::from_key(&NetworkKey::generate()?)?;
        let tag_of = |network: &Network| -> Result<_> {
            let Security::Tls(tls) = Security::closed(&Identity::generate()?, network)? else {
                bail!("closed networks use TLS")
            };
            Ok(tls.network_tag().cloned())
        };
        let socket = |tag| -> Result<DatagramSocket> {
            Ok(DatagramSocket::bind(localhost(), 1400)?.with_network_tag(tag))
        };
        let member_a = socket(tag_of(&network)?)?;
        let member_b = socket(tag_of(&network)?)?;
        let stranger = socket(tag_of(&outsider)?)?;
        let untagged = socket(None)?;
        let ping = Frame::Ping(chaski_wire::Ping {
            id: 7,
            sent_at_micros: 1,
            padding: Bytes::new(),
            reply_padding: 0,
        });
        member_b.send_to(&ping, member_a.local_addr()?).await?;
        assert_eq!(member_a.recv().await?.0, ping);
        stranger.send_to(&ping, member_a.local_addr()?).await?;
        untagged.send_to(&ping, member_a.local_addr()?).await?;
        member_a.send_to(&ping, untagged.local_addr()?).await?;
        // A last good one, to know the others have been seen.
        member_b.send_to(&ping, member_a.local_addr()?).await?;
        assert_eq!(member_a.recv().await?.0, ping);
        let dropped = member_a.stats().dropped;
        ensure!(
            dropped.get("bad_tag") == 1 && dropped.get("untagged") == 1,
            "{dropped:?}"
        );
        untagged.send_to(&ping, untagged.local_addr()?).await?;
        assert_eq!(untagged.recv().await?.0, ping);
        ensure!(untagged.stats().dropped.get("unexpected_tag") == 1);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_datagrams_open_only_with_their_connection_and_only_once() -> Result<()> {
    bounded(async {
        let (a_id, b_id) = (Identity::generate()?, Identity::generate()?);
        let (a, _a_events) = open("a", &a_id).await?;
        let (b, mut b_events) = open("b", &b_id).await?;
        let outbound = a.connect(b.local_addr()).await?;
        let inbound = connected(&mut b_events).await?;
        let sealer = outbound
            .datagram_sealer()
            .context("TLS gives datagram keys")?;
        let mut opener = inbound.take_datagram_opener().context("once")?;
        ensure!(inbound.take_datagram_opener().is_none(), "only once");

        // Through a raw socket, to see and replay the bytes.
        let tap = tokio::net::UdpSocket::bind(localhost()).await?;
        let secret = Bytes::from_static(b"best effort, and secret");
        let frame = EncodedFrame::new(&Frame::Publish(message(1, secret.clone())), 1 << 16)?;
        let a_udp = a.datagrams().context("udp")?;
        a_udp.try_send_sealed_to(&frame, sealer, tap.local_addr()?)?;
        let mut buf = vec![0u8; 2048];
        let (n, _) = tap.recv_from(&mut buf).await?;
        let sealed = &buf[..n];
        ensure!(!sealed.windows(secret.len()).any(|w| w == &secret[..]));

        let b_udp = b.datagrams().context("udp")?;
        for _ in 0..2 {
            tap.send_to(sealed, b_udp.local_addr()?).await?;
        }
        // A forged counter (a fresh one): it must not open.
        let mut altered = sealed.to_vec();
        altered[8] ^= 0x40;
        tap.send_to(&altered, b_udp.local_addr()?).await?;
        let mut opened = Vec::new();
        for _ in 0..3 {
            match b_udp.recv_any().await? {
                (Received::Sealed(s), _) => opened.extend(b_udp.open(s, &mut opener)),
                (other, _) => bail!("expected a sealed datagram, got {other:?}"),
            }
        }
        match &opened[..] {
            [Frame::Publish(m)] => assert_eq!(m.payload, secret),
            other => bail!("expected the message once, got {other:?}"),
        }
        let dropped = b_udp.stats().dropped;
        ensure!(
            dropped.get("replayed") == 1 && dropped.get("unauthenticated") == 1,
            "{dropped:?}"
        );
        Ok(())
    })
    .await
}
