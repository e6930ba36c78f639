//! UDP datagrams: unicast, multicast (IPv4 and IPv6) on loopback, bad datagrams dropped and
//! counted.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Result, bail};
use bytes::Bytes;
use chaski_transport::{Config, DatagramError, DatagramSocket, EncodedFrame};
use chaski_wire::{Beacon, Capabilities, Frame, NodeId, Ping};
use common::*;

fn beacon(sequence: u64) -> Frame {
    Frame::Beacon(Beacon {
        network_id: String::new(),
        node_id: NodeId::from_u128(7),
        name: "beacon".to_owned(),
        listen_addrs: vec!["127.0.0.1:4000".parse().unwrap()],
        subscription_digest: 0,
        subscription_count: 0,
        capabilities: Capabilities::NONE,
        sequence,
        auth_tag: Bytes::new(),
    })
}

#[tokio::test]
async fn unicast_between_two_endpoints() -> Result<()> {
    bounded(async {
        let (a, _a_events) = endpoint("a", Config::default()).await?;
        let (b, _b_events) = endpoint("b", Config::default()).await?;
        let a_udp = a.datagrams().expect("udp");
        let b_udp = b.datagrams().expect("udp");
        assert_eq!(b_udp.local_addr()?.port(), b.local_addr().port());

        a_udp.send_to(&beacon(1), b.local_addr()).await?;
        let (frame, from) = b_udp.recv().await?;
        assert_eq!(frame, beacon(1));
        assert_eq!(from, a_udp.local_addr()?);

        // Pre-encoded, back the other way.
        let encoded = EncodedFrame::new(&beacon(2), 1024)?;
        b_udp.send_encoded_to(&encoded, a.local_addr()).await?;
        assert_eq!(a_udp.recv().await?.0, beacon(2));
        assert_eq!(a.stats().datagrams.sent, 1);
        assert_eq!(a.stats().datagrams.received, 1);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn garbage_truncated_and_oversized_datagrams_are_dropped_and_counted() -> Result<()> {
    bounded(async {
        let max = 256;
        let receiver = DatagramSocket::bind(localhost(), max)?;
        let to = receiver.local_addr()?;
        let sender = std::net::UdpSocket::bind(localhost())?;

        let mut valid = bytes::BytesMut::new();
        chaski_wire::encode_frame(&beacon(3), &mut valid, 1024)?;
        sender.send_to(&[0xff; 40], to)?; // garbage: a huge length prefix
        sender.send_to(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff], to)?; // garbage protobuf
        sender.send_to(&valid[..valid.len() - 3], to)?; // truncated
        sender.send_to(&[], to)?; // empty
        sender.send_to(&vec![0u8; max + 100], to)?; // oversized
        sender.send_to(&valid, to)?; // valid, last

        // Only the valid one comes out; datagrams on loopback arrive in order.
        let (frame, _) = receiver.recv().await?;
        assert_eq!(frame, beacon(3));
        let stats = receiver.stats();
        assert_eq!(stats.received, 1);
        assert_eq!(stats.dropped.get("too_large"), 2, "{stats:?}");
        assert_eq!(stats.dropped.get("malformed"), 1, "{stats:?}");
        assert_eq!(stats.dropped.get("datagram_length"), 1, "{stats:?}");
        assert_eq!(stats.dropped.get("empty"), 1, "{stats:?}");
        assert!(receiver.try_recv()?.is_none());

        // Sending over the maximum is refused.
        let big = Frame::Ping(Ping {
            padding: Bytes::from(vec![0u8; max]),
            ..Ping::default()
        });
        match receiver.send_to(&big, to).await {
            Err(DatagramError::TooLarge { max: m, .. }) => assert_eq!(m, max),
            other => bail!("expected TooLarge, got {other:?}"),
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn multicast_v4_on_loopback() -> Result<()> {
    bounded(async {
        let group = Ipv4Addr::new(239, 255, 42, 99);
        let loopback = Ipv4Addr::LOCALHOST;
        // Two receivers share the group's port (as nodes on one host do); binding the group
        // address itself means only the group's datagrams reach them.
        let probe = DatagramSocket::bind_shared(SocketAddr::from((group, 0)), 1024)?;
        let port = probe.local_addr()?.port();
        drop(probe);
        let first = DatagramSocket::bind_shared(SocketAddr::from((group, port)), 1024)?;
        let second = DatagramSocket::bind_shared(SocketAddr::from((group, port)), 1024)?;
        first.join_multicast_v4(group, loopback)?;
        second.join_multicast_v4(group, loopback)?;

        let sender = DatagramSocket::bind(localhost(), 1024)?;
        sender.set_multicast_if_v4(loopback)?;
        sender.set_multicast_loop_v4(true)?;
        sender.set_multicast_ttl_v4(0)?;
        sender
            .send_to(&beacon(10), SocketAddr::from((group, port)))
            .await?;
        assert_eq!(first.recv().await?.0, beacon(10));
        assert_eq!(second.recv().await?.0, beacon(10));

        // After leaving, the group's datagrams stop arriving at `second`.
        second.leave_multicast_v4(group, loopback)?;
        sender
            .send_to(&beacon(11), SocketAddr::from((group, port)))
            .await?;
        assert_eq!(first.recv().await?.0, beacon(11));
        // Both sockets get a group datagram in the same delivery, so had `second` still been a
        // member, it would hold beacon 11 now.
        assert!(second.try_recv()?.is_none());
        Ok(())
    })
    .await
}

/// Sends a beacon to an IPv6 group on interface `index` and receives it on a member socket.
/// `Ok(Err(reason))` when the kernel will not route IPv6 multicast on that interface.
async fn multicast_v6_on(index: u32) -> Result<std::result::Result<(), String>> {
    let group: Ipv6Addr = "ff02::4348:534b".parse()?;
    let receiver = DatagramSocket::bind_shared("[::]:0".parse()?, 1024)?;
    let port = receiver.local_addr()?.port();
    if let Err(e) = receiver.join_multicast_v6(&group, index) {
        return Ok(Err(format!("cannot join the group: {e}")));
    }
    let sender = match DatagramSocket::bind("[fd00:4348::1]:0".parse()?, 1024) {
        Ok(sender) => sender,
        // Not in the test's namespace: let the system choose the source.
        Err(_) => DatagramSocket::bind("[::]:0".parse()?, 1024)?,
    };
    sender.set_multicast_if_v6(index)?;
    sender.set_multicast_loop_v6(true)?;
    let target = SocketAddr::V6(std::net::SocketAddrV6::new(group, port, 0, index));
    if let Err(e) = sender.send_to(&beacon(20), target).await {
        return Ok(Err(format!("cannot send to the group: {e}")));
    }
    let (frame, _) = receiver.recv().await?;
    assert_eq!(frame, beacon(20));
    receiver.leave_multicast_v6(&group, index)?;
    Ok(Ok(()))
}

const NETNS_CHILD: &str = "CHASKI_TRANSPORT_NETNS_CHILD";

fn sh(args: &[&str]) -> Result<()> {
    let status = std::process::Command::new(args[0])
        .args(&args[1..])
        .status()?;
    anyhow::ensure!(status.success(), "`{}` failed: {status}", args.join(" "));
    Ok(())
}

/// The index of `name` in the current network namespace, from `ip -o link show`.
fn if_index(name: &str) -> Result<u32> {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show", name])
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    Ok(text.split(':').next().unwrap_or_default().trim().parse()?)
}

#[tokio::test]
async fn multicast_v6_on_loopback_or_in_a_namespace() -> Result<()> {
    bounded(async {
        if std::env::var_os(NETNS_CHILD).is_some() {
            // In our own network namespace: a veth pair (loopback has no multicast), no DAD.
            sh(&["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"])?;
            sh(&["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"])?;
            sh(&["ip", "link", "set", "lo", "up"])?;
            sh(&[
                "ip", "link", "add", "ck0", "type", "veth", "peer", "name", "ck1",
            ])?;
            sh(&["ip", "link", "set", "ck0", "up"])?;
            sh(&["ip", "link", "set", "ck1", "up"])?;
            // An address usable at once (no DAD) for the sender.
            sh(&[
                "ip",
                "-6",
                "addr",
                "add",
                "fd00:4348::1/64",
                "dev",
                "ck0",
                "nodad",
            ])?;
            return match multicast_v6_on(if_index("ck0")?).await? {
                Ok(()) => Ok(()),
                Err(reason) => bail!("IPv6 multicast failed in the namespace: {reason}"),
            };
        }
        let reason = match multicast_v6_on(if_index("lo").unwrap_or(1)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(reason)) => reason,
            Err(e) => format!("{e}"),
        };
        eprintln!("IPv6 multicast on loopback: {reason}; retrying in a new network namespace");
        let exe = std::env::current_exe()?;
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new("unshare")
                .arg("--net")
                .arg(exe)
                .args(["--exact", "multicast_v6_on_loopback_or_in_a_namespace"])
                .env(NETNS_CHILD, "1")
                .output()
        })
        .await?;
        match status {
            Ok(out) if out.status.success() => {
                let stdout = String::from_utf8_lossy(&out.stdout);
                anyhow::ensure!(
                    stdout.contains("1 passed"),
                    "the child ran no test: {stdout}"
                );
                Ok(())
            }
            Ok(out) if String::from_utf8_lossy(&out.stderr).contains("unshare failed") => {
                eprintln!(
                    "skipped: cannot create a network namespace: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                Ok(())
            }
            Ok(out) => bail!(
                "the test failed in its namespace: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => {
                eprintln!("skipped: cannot run `unshare`: {e}");
                Ok(())
            }
        }
    })
    .await
}
