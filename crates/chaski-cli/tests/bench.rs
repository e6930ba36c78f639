//! `chaski bench --json`: one object per measurement, each with the raw TCP baseline of the same
//! run beside it, in one and two processes, for plain TCP and TLS, then TLS's set-up and memory.

mod common;

use std::time::Duration;

use common::chaski;

#[test]
fn a_quick_bench_reports_every_measurement_as_json() {
    let output = chaski()
        .args(["bench", "--quick", "--sizes", "64", "--json"])
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("bench: one process: 64 B"),
        "progress: {stderr}"
    );
    let objects: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<(String, Option<u64>, Option<String>)> = objects
        .iter()
        .map(|o| {
            (
                o["measurement"].as_str().unwrap().to_owned(),
                o["processes"].as_u64(),
                o["security"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let kind = |m: &str, p: Option<u64>, s: Option<&str>| (m.to_owned(), p, s.map(str::to_owned));
    assert_eq!(
        kinds,
        [
            kind("throughput", Some(1), Some("plain")),
            kind("throughput", Some(1), Some("TLS")),
            kind("round_trip", Some(1), Some("plain")),
            kind("round_trip", Some(1), Some("TLS")),
            kind("fan_out", None, Some("TLS")),
            kind("throughput", Some(2), Some("plain")),
            kind("throughput", Some(2), Some("TLS")),
            kind("tls_connection", None, None),
        ]
    );
    for object in &objects {
        match object["measurement"].as_str().unwrap() {
            "throughput" => {
                assert_eq!(object["payload_bytes"], 64);
                assert!(object["chaski_msgs_per_s"].as_f64().unwrap() > 0.0);
                assert!(object["baseline_msgs_per_s"].as_f64().unwrap() > 0.0);
            }
            "fan_out" => {
                assert_eq!(object["subscribers"], 10);
                assert!(object["delivered_msgs_per_s"].as_f64().unwrap() > 0.0);
            }
            "round_trip" => {
                let ratio = object["ratio"].as_f64().unwrap();
                assert!(ratio.is_finite() && ratio > 0.0, "{object}");
                assert!(object["chaski_p50_us"].as_f64().unwrap() > 0.0);
                assert!(object["baseline_p50_us"].as_f64().unwrap() > 0.0);
            }
            _ => {
                assert!(object["setup_ms_p50"].as_f64().unwrap() > 0.0, "{object}");
                assert!(object["idle_bytes_per_connection"].as_f64().is_some());
            }
        }
    }
}

#[test]
fn bad_bench_arguments_are_usage_errors() {
    chaski().args(["bench", "--sizes", "big"]).assert().code(2);
    chaski().args(["bench", "--runs", "0"]).assert().code(2);
}
