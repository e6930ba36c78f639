//! `chaski ca` and `chaski network-key` through the binary: the files they write (secret ones
//! mode 0600, never replaced), and closed networks run from them with `node`, `sub`, `pub`
//! and `peers`; outsiders refused with one line saying what to do.

mod common;

use std::os::unix::fs::PermissionsExt as _;

use common::{Background, chaski, tempdir};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Runs `chaski ARGS`; its standard output, asserting success.
fn run(args: &[&str]) -> String {
    let output = chaski().args(args).output().unwrap();
    assert!(
        output.status.success(),
        "chaski {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs `chaski ARGS`, which must fail with `code` and one error line containing `part`.
fn refused(args: &[&str], code: i32, part: &str) {
    let output = chaski().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("chaski: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(part), "{part:?} not in {stderr}");
}

#[test]
fn a_ca_issues_identities_that_form_a_closed_network_from_the_command_line() {
    let dir = tempdir();
    let ca_dir = dir.join("ca");
    let ca = ca_dir.to_str().unwrap();
    run(&["ca", "init", "--dir", ca, "--name", "test CA"]);
    assert_eq!(mode(&ca_dir.join("ca.key")), 0o600);
    assert_eq!(mode(&ca_dir.join("ca.crt")), 0o644);
    refused(&["ca", "init", "--dir", ca], 2, "already there");

    let hub_id = run(&["ca", "issue", "hub", "--dir", ca]);
    let hub_key = ca_dir.join("hub.key");
    assert_eq!(mode(&hub_key), 0o600);
    assert_eq!(hub_id.trim().len(), 32, "a node id: {hub_id}");
    refused(&["ca", "issue", "hub", "--dir", ca], 2, "not replaced");
    run(&["ca", "issue", "reader", "--dir", ca, "--valid-for", "30d"]);
    run(&["ca", "issue", "writer", "--dir", ca]);
    let cert = ca_dir.join("ca.crt");
    let (cert, hub_key) = (cert.to_str().unwrap(), hub_key.to_str().unwrap());
    let identity = |name: &str| ca_dir.join(format!("{name}.key")).display().to_string();

    let mut hub = Background::start(&[
        "node",
        "--name",
        "hub",
        "--relay",
        "--no-lan-discovery",
        "--ca",
        cert,
        "--identity",
        hub_key,
    ]);
    let addr = hub.listen_addr();
    let reader_key = identity("reader");
    let mut sub = Background::start(&[
        "sub",
        "news",
        "--count",
        "1",
        "--seed",
        &addr,
        "--no-lan-discovery",
        "--ca",
        cert,
        "--identity",
        &reader_key,
    ]);
    sub.wait_for(&["peer up", "hub"]);
    run(&[
        "pub",
        "news",
        "members only",
        "--seed",
        &addr,
        "--no-lan-discovery",
        "--ca",
        cert,
        "--identity",
        &identity("writer"),
    ]);
    let (code, out) = sub.finish();
    assert_eq!(code, Some(0), "{:#?}", sub.seen);
    assert!(String::from_utf8(out).unwrap().contains("members only"));

    // A member's tool sees the peer table; the hub is who its certificate says.
    let table = run(&[
        "peers",
        &addr,
        "--format",
        "json",
        "--ca",
        cert,
        "--identity",
        &reader_key,
    ]);
    let table: serde_json::Value = serde_json::from_str(&table).unwrap();
    assert_eq!(table["node"]["id"].as_str().unwrap(), hub_id.trim());

    // Outsiders: no credentials, or a CA of their own.
    refused(&["peers", &addr], 1, "--network-key-file");
    let other = dir.join("other");
    let other = other.to_str().unwrap();
    run(&["ca", "init", "--dir", other]);
    run(&["ca", "issue", "stranger", "--dir", other]);
    let stranger = format!("{other}/stranger.key");
    refused(
        &[
            "peers",
            &addr,
            "--ca",
            &format!("{other}/ca.crt"),
            "--identity",
            &stranger,
        ],
        1,
        "--ca",
    );
    // A CA network needs an issued identity.
    refused(
        &["ping", &addr, "--ca", cert, "--no-lan-discovery"],
        2,
        "chaski ca issue",
    );
    hub.terminate();
    assert_eq!(hub.finish().0, Some(0), "{:#?}", hub.seen);
}

#[test]
fn a_network_key_file_closes_a_network_and_outsiders_are_told_why() {
    let dir = tempdir();
    let key = dir.join("team.key");
    let key = key.to_str().unwrap();
    run(&["network-key", "--out", key]);
    assert_eq!(mode(std::path::Path::new(key)), 0o600);
    let printed = run(&["network-key"]);
    assert_eq!(printed.trim().len(), 64, "{printed}");
    refused(&["network-key", "--out", key], 2, "not replaced");

    let mut hub = Background::start(&[
        "node",
        "--name",
        "hub",
        "--no-lan-discovery",
        "--network-key-file",
        key,
    ]);
    let addr = hub.listen_addr();
    // The same key by environment variable: a member.
    let secret = std::fs::read_to_string(key).unwrap();
    let output = chaski()
        .args(["ping", &addr, "--count", "1", "--no-lan-discovery"])
        .env("CHASKI_NETWORK_KEY", secret.trim())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // No key: the tool is refused, and told what to give.
    refused(
        &["ping", &addr, "--count", "1", "--no-lan-discovery"],
        1,
        "--network-key-file",
    );
    // Another key: refused, saying which setting to check.
    let output = chaski()
        .args(["peers", &addr])
        .env("CHASKI_NETWORK_KEY", "another key, long enough")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another network key") && stderr.contains("--network-key-file"),
        "{stderr}"
    );
    // A weak key is refused before anything starts.
    let output = chaski()
        .args(["peers", &addr])
        .env("CHASKI_NETWORK_KEY", "short")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    // A key file others can read is refused.
    let loose = dir.join("loose.key");
    std::fs::write(&loose, "a key that others can read\n").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(
        &[
            "peers",
            &addr,
            "--network-key-file",
            loose.to_str().unwrap(),
        ],
        2,
        "chmod 600",
    );
    hub.terminate();
    assert_eq!(hub.finish().0, Some(0), "{:#?}", hub.seen);
}
