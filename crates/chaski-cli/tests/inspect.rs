//! `chaski ping` and `chaski peers` against running `chaski node` processes, and against
//! addresses where no node (or something else) listens.

mod common;

use std::{
    io::{Read, Write},
    net::TcpListener,
    thread,
};

use common::{Background, chaski};

/// A relay `hub` and a node `leaf` subscribed to `news`, connected.
fn network() -> (Background, Background, String) {
    let mut hub = Background::start(&["node", "--name", "hub", "--relay", "--no-lan-discovery"]);
    let addr = hub.listen_addr();
    let leaf = Background::start(&[
        "node",
        "--name",
        "leaf",
        "--subscribe",
        "news",
        "--seed",
        &addr,
        "--no-lan-discovery",
    ]);
    hub.wait_for(&["peer up", "leaf"]);
    (hub, leaf, addr)
}

fn stdout_of(args: &[&str]) -> String {
    let output = chaski().args(args).output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn ping_prints_round_trips_and_statistics_by_address_and_by_name() {
    let (_hub, _leaf, addr) = network();
    let out = stdout_of(&["ping", &addr, "-c", "3", "-i", "20ms", "--no-lan-discovery"]);
    assert!(out.starts_with("PING hub ("), "{out}");
    assert_eq!(out.matches("reply from hub").count(), 3, "{out}");
    assert!(out.contains("3 sent, 3 received, 0% loss"), "{out}");
    assert!(out.contains("rtt min/avg/max/jitter = "), "{out}");

    let out = stdout_of(&[
        "ping",
        "leaf",
        "-c",
        "2",
        "-i",
        "20ms",
        "--seed",
        &addr,
        "--no-lan-discovery",
    ]);
    assert!(out.starts_with("PING leaf ("), "{out}");
    assert_eq!(out.matches("reply from leaf").count(), 2, "{out}");
}

#[test]
fn peers_prints_the_peer_table_as_a_table_json_and_dot() {
    let (_hub, _leaf, addr) = network();

    let table = stdout_of(&["peers", &addr]);
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("node hub ("), "{table}");
    assert!(lines.next().unwrap().starts_with("NAME"), "{table}");
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 1, "only leaf, not the asking command: {table}");
    assert!(
        rows[0].starts_with("leaf ") && rows[0].contains("news"),
        "{table}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&stdout_of(&["peers", &addr, "--format", "json"])).unwrap();
    assert_eq!(json["node"]["name"], "hub");
    assert_eq!(json["node"]["relay"], true);
    let peers = json["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1, "{json:#}");
    assert_eq!(peers[0]["name"], "leaf");
    assert_eq!(peers[0]["subscriptions"], serde_json::json!(["news"]));
    // The hub and the leaf have at least exchanged their handshakes and subscriptions.
    for key in ["frames_in", "frames_out", "bytes_in", "bytes_out"] {
        assert!(peers[0][key].as_u64().unwrap() > 0, "{key}: {json:#}");
    }

    let dot = stdout_of(&["peers", &addr, "--format", "dot"]);
    assert!(
        dot.starts_with("graph chaski {") && dot.trim_end().ends_with('}'),
        "{dot}"
    );
    assert!(
        dot.contains("label=\"hub\\n") && dot.contains("label=\"leaf\\nnews\""),
        "{dot}"
    );
    assert_eq!(dot.matches(" -- ").count(), 1, "{dot}");
}

/// Asserts that `chaski ARGS` exits with `code` and one error line containing `part`.
fn fails(args: &[&str], code: i32, part: &str) {
    let output = chaski().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("chaski: error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(part), "{part:?} not in {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_peer_that_speaks_another_protocol_is_a_clear_error() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = thread::spawn(move || {
        // Answer the one connection like a web server would.
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = [0u8; 256];
        let _ = stream.read(&mut buf);
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
    });
    fails(
        &["peers", &addr, "--timeout", "3s"],
        1,
        "does not speak the chaski protocol",
    );
    server.join().unwrap();
}

#[test]
fn unreachable_and_malformed_addresses_exit_with_code_3() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    fails(&["peers", &closed], 3, &closed);
    fails(&["peers", "nonsense"], 3, "nonsense");
    fails(&["ping", &closed, "--no-lan-discovery"], 3, &closed);
}

#[test]
fn pinging_an_unknown_name_times_out_with_code_4() {
    fails(
        &["ping", "nobody", "--timeout", "300ms", "--no-lan-discovery"],
        4,
        "no node named `nobody`",
    );
}

#[test]
fn peers_of_a_node_in_another_network_needs_its_network_id() {
    let mut lab = Background::start(&[
        "node",
        "--name",
        "lab",
        "--network-id",
        "lab",
        "--no-lan-discovery",
    ]);
    let addr = lab.listen_addr();
    fails(
        &["peers", &addr],
        1,
        "another network: give its --network-id",
    );
    let table = stdout_of(&["peers", &addr, "--network-id", "lab"]);
    assert!(table.starts_with("node lab ("), "{table}");
}
