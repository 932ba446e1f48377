//! The benchmark binary as a developer meets it. (Its measurements run, short, in the gateway's
//! test suite: `tests/it/bench.rs`, which starts this binary.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_meshgate-bench");

#[test]
fn a_measurement_without_the_gateway_binary_says_how_to_build_it() {
    let output = Command::new(BIN)
        .env("MESHGATE_BIN", "/nonexistent/meshgate")
        .args(["--history-events", "10", "--seconds", "1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("/nonexistent/meshgate is missing") && said.contains("cargo build"), "{said}");
}

#[test]
fn every_measurement_is_offered() {
    let output = Command::new(BIN).arg("--help").output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--history-events",
        "--postgres-url",
        "--esdb-url",
        "--store-only",
        "--dispatch-builds",
        "live-log",
        "chat-actions",
    ] {
        assert!(said.contains(flag), "no {flag} in:\n{said}");
    }
}
