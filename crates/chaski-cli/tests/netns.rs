//! Real `chaski` processes on a LAN of hosts in network namespaces (the test bed of
//! `chaski_testkit::netns`): discovery by multicast across a bridge with no seeds, and the
//! faults loopback cannot show: a pulled cable, a frozen process, a killed and restarted one, a
//! split LAN. Every test asserts detection within `peer_timeout` plus 10%, re-pairing within
//! 2 s of the fault's end, and a bounded number of connections opened per pair of nodes while
//! the network recovers.
//!
//! Needs root and iproute2 (CI runs as root). The test bed removes every namespace and process
//! it created when dropped, also when a test fails.

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

use chaski_testkit::netns::{Line, NodeProcess, Stream, TestBed};
use serde_json::Value;

mod common;

/// The node's default `peer_timeout`.
const PEER_TIMEOUT: Duration = Duration::from_secs(3);
/// Detection must happen within `peer_timeout` plus 10%.
const DETECT_BOUND: Duration = Duration::from_millis(3300);
/// Re-pairing must happen within this time of the fault's end.
const REPAIR_BOUND: Duration = Duration::from_secs(2);
/// Connections opened between two nodes while one of them recovers: a few, never hundreds.
const MAX_CONNECTIONS_PER_PAIR: usize = 4;
/// The port every node listens on, on its host's address.
const PORT: u16 = 7400;
/// Messages per second from each publisher.
const RATE: u32 = 100;

fn chaski() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_chaski"))
}

/// How the LAN's network is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Open (TLS, anyone who proves a key).
    Open,
    /// Closed by a network key every host holds.
    Key,
    /// Closed by a CA that issued every host's identity.
    Ca,
}

/// The credentials of a LAN's hosts, made with the `chaski` commands themselves, in a
/// directory removed with them.
struct Credentials {
    mode: Mode,
    dir: common::TempDir,
}

impl Credentials {
    fn new(mode: Mode, hosts: usize) -> Credentials {
        let dir = common::tempdir();
        let run = |args: &[&str]| {
            let output = std::process::Command::new(chaski())
                .args(args)
                .output()
                .expect("cannot run chaski");
            assert!(
                output.status.success(),
                "chaski {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let path = |name: &str| dir.join(name).display().to_string();
        match mode {
            Mode::Open => {}
            Mode::Key => run(&["network-key", "--out", &path("lan.key")]),
            Mode::Ca => {
                run(&["ca", "init", "--dir", &path(""), "--name", "test LAN"]);
                for host in 0..hosts {
                    run(&["ca", "issue", &format!("h{host}"), "--dir", &path("")]);
                }
            }
        }
        Credentials { mode, dir }
    }

    /// The flags host `host` runs with.
    fn args(&self, host: usize) -> Vec<String> {
        let path = |name: &str| self.dir.join(name).display().to_string();
        match self.mode {
            Mode::Open => Vec::new(),
            Mode::Key => vec!["--network-key-file".into(), path("lan.key")],
            Mode::Ca => vec![
                "--ca".into(),
                path("ca.crt"),
                "--identity".into(),
                path(&format!("h{host}.key")),
            ],
        }
    }
}

/// A JSON log line of `chaski --log-format json`: its message and fields.
fn log(line: &Line) -> Option<(String, HashMap<String, String>)> {
    if line.stream != Stream::Stderr {
        return None;
    }
    let value: Value = serde_json::from_str(&line.text).ok()?;
    let fields = value.get("fields")?.as_object()?;
    let mut out = HashMap::new();
    for (key, value) in fields {
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        out.insert(key.clone(), text);
    }
    Some((out.remove("message")?, out))
}

/// Whether `line` is the log line `message` about peer `peer`. `message` may name a reason
/// too: `peer down: Timeout` matches a `peer down` line whose reason starts with `Timeout`.
fn is(line: &Line, message: &str, peer: &str) -> bool {
    let (message, reason) = message.split_once(": ").unwrap_or((message, ""));
    log(line).is_some_and(|(m, f)| {
        m == message
            && f.get("peer").is_some_and(|p| p == peer)
            && f.get("reason")
                .map_or("", String::as_str)
                .starts_with(reason)
    })
}

/// A message printed by `chaski sub --format json`, with the publisher's name.
fn message_from(line: &Line) -> Option<String> {
    if line.stream != Stream::Stdout {
        return None;
    }
    let value: Value = serde_json::from_str(&line.text).ok()?;
    Some(value.get("publisher_name")?.as_str()?.to_owned())
}

/// The LAN: a test bed and the node processes on it (one per host, named `h<i>`).
struct Lan {
    nodes: Vec<Option<NodeProcess>>,
    bed: TestBed,
    credentials: Credentials,
}

impl Lan {
    fn new(hosts: usize) -> Lan {
        Lan::closed(hosts, Mode::Open)
    }

    fn closed(hosts: usize, mode: Mode) -> Lan {
        let bed = TestBed::new(hosts).expect("cannot build the namespace test bed");
        Lan {
            nodes: (0..hosts).map(|_| None).collect(),
            bed,
            credentials: Credentials::new(mode, hosts),
        }
    }

    /// Starts `chaski <command> <args> --name h<i> --listen <addr>:PORT` on host `i`, with JSON
    /// logs, no seeds: discovery is by LAN multicast across the bridge.
    fn start(&mut self, host: usize, command: &[&str]) -> Instant {
        let name = format!("h{host}");
        let listen = format!("{}:{PORT}", self.bed.addr(host));
        let credentials = self.credentials.args(host);
        let mut args = vec!["--log-format", "json"];
        args.extend_from_slice(command);
        args.extend_from_slice(&["--name", &name, "--listen", &listen]);
        args.extend(credentials.iter().map(String::as_str));
        let started = Instant::now();
        let process = self
            .bed
            .spawn(host, &name, chaski(), &args)
            .expect("cannot start chaski");
        self.nodes[host] = Some(process);
        started
    }

    fn publisher(&mut self, host: usize) -> Instant {
        let rate = RATE.to_string();
        self.start(
            host,
            &[
                "pub", "t", "--count", "100000", "--rate", &rate, "--size", "16",
            ],
        )
    }

    fn subscriber(&mut self, host: usize) -> Instant {
        self.start(host, &["sub", "t", "--format", "json"])
    }

    fn node(&self, host: usize) -> &NodeProcess {
        self.nodes[host].as_ref().expect("running")
    }

    /// Waits until host `a` logs `message` about `h<b>` (from line `from` on); the time it
    /// was read.
    fn wait_log(
        &self,
        a: usize,
        from: usize,
        message: &str,
        b: usize,
        timeout: Duration,
    ) -> Instant {
        let peer = format!("h{b}");
        match self
            .node(a)
            .wait_line(from, timeout, |line| is(line, message, &peer))
        {
            Some((_, line)) => line.at,
            None => panic!(
                "h{a} did not log `{message}` for {peer} within {timeout:?}; its log:\n{}",
                self.tail(a)
            ),
        }
    }

    /// Waits until every pair of the given hosts is paired, both ways.
    fn wait_all_paired(&self, hosts: &[usize], timeout: Duration) {
        for &a in hosts {
            for &b in hosts.iter().filter(|&&b| b != a) {
                self.wait_log(a, 0, "paired", b, timeout);
            }
        }
    }

    /// The `peer up` lines host `a` logged for `h<b>` between `from` and `to`.
    fn connections(&self, a: usize, b: usize, from: Instant, to: Instant) -> usize {
        let peer = format!("h{b}");
        self.node(a)
            .lines()
            .iter()
            .filter(|l| l.at >= from && l.at <= to && is(l, "peer up", &peer))
            .count()
    }

    /// Asserts that no pair of nodes opened more than a few connections in the window.
    fn assert_connections_bounded(&self, hosts: &[usize], from: Instant, to: Instant) -> usize {
        let mut most = 0;
        for &a in hosts {
            for &b in hosts.iter().filter(|&&b| b != a) {
                let n = self.connections(a, b, from, to);
                assert!(
                    n <= MAX_CONNECTIONS_PER_PAIR,
                    "h{a} saw {n} connections come up with h{b} during the recovery; its log:\n{}",
                    self.tail(a)
                );
                most = most.max(n);
            }
        }
        most
    }

    /// Messages host `sub` printed from publisher `h<publisher>` between `from` and `to`.
    fn received(&self, sub: usize, publisher: usize, from: Instant, to: Instant) -> usize {
        let name = format!("h{publisher}");
        self.node(sub)
            .lines()
            .iter()
            .filter(|l| l.at >= from && l.at <= to)
            .filter(|l| message_from(l).is_some_and(|p| p == name))
            .count()
    }

    /// The last log lines of host `a`, for failure messages.
    fn tail(&self, a: usize) -> String {
        let lines = self.node(a).lines();
        let logs: Vec<&Line> = lines
            .iter()
            .filter(|l| l.stream == Stream::Stderr)
            .collect();
        let skip = logs.len().saturating_sub(40);
        logs[skip..]
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Lets the network run until `deadline`, reading `host`'s output meanwhile. An observation
/// window, not a synchronisation: connections and messages are counted over it.
fn observe_until(lan: &Lan, host: usize, deadline: Instant) {
    let node = lan.node(host);
    let left = deadline.saturating_duration_since(Instant::now());
    let _ = node.wait_line(node.cursor(), left, |_| false);
}

/// Three tests of one body: in an open network, one closed by a network key, one closed by a
/// CA.
macro_rules! in_every_mode {
    ($($body:ident => $open:ident, $key:ident, $ca:ident;)*) => {$(
        #[test]
        fn $open() {
            $body(Mode::Open)
        }

        #[test]
        fn $key() {
            $body(Mode::Key)
        }

        #[test]
        fn $ca() {
            $body(Mode::Ca)
        }
    )*};
}

in_every_mode! {
    lan_discovery_pairs_every_subscriber_within_a_second_with_no_seeds =>
        open_lan_discovery, keyed_lan_discovery, ca_lan_discovery;
    a_pulled_cable_is_detected_by_timeout_and_recovers_without_a_storm =>
        open_pulled_cable, keyed_pulled_cable, ca_pulled_cable;
    a_frozen_process_is_detected_by_timeout_and_recovers_without_a_storm =>
        open_frozen_process, keyed_frozen_process, ca_frozen_process;
    a_killed_node_is_detected_and_its_restart_is_paired_at_once =>
        open_killed_node, keyed_killed_node, ca_killed_node;
    a_split_lan_keeps_delivering_in_each_half_and_heals_into_one_graph =>
        open_split_lan, keyed_split_lan, ca_split_lan;
}

/// A publisher and three subscribers, all paired.
fn four_hosts(mode: Mode) -> Lan {
    let mut lan = Lan::closed(4, mode);
    lan.publisher(0);
    for host in 1..4 {
        lan.subscriber(host);
    }
    lan.wait_all_paired(&[0, 1, 2, 3], Duration::from_secs(10));
    lan
}

fn lan_discovery_pairs_every_subscriber_within_a_second_with_no_seeds(mode: Mode) {
    let mut lan = Lan::closed(4, mode);
    for host in 1..4 {
        lan.subscriber(host);
    }
    // The subscribers are up (they announce where they listen) before the publisher starts.
    for host in 1..4 {
        let node = lan.node(host);
        node.wait_line(0, Duration::from_secs(10), |l| {
            log(l).is_some_and(|(m, _)| m.starts_with("listening on"))
        })
        .expect("a subscriber started");
    }
    let started = lan.publisher(0);
    for host in 1..4 {
        let paired = lan.wait_log(host, 0, "paired", 0, Duration::from_secs(5));
        let took = paired - started;
        assert!(
            took <= Duration::from_secs(1),
            "h{host} paired with the publisher {took:?} after it started"
        );
        let delivered = lan.node(host).wait_line(0, Duration::from_secs(5), |l| {
            message_from(l).is_some_and(|p| p == "h0")
        });
        assert!(delivered.is_some(), "h{host} received nothing");
    }
}

fn a_pulled_cable_is_detected_by_timeout_and_recovers_without_a_storm(mode: Mode) {
    let lan = four_hosts(mode);
    let cursors: Vec<usize> = (0..4).map(|h| lan.node(h).cursor()).collect();
    let cut = Instant::now();
    lan.bed.cut(1).unwrap();
    // The publisher notices the silence: not at once (no FIN crosses a pulled cable), and
    // within the peer timeout plus 10%.
    let down = lan.wait_log(
        0,
        cursors[0],
        "peer down: Timeout",
        1,
        Duration::from_secs(10),
    );
    let detected = down - cut;
    assert!(
        detected <= DETECT_BOUND && detected >= PEER_TIMEOUT / 2,
        "detected after {detected:?}"
    );
    // The cut host notices too.
    lan.wait_log(
        1,
        cursors[1],
        "peer down: Timeout",
        0,
        Duration::from_secs(10),
    );
    let mend_at = cut + Duration::from_secs(4);
    observe_until(&lan, 0, mend_at);
    // Nothing can pair with h1 while its cable is out: look for pairings from the mend on.
    let (at_mend_0, at_mend_1) = (lan.node(0).cursor(), lan.node(1).cursor());
    lan.bed.mend(1).unwrap();
    let mended = Instant::now();
    let repaired = lan.wait_log(1, at_mend_1, "paired", 0, Duration::from_secs(10));
    assert!(
        repaired - mended <= REPAIR_BOUND,
        "re-paired {:?} after the cable was back",
        repaired - mended
    );
    lan.wait_log(0, at_mend_0, "paired", 1, Duration::from_secs(10));
    // Messages flow again.
    lan.node(1)
        .wait_line(lan.node(1).cursor(), Duration::from_secs(5), |l| {
            message_from(l).is_some_and(|p| p == "h0")
        })
        .expect("messages flow again after the cable is back");
    let window_end = mended + Duration::from_secs(5);
    observe_until(&lan, 1, window_end);
    let most = lan.assert_connections_bounded(&[0, 1, 2, 3], cut, window_end);
    eprintln!(
        "pulled cable: detected after {detected:?}, re-paired {:?} after the mend, at most {most} connections per pair",
        repaired - mended
    );
}

fn a_frozen_process_is_detected_by_timeout_and_recovers_without_a_storm(mode: Mode) {
    let lan = four_hosts(mode);
    let cursors: Vec<usize> = (0..4).map(|h| lan.node(h).cursor()).collect();
    let frozen = Instant::now();
    lan.node(1).freeze().unwrap();
    let down = lan.wait_log(
        0,
        cursors[0],
        "peer down: Timeout",
        1,
        Duration::from_secs(10),
    );
    let detected = down - frozen;
    assert!(
        detected <= DETECT_BOUND && detected >= PEER_TIMEOUT / 2,
        "detected after {detected:?}"
    );
    observe_until(&lan, 0, frozen + Duration::from_secs(5));
    let at_thaw = lan.node(0).cursor();
    lan.node(1).thaw().unwrap();
    let thawed = Instant::now();
    let repaired = lan.wait_log(0, at_thaw, "paired", 1, Duration::from_secs(10));
    assert!(
        repaired - thawed <= REPAIR_BOUND,
        "re-paired {:?} after the process resumed",
        repaired - thawed
    );
    let window_end = thawed + Duration::from_secs(5);
    observe_until(&lan, 1, window_end);
    let most = lan.assert_connections_bounded(&[0, 1, 2, 3], frozen, window_end);
    eprintln!(
        "frozen process: detected after {detected:?}, re-paired {:?} after SIGCONT, at most {most} connections per pair",
        repaired - thawed
    );
}

fn a_killed_node_is_detected_and_its_restart_is_paired_at_once(mode: Mode) {
    let mut lan = four_hosts(mode);
    let cursor0 = lan.node(0).cursor();
    let killed = Instant::now();
    lan.nodes[1].as_mut().unwrap().kill().unwrap();
    // Its sockets close with the process: detected by FIN, well within the timeout.
    let down = lan.wait_log(0, cursor0, "peer down: Lost", 1, Duration::from_secs(10));
    assert!(
        down - killed <= DETECT_BOUND,
        "detected after {:?}",
        down - killed
    );
    let restarted = lan.subscriber(1);
    let repaired = lan.wait_log(1, 0, "paired", 0, Duration::from_secs(10));
    assert!(
        repaired - restarted <= REPAIR_BOUND,
        "the restarted node paired {:?} after it started",
        repaired - restarted
    );
    lan.wait_all_paired(&[0, 1, 2, 3], Duration::from_secs(10));
    let window_end = restarted + Duration::from_secs(5);
    observe_until(&lan, 0, window_end);
    let most = lan.assert_connections_bounded(&[0, 2, 3], killed, window_end);
    for peer in [0, 2, 3] {
        let n = lan.connections(peer, 1, restarted, window_end);
        assert!(
            n <= MAX_CONNECTIONS_PER_PAIR,
            "h{peer}: {n} connections with the new h1"
        );
    }
    eprintln!(
        "killed node: detected after {:?}, restart paired after {:?}, at most {most} connections per pair",
        down - killed,
        repaired - restarted
    );
}

fn a_split_lan_keeps_delivering_in_each_half_and_heals_into_one_graph(mode: Mode) {
    let mut lan = Lan::closed(4, mode);
    lan.publisher(0);
    lan.subscriber(1);
    lan.publisher(2);
    lan.subscriber(3);
    lan.wait_all_paired(&[0, 1, 2, 3], Duration::from_secs(10));
    let split = Instant::now();
    lan.bed.split(&[&[0, 1], &[2, 3]]).unwrap();
    let heal_at = split + Duration::from_secs(10);
    observe_until(&lan, 1, heal_at);
    lan.bed.join().unwrap();
    let healed = Instant::now();

    // During the split each half delivers to its own subscribers (once the links across the
    // split have timed out, nothing crosses it).
    let settled = split + DETECT_BOUND;
    let expected = f64::from(RATE) * (healed - split).as_secs_f64();
    for (sub, publisher) in [(1, 0), (3, 2)] {
        let got = lan.received(sub, publisher, split, healed);
        assert!(
            got as f64 >= 0.8 * expected,
            "h{sub} got {got} of about {expected:.0} messages from h{publisher} during the split"
        );
    }
    for (sub, other) in [(1, 2), (3, 0)] {
        let crossed = lan.received(sub, other, settled, healed);
        assert_eq!(
            crossed, 0,
            "h{sub} got messages from h{other} across the split"
        );
    }
    // After the heal, the topic is one graph again within 5 s: each subscriber hears the
    // publisher of the other half.
    for (sub, other) in [(1, 2), (3, 0)] {
        let name = format!("h{other}");
        let node = lan.node(sub);
        let (_, line) = node
            .wait_line(node.cursor(), Duration::from_secs(10), |l| {
                message_from(l).is_some_and(|p| p == name) && l.at >= healed
            })
            .unwrap_or_else(|| panic!("h{sub} hears nothing from h{other} after the heal"));
        let took = line.at - healed;
        assert!(
            took <= Duration::from_secs(5),
            "h{sub} heard h{other} again {took:?} after the heal"
        );
        eprintln!("split: h{sub} hears h{other} {took:?} after the heal");
    }
    let window_end = healed + Duration::from_secs(3);
    observe_until(&lan, 0, window_end);
    lan.assert_connections_bounded(&[0, 1, 2, 3], split, window_end);
}

#[test]
fn the_peer_table_is_shown_only_to_tools_on_the_nodes_own_host() {
    let mut lan = Lan::new(2);
    lan.subscriber(0);
    let listening = |l: &Line| log(l).is_some_and(|(m, _)| m.starts_with("listening"));
    assert!(
        lan.node(0)
            .wait_line(0, Duration::from_secs(10), listening)
            .is_some(),
        "h0 never listened: {}",
        lan.tail(0)
    );
    let node = format!("{}:{PORT}", lan.bed.addr(0));
    // From the node's own host: answered.
    let mut local = lan
        .bed
        .spawn(
            0,
            "peers-local",
            chaski(),
            &["peers", &node, "--format", "json"],
        )
        .expect("cannot start chaski peers");
    assert_eq!(
        local.wait(Duration::from_secs(10)).unwrap(),
        Some(0),
        "{:?}",
        local.lines()
    );
    // From another host on the LAN: refused, with a reason a person can act on.
    let mut remote = lan
        .bed
        .spawn(1, "peers-remote", chaski(), &["peers", &node])
        .expect("cannot start chaski peers");
    let code = remote.wait(Duration::from_secs(10)).unwrap();
    let said: Vec<String> = remote.lines().into_iter().map(|l| l.text).collect();
    assert_ne!(code, Some(0), "answered from another host: {said:?}");
    assert!(
        said.iter().any(|l| l.contains("unauthorized")),
        "no reason given: {said:?}"
    );
}

/// Waits until host `host` logs that it listens.
fn wait_listening(lan: &Lan, host: usize) {
    let listening = |l: &Line| log(l).is_some_and(|(m, _)| m.starts_with("listening"));
    assert!(
        lan.node(host)
            .wait_line(0, Duration::from_secs(10), listening)
            .is_some(),
        "h{host} never listened: {}",
        lan.tail(host)
    );
}

#[test]
fn in_a_closed_network_members_anywhere_see_the_peer_table_and_outsiders_do_not() {
    let mut lan = Lan::closed(2, Mode::Key);
    lan.subscriber(0);
    wait_listening(&lan, 0);
    let node = format!("{}:{PORT}", lan.bed.addr(0));
    // A member on another host: answered (every peer of a closed network is a member).
    let mut args = vec![
        "peers".to_owned(),
        node.clone(),
        "--format".into(),
        "json".into(),
    ];
    args.extend(lan.credentials.args(1));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut member = lan
        .bed
        .spawn(1, "peers-member", chaski(), &args)
        .expect("cannot start chaski peers");
    assert_eq!(
        member.wait(Duration::from_secs(10)).unwrap(),
        Some(0),
        "{:?}",
        member.lines()
    );
    // An outsider on the node's own host: refused at the handshake, with what to do about it.
    let mut outsider = lan
        .bed
        .spawn(0, "peers-outsider", chaski(), &["peers", &node])
        .expect("cannot start chaski peers");
    let code = outsider.wait(Duration::from_secs(10)).unwrap();
    let said: Vec<String> = outsider.lines().into_iter().map(|l| l.text).collect();
    assert_ne!(code, Some(0), "an outsider was answered: {said:?}");
    let errors: Vec<&String> = said
        .iter()
        .filter(|l| l.starts_with("chaski: error:"))
        .collect();
    assert!(
        errors.len() == 1 && errors[0].contains("--network-key-file"),
        "not one line saying what to do: {said:?}"
    );
}

#[test]
fn outsiders_beacons_cause_no_dial_and_members_pair_past_them() {
    let mut lan = Lan::closed(4, Mode::Key);
    // Host 2 holds another key, host 3 none: both run the same topic on the same LAN.
    let other = Credentials::new(Mode::Key, 1);
    lan.publisher(0);
    lan.subscriber(1);
    let started = Instant::now();
    let name = |h: usize| format!("h{h}");
    let spawn_outsider = |lan: &mut Lan, host: usize, extra: Vec<String>| {
        let listen = format!("{}:{PORT}", lan.bed.addr(host));
        let mut args: Vec<String> = ["--log-format", "json", "sub", "t", "--format", "json"]
            .map(String::from)
            .to_vec();
        args.extend(["--name".into(), name(host), "--listen".into(), listen]);
        args.extend(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let process = lan
            .bed
            .spawn(host, &name(host), chaski(), &args)
            .expect("cannot start chaski");
        lan.nodes[host] = Some(process);
    };
    spawn_outsider(&mut lan, 2, other.args(0));
    spawn_outsider(&mut lan, 3, Vec::new());
    lan.wait_all_paired(&[0, 1], Duration::from_secs(10));
    // Several beacon rounds: the members and the outsiders hear each other's beacons all along.
    for host in 0..4 {
        observe_until(&lan, host, started + Duration::from_secs(4));
    }
    for host in 0..4 {
        let lines = lan.node(host).lines();
        let refused: Vec<&Line> = lines
            .iter()
            .filter(|l| log(l).is_some_and(|(m, _)| m.contains("handshake")))
            .collect();
        assert!(
            refused.is_empty(),
            "h{host} tried a handshake, so a beacon made it dial: {refused:?}"
        );
        for peer in 0..4 {
            let member = |h: usize| h < 2;
            if host != peer && member(host) != member(peer) {
                assert!(
                    !lines.iter().any(|l| is(l, "peer up", &name(peer))),
                    "h{host} connected to h{peer}"
                );
            }
        }
    }
}

/// The sequences host `sub` printed from publisher `h0`, in the order printed.
fn sequences_from_h0(lan: &Lan, sub: usize) -> Vec<u64> {
    lan.node(sub)
        .lines()
        .iter()
        .filter(|l| message_from(l).is_some_and(|p| p == "h0"))
        .filter_map(|l| {
            let value: Value = serde_json::from_str(&l.text).ok()?;
            value.get("sequence")?.as_u64()
        })
        .collect()
}

/// The ranges host `sub` logged as missed.
fn missed_ranges(lan: &Lan, sub: usize) -> Vec<(u64, u64)> {
    lan.node(sub)
        .lines()
        .iter()
        .filter_map(log)
        .filter(|(m, _)| m.starts_with("messages missed"))
        .map(|(_, f)| {
            let n = |k: &str| f.get(k).and_then(|v| v.parse().ok()).expect("range field");
            (n("first"), n("last"))
        })
        .collect()
}

const OUTAGE_MESSAGES: u64 = 3000;

/// Three subscribers paired with each other, then a publisher of 3,000 messages at 300/s; two
/// seconds in, h1's cable is pulled for 4 s and h2 is frozen for 5 s. Returns the LAN once
/// every subscriber printed the last message. `config`: a settings file for every node.
fn outage(config: Option<&Path>) -> Lan {
    let mut lan = Lan::new(4);
    let config: Vec<&str> = match config {
        Some(path) => vec!["--config", path.to_str().expect("utf-8 path")],
        None => Vec::new(),
    };
    for host in 1..4 {
        let mut command = vec!["sub", "t", "--format", "json"];
        command.extend(&config);
        lan.start(host, &command);
    }
    lan.wait_all_paired(&[1, 2, 3], Duration::from_secs(10));
    let count = OUTAGE_MESSAGES.to_string();
    let mut command = vec![
        "pub", "t", "--count", &count, "--rate", "300", "--size", "16",
    ];
    command.extend(&config);
    let started = lan.start(0, &command);
    observe_until(&lan, 1, started + Duration::from_secs(2));
    lan.bed.cut(1).unwrap();
    lan.node(2).freeze().unwrap();
    let out = Instant::now();
    observe_until(&lan, 3, out + Duration::from_secs(4));
    lan.bed.mend(1).unwrap();
    observe_until(&lan, 3, out + Duration::from_secs(5));
    lan.node(2).thaw().unwrap();
    let last = OUTAGE_MESSAGES;
    for host in 1..4 {
        let done = lan.node(host).wait_line(0, Duration::from_secs(30), |l| {
            message_from(l).is_some_and(|p| p == "h0")
                && serde_json::from_str::<Value>(&l.text)
                    .ok()
                    .and_then(|v| v.get("sequence")?.as_u64())
                    == Some(last)
        });
        assert!(
            done.is_some(),
            "h{host} did not print the last message; its log:\n{}",
            lan.tail(host)
        );
    }
    lan
}

#[test]
fn a_pulled_cable_and_a_frozen_process_lose_nothing_and_keep_order() {
    let lan = outage(None);
    let all: Vec<u64> = (1..=OUTAGE_MESSAGES).collect();
    for host in 1..4 {
        let got = sequences_from_h0(&lan, host);
        assert_eq!(
            missed_ranges(&lan, host),
            Vec::<(u64, u64)>::new(),
            "h{host} reported messages missed"
        );
        assert!(
            got == all,
            "h{host} printed {} messages, not 1..={OUTAGE_MESSAGES} in order (first differences: {:?})",
            got.len(),
            got.iter()
                .zip(&all)
                .filter(|(a, b)| a != b)
                .take(5)
                .collect::<Vec<_>>()
        );
    }
    eprintln!("outage: 3 subscribers printed all {OUTAGE_MESSAGES} messages in order, none missed");
}

#[test]
fn with_a_cache_too_small_for_the_outage_the_missed_ranges_are_exactly_what_did_not_arrive() {
    let dir = common::tempdir();
    let config = dir.join("small-cache.toml");
    // Half a second of the publisher's messages.
    std::fs::write(&config, "cache_messages = 150\n").unwrap();
    let lan = outage(Some(&config));
    let mut missed_total = 0;
    for host in 1..4 {
        let got = sequences_from_h0(&lan, host);
        let missed = missed_ranges(&lan, host);
        // Printed and reported missed: every sequence exactly once, in order.
        let mut covered: Vec<(u64, u64)> = got.iter().map(|&s| (s, s)).collect();
        covered.extend(&missed);
        covered.sort_unstable();
        let mut next = 1;
        for (first, last) in &covered {
            assert_eq!(
                *first,
                next,
                "h{host}: {first}..={last} where {next} was due (printed {}, missed {missed:?})",
                got.len()
            );
            next = last + 1;
        }
        assert_eq!(next, OUTAGE_MESSAGES + 1, "h{host} stopped short");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "h{host}: out of order");
        missed_total += missed.iter().map(|(a, b)| b - a + 1).sum::<u64>();
    }
    assert!(
        missed_total > 0,
        "a 150-message cache covered a 4 s outage at 300 msg/s"
    );
    eprintln!("small cache: {missed_total} messages reported missed, each exactly once");
}
