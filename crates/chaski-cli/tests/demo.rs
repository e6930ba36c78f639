//! `chaski demo` runs by itself to the end, shows the failure detection and the reconnection,
//! and prints its summary.

mod common;

use std::time::Duration;

use common::chaski;

#[test]
fn the_demo_ends_by_itself_with_a_summary() {
    let output = chaski()
        .args(["demo", "--duration", "8s"])
        .timeout(Duration::from_secs(40))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    for expected in [
        "relay listening on 127.0.0.1:",
        "paired on `sensors`",
        "every node is paired on each of its topics",
        "freezing echo for 2 s",
        "silent failure of echo (frozen 2 s): detected by",
        "killing charlie",
        "restarting charlie",
        "summary",
        "failure of charlie: detected by",
        "reconnection: charlie rejoined and paired on every topic",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
    // The live table has a row per node.
    for node in [
        "relay", "alpha", "bravo", "charlie", "delta", "echo", "foxtrot",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(node) && l.contains(" us ")),
            "no table row for {node}:\n{stdout}"
        );
    }
}

#[test]
fn a_too_short_demo_is_a_usage_error() {
    chaski().args(["demo", "--duration", "1s"]).assert().code(2);
}
