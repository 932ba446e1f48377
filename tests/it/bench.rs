//! Short runs of `meshgate-bench` (`bench/`), so the benchmarks of docs/benchmarks.md cannot rot.
//! They assert that every measurement is made and reported, never how fast anything was.
//!
//! The benchmark is a crate of its own; `cargo test --workspace` builds its binary beside the
//! gateway's (its own tests need it), which these start with the gateway's binary of this build.

use std::path::PathBuf;
use std::process::Command;

use crate::process::BIN;

/// `meshgate-bench` of this build, beside `meshgate`.
fn bench_binary() -> PathBuf {
    let path = std::path::Path::new(BIN).with_file_name("meshgate-bench");
    assert!(path.exists(), "{} is missing: run the tests with `cargo test --workspace`", path.display());
    path
}

fn bench(args: &[&str]) -> String {
    let cwd = tempfile::tempdir().unwrap();
    let output = Command::new(bench_binary())
        .current_dir(cwd.path())
        .env("RUST_LOG", "warn")
        .env("MESHGATE_BIN", BIN)
        .args(args)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{said}\n{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0, "the benchmark left files in its working directory");
    said
}

#[test]
fn the_throughput_benchmark_measures_every_mode() {
    let said = bench(&["--seconds", "1", "--rebuild-events", "2000", "--store-only", "--dispatch-builds", "20"]);
    for line in [
        "| group commit |",
        "| one commit per request |",
        "store only:",
        "dispatch",
        "claims:",
        "rebuild: log of 2000 events",
        "catch-up",
    ] {
        assert!(said.contains(line), "no `{line}` in:\n{said}");
    }
}

#[test]
fn the_history_benchmark_grows_a_log_and_reports_every_measure() {
    let said = bench(&["--history-events", "2000", "--seconds", "1", "--history-rounds", "1"]);
    for row in [
        "| history |",
        "| RSS of the serving gateway, ready, before load |",
        "| start → /readyz, read model present |",
        "| start → /readyz after kill -9 under load |",
        "| graceful stop |",
        "| `projections rebuild` |",
        "empty log |",
        "this history |",
    ] {
        assert!(said.contains(row), "no `{row}` in:\n{said}");
    }
    let loads: Vec<&str> = said.lines().filter(|l| l.starts_with("load: ")).collect();
    assert_eq!(loads.len(), 2, "one load on the empty log, one on the history:\n{said}");
    assert!(loads.iter().all(|l| l.ends_with(", 0 errors")), "deliveries failed:\n{said}");
}

#[test]
fn the_shared_log_benchmark_compares_sqlite_with_one_and_two_gateways_on_postgres() {
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", crate::postgres::server().port);
    let said = bench(&["--postgres-url", &url, "--seconds", "1", "--dispatch-builds", "10"]);
    for row in [
        "| SQLite, one gateway |",
        "| PostgreSQL, one gateway |",
        "| PostgreSQL, two gateways |",
        "dispatch across gateways: 10 builds",
        "| database work per delivery | one gateway | two gateways | two / one |",
        "| server CPU |",
        "| statements",
    ] {
        assert!(said.contains(row), "no `{row}` in:\n{said}");
    }
}

/// Against the stand-in of `crate::esdb` (or `MESHGATE_ESDB_URL`). `MESHGATE_ESDB_BENCH="SECONDS
/// CLIENTS"` makes it the longer run of docs/benchmarks.md (with `--nocapture` to see it).
#[cfg(feature = "eventstoredb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eventstoredb_benchmark_compares_it_with_sqlite() {
    let server = crate::esdb::server().await;
    let run = std::env::var("MESHGATE_ESDB_BENCH").unwrap_or_else(|_| "1 8".into());
    let (seconds, clients) = run.split_once(' ').expect("MESHGATE_ESDB_BENCH is \"SECONDS CLIENTS\"");
    let (seconds, clients) = (seconds.to_owned(), clients.to_owned());
    let said = tokio::task::spawn_blocking(move || {
        bench(&["--esdb-url", &server.url, "--seconds", &seconds, "--clients", &clients])
    })
    .await
    .unwrap();
    eprintln!("{said}");
    for row in ["| SQLite, one gateway |", "| EventStoreDB, one gateway |", "EventStoreDB / SQLite:"] {
        assert!(said.contains(row), "no `{row}` in:\n{said}");
    }
}

/// The live log's measurement on one megabyte, as fast as the script can print: it checks that
/// every line arrives once, in order, and that the stored log is whole.
#[test]
fn the_live_log_benchmark_follows_a_build_to_its_end() {
    let said = bench(&["live-log", "--mb", "1", "--rate", "0"]);
    for line in ["live log: 1.0 MiB", "delay written → readable: p50", "gateway CPU over the build", "one upload"] {
        assert!(said.contains(line), "no `{line}` in:\n{said}");
    }
}

/// Slack's clicks on a few builds, twice: it checks that every build was cancelled once.
#[test]
fn the_chat_actions_benchmark_answers_every_click() {
    let said = bench(&["chat-actions", "--clicks", "6", "--concurrency", "3"]);
    for line in ["slack actions: 6 clicks, 3 at a time", "first click: answered in p50", "sent again: answered in p50"]
    {
        assert!(said.contains(line), "no `{line}` in:\n{said}");
    }
}

/// The log's size on a few builds: it checks that every build succeeded and the archive reads back.
#[test]
fn the_retention_benchmark_runs_builds_and_archives_them() {
    let said = bench(&["retention", "--builds", "6", "--lines", "20"]);
    for line in
        ["6 builds (2 issues built 3 times", "per build", "log file (events.sqlite and WAL)", "archive of 4 finished"]
    {
        assert!(
            said.contains(line),
            "no `{line}` in:
{said}"
        );
    }
}

/// The stats' cost on a short history: it checks that the stats folded alone equal the set's and
/// that every question is answered.
#[test]
fn the_stats_benchmark_folds_a_history_and_answers_every_question() {
    let said = bench(&["stats", "--events", "20000", "--answers", "3"]);
    for line in
        ["history: ", "of the fold", "held: 90 days", "answer, 30 days, every trigger", "answer, 90 days, one trigger"]
    {
        assert!(said.contains(line), "no `{line}` in:\n{said}");
    }
}

#[test]
fn the_instruction_count_runs_the_gateway_under_callgrind_twice_a_round() {
    let said = bench(&["instructions", "--base", "2", "--deliveries", "3", "--top", "5", "--rounds", "2"]);
    assert!(said.contains("round 1: instructions: 2 deliveries "), "{said}");
    assert!(said.contains("round 2: instructions: 2 deliveries "), "{said}");
    assert!(said.contains("median of 2 rounds: "), "{said}");
    assert!(said.contains("| function (inclusive) | instructions per delivery |"), "{said}");
}

#[test]
fn the_bounds_measure_the_gateway_beside_a_no_op_and_a_plain_group_commit_server() {
    let said = bench(&["bounds", "--seconds", "1", "--rounds", "1", "--clients", "4"]);
    for row in
        ["| 1 | no-op |", "| 1 | plain group commit |", "| 1 | meshgate |", "meshgate / no-op", "meshgate / plain"]
    {
        assert!(said.contains(row), "{row} missing from:\n{said}");
    }
}

#[test]
fn the_burst_follows_memory_after_the_load() {
    let said = bench(&["burst", "--seconds", "1", "--after", "1", "--clients", "4"]);
    for line in ["at rest after start: RSS", "deliveries accepted in", "| 0 s |", "| 1 s |"] {
        assert!(said.contains(line), "{line} missing from:\n{said}");
    }
}
