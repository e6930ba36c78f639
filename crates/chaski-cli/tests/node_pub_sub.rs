//! `chaski node`, `pub` and `sub` as separate processes on loopback: delivery, clean shutdown,
//! settings precedence, and every bad input giving one clear line and its exit code.

mod common;

use std::{collections::BTreeSet, io::Write, net::TcpListener};

use common::{Background, chaski, tempdir};

/// A relay node on a free loopback port, with LAN discovery off.
fn hub() -> (Background, String) {
    let mut hub = Background::start(&["node", "--name", "hub", "--relay", "--no-lan-discovery"]);
    let addr = hub.listen_addr();
    (hub, addr)
}

#[test]
fn node_pub_and_sub_in_separate_processes_deliver_every_message() {
    let (_hub, addr) = hub();
    let mut sub = Background::start(&[
        "sub",
        "news",
        "--count",
        "200",
        "--format",
        "json",
        "--seed",
        &addr,
        "--no-lan-discovery",
    ]);
    sub.wait_for(&["peer up", "hub"]);

    chaski()
        .args([
            "pub", "news", "--count", "200", "--size", "16", "--seed", &addr,
        ])
        .args(["--no-lan-discovery", "--name", "publisher"])
        .assert()
        .success();

    let (code, out) = sub.finish();
    assert_eq!(code, Some(0), "sub: {:#?}", sub.seen);
    let out = String::from_utf8(out).unwrap();
    let mut payloads = BTreeSet::new();
    for line in out.lines() {
        let message: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(message["topic"], "news");
        assert_eq!(message["publisher_name"], "publisher");
        let payload = message["payload"].as_str().unwrap();
        assert_eq!(payload.len(), 16);
        payloads.insert(payload.trim_end_matches('.').parse::<u64>().unwrap());
    }
    assert_eq!(payloads, (0..200).collect::<BTreeSet<_>>());
}

#[test]
fn lines_of_standard_input_are_published_and_printed_as_text() {
    let (_hub, addr) = hub();
    let mut sub = Background::start(&[
        "sub",
        "logs",
        "--count",
        "3",
        "--seed",
        &addr,
        "--no-lan-discovery",
    ]);
    sub.wait_for(&["peer up", "hub"]);
    chaski()
        .args([
            "pub",
            "logs",
            "--name",
            "tail",
            "--seed",
            &addr,
            "--no-lan-discovery",
        ])
        .write_stdin("first\nsecond\nthird\n")
        .assert()
        .success();
    let (code, out) = sub.finish();
    assert_eq!(code, Some(0));
    let out = String::from_utf8(out).unwrap();
    let lines: BTreeSet<&str> = out.lines().collect();
    assert_eq!(
        lines,
        BTreeSet::from(["logs tail: first", "logs tail: second", "logs tail: third"])
    );
}

#[cfg(unix)]
#[test]
fn sigterm_stops_a_node_cleanly_with_a_goodbye_to_its_peers() {
    let (mut hub, addr) = hub();
    let mut node = Background::start(&[
        "node",
        "--name",
        "leaf",
        "--subscribe",
        "t",
        "--seed",
        &addr,
        "--no-lan-discovery",
    ]);
    node.wait_for(&["peer up", "hub"]);
    hub.wait_for(&["peer up", "leaf"]);
    node.terminate();
    let (code, _) = node.finish();
    assert_eq!(code, Some(0), "{:#?}", node.seen);
    node.wait_for(&["stopped"]);
    hub.wait_for(&["peer down", "Goodbye(Shutdown)"]);
}

/// The name a node started with these settings reports.
fn name_with(config: &std::path::Path, flag: Option<&str>, env: Option<&str>) -> String {
    let mut args = vec!["node", "--config", config.to_str().unwrap()];
    if let Some(flag) = flag {
        args.extend(["--name", flag]);
    }
    let env: Vec<(&str, &str)> = env.map(|e| ("CHASKI_NAME", e)).into_iter().collect();
    let mut node = Background::start_with(&args, &env);
    let line = node.wait_for(&["listening on"]);
    node.terminate();
    assert_eq!(node.finish().0, Some(0));
    line.split("name=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned()
}

#[test]
fn environment_overrides_flags_which_override_the_file() {
    let dir = tempdir();
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        "name = \"from-file\"\nlisten = \"127.0.0.1:0\"\nlan_discovery = false\n",
    )
    .unwrap();
    assert_eq!(name_with(&config, None, None), "from-file");
    assert_eq!(name_with(&config, Some("from-flag"), None), "from-flag");
    assert_eq!(
        name_with(&config, Some("from-flag"), Some("from-env")),
        "from-env"
    );
}

/// Runs `chaski ARGS` with `env`; asserts the exit code and one `chaski: error:` line containing
/// every one of `parts`.
fn fails(args: &[&str], env: &[(&str, &str)], code: i32, parts: &[&str]) {
    let output = chaski()
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
    assert!(errors[0].starts_with("chaski: error: "), "{stderr}");
    for part in parts {
        assert!(
            errors[0].contains(part),
            "{args:?}: {part:?} not in {stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Arguments, environment, and what the error line must contain.
type Case<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, Vec<&'a str>);

#[test]
fn bad_settings_are_one_clear_line_and_exit_code_2() {
    let dir = tempdir();
    let unknown_key = dir.join("unknown.toml");
    std::fs::write(&unknown_key, "relay = true\nmax_conections = 3\n").unwrap();
    let bad_value = dir.join("value.toml");
    std::fs::write(&bad_value, "stream_overflow = \"sometimes\"\n").unwrap();
    let not_toml = dir.join("broken.toml");
    std::fs::File::create(&not_toml)
        .unwrap()
        .write_all(b"name = \"unterminated\n")
        .unwrap();
    let missing = dir.join("missing.toml");
    let shared_key = dir.join("shared.key");
    std::fs::write(&shared_key, "not even a key").unwrap();
    std::fs::set_permissions(
        &shared_key,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();

    let node = |file: &std::path::Path| {
        vec![
            "node".to_owned(),
            "--config".to_owned(),
            file.display().to_string(),
        ]
    };
    let cases: Vec<Case<'_>> = vec![
        (
            node(&unknown_key),
            vec![],
            vec!["line 2", "max_conections", "max_connections"],
        ),
        (
            node(&bad_value),
            vec![],
            vec!["sometimes", "block", "drop-oldest", "drop-newest"],
        ),
        (node(&not_toml), vec![], vec!["broken.toml", "line 1"]),
        (
            node(&missing),
            vec![],
            vec!["cannot read config file", "missing.toml"],
        ),
        (
            vec![
                "node".into(),
                "--no-lan-discovery".into(),
                "--identity".into(),
                shared_key.display().to_string(),
            ],
            vec![],
            vec!["readable by others", "chmod 600"],
        ),
        (
            vec!["node".into(), "--no-lan-discovery".into()],
            vec![("CHASKI_RELAY", "maybe")],
            vec!["CHASKI_RELAY", "true or false"],
        ),
        (
            vec!["node".into(), "--no-lan-discovery".into()],
            vec![("CHASKI_PING_INTERVAL", "soon")],
            vec!["CHASKI_PING_INTERVAL", "250ms"],
        ),
        (
            vec![
                "node".into(),
                "--max-connections".into(),
                "1".into(),
                "--no-lan-discovery".into(),
            ],
            vec![],
            vec!["max_connections must be at least 2"],
        ),
        (
            vec!["pub".into(), "".into(), "x".into()],
            vec![],
            vec!["topic"],
        ),
    ];
    for (args, env, parts) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&args, &env, 2, &parts);
    }
    // Usage errors come from clap: exit code 2 too.
    chaski().args(["node", "--no-such-flag"]).assert().code(2);
    chaski().args(["sub"]).assert().code(2);
}

#[test]
fn address_problems_exit_with_code_3() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    fails(
        &["node", "--listen", &taken, "--no-lan-discovery"],
        &[],
        3,
        &[&taken],
    );
    fails(
        &["node", "--listen", "nonsense", "--no-lan-discovery"],
        &[],
        3,
        &["nonsense"],
    );
}

#[test]
fn publishing_without_a_subscriber_times_out_with_code_4() {
    fails(
        &[
            "pub",
            "lonely",
            "x",
            "--wait",
            "300ms",
            "--no-lan-discovery",
        ],
        &[],
        4,
        &["no subscriber of `lonely`"],
    );
}

#[test]
fn every_command_has_help_with_examples() {
    for command in ["node", "pub", "sub", "ping", "peers", "demo"] {
        let output = chaski().args([command, "--help"]).output().unwrap();
        assert!(output.status.success(), "{command} --help");
        let help = String::from_utf8(output.stdout).unwrap();
        assert!(help.contains("Examples:"), "{command} --help: {help}");
        assert!(help.contains(&format!("chaski {command}")), "{help}");
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut node = Background::start(&["--log-format", "json", "node", "--no-lan-discovery"]);
    let line = node.wait_for(&["listening on"]);
    let log: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(log["level"], "INFO");
    assert!(
        log["fields"]["message"]
            .as_str()
            .unwrap()
            .starts_with("listening on 127.0.0.1:")
    );
    node.terminate();
    assert_eq!(node.finish().0, Some(0));
}

#[test]
fn verbose_errors_add_the_details() {
    let output = chaski()
        .args(["-v", "node", "--listen", "nonsense", "--no-lan-discovery"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("chaski: error: cannot start the node"),
        "{stderr}"
    );
    assert!(stderr.contains("details: "), "{stderr}");
}

#[test]
fn a_repeated_message_at_a_rate_is_delivered_every_time() {
    let (_hub, addr) = hub();
    let mut sub = Background::start(&[
        "sub",
        "ticks",
        "--count",
        "5",
        "--format",
        "raw",
        "--seed",
        &addr,
        "--no-lan-discovery",
    ]);
    sub.wait_for(&["peer up", "hub"]);
    chaski()
        .args(["pub", "ticks", "tick;", "--count", "5", "--rate", "100"])
        .args(["--seed", &addr, "--no-lan-discovery"])
        .assert()
        .success();
    let (code, out) = sub.finish();
    assert_eq!(code, Some(0));
    assert_eq!(String::from_utf8(out).unwrap(), "tick;".repeat(5));
}
