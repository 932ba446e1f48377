//! Reconciliation against a YouTrack stand-in (tests/it/youtrack.rs): the observable rules of
//! ADR 0008, failures, paging, the command, and a gateway process stopped while transitions were
//! sent.

use std::path::Path;

use chrono::Utc;
use meshgate::config::Config;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::pki::write_private;
use crate::youtrack::{Failure, YouTrack, TOKEN};

/// A gateway whose `[youtrack]` is the stand-in; sweeps only on demand.
fn reconcile_config(dir: &Path, youtrack: &YouTrack) -> Config {
    let mut config = test_config(dir, vec![ios_trigger()]);
    let token = dir.join("youtrack.token");
    write_private(&token, TOKEN);
    config.youtrack.base_url = Some(youtrack.url());
    config.youtrack.token_file = Some(token);
    config.reconcile.interval_seconds = 0;
    config
}

async fn reconcile_app(youtrack: &YouTrack) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let config = reconcile_config(dir.path(), youtrack);
    spawn_with(dir, config).await
}

async fn sweep(app: &TestApp, body: Value) -> Value {
    let response =
        app.client.post(app.url("/api/v1/reconcile")).bearer_auth(&app.admin_token).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn started(report: &Value) -> usize {
    report["builds_started"].as_array().unwrap().len()
}

/// A minute ago, on the test's (and the stand-in's) clock.
fn minute_ago() -> i64 {
    Utc::now().timestamp_millis() - 60_000
}

/// The webhook of a transition of `issue` to Building at `updated`.
fn webhook(issue: &str, updated: i64) -> String {
    with(&fixture("mob-issueUpdated-state-building.json"), &json!({"id": issue, "updated": updated}))
}

async fn requested(app: &TestApp) -> Vec<Value> {
    app.all_events()
        .await
        .iter()
        .filter(|e| e.event_type == "BuildRequested")
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_no_webhook_brought_are_built_once_and_an_overlapping_sweep_starts_nothing() {
    let youtrack = YouTrack::start().await;
    let t = minute_ago();
    youtrack.transition("MOB-1", t, "jane.doe", "Open", "Building");
    youtrack.transition("MOB-2", t + 1000, "omar.haddad", "In Progress", "Building");
    let app = reconcile_app(&youtrack).await;

    let first = sweep(&app, json!({})).await;
    assert_eq!((first["activities_read"].as_u64(), first["transitions_matched"].as_u64()), (Some(2), Some(2)));
    assert_eq!(started(&first), 2, "{first}");
    let builds = requested(&app).await;
    assert_eq!(builds.len(), 2);
    let one = builds.iter().find(|b| b["issue_id"] == "MOB-1").unwrap();
    assert_eq!((one["source"].as_str(), one["requested_by"].as_str()), (Some("reconcile"), Some("jane.doe")));
    assert_eq!(one["summary"], "Summary of MOB-1", "the summary comes from the issue as it is now");
    assert_eq!(one["correlation_id"], first["sweep_id"], "an audit finds the sweep that started it");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(one["transition_at"].as_str().unwrap()).unwrap().timestamp_millis(),
        t
    );

    // A second sweep over an overlapping window finds the same transitions and starts nothing.
    let since = (Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let again = sweep(&app, json!({"since": since})).await;
    assert_eq!((started(&again), again["already_built"].as_u64()), (0, Some(2)), "{again}");
    assert_eq!(requested(&app).await.len(), 2);
    assert_eq!(app.count("ReconcileSwept").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_after_the_webhook_of_the_same_transition_starts_nothing_even_once_it_finished() {
    let youtrack = YouTrack::start().await;
    let t = minute_ago();
    let app = reconcile_app(&youtrack).await;
    let build = build_id(&app.deliver(&webhook("MOB-1", t)).await);
    youtrack.transition("MOB-1", t, "omar.haddad", "Open", "Building");
    let report = sweep(&app, json!({})).await;
    assert_eq!((started(&report), report["already_built"].as_u64()), (0, Some(1)), "{report}");
    assert_eq!(report["transitions"][0]["build_id"], build.to_string());

    app.finish_build(build, true).await;
    let after = sweep(&app, json!({"since": (Utc::now() - chrono::Duration::hours(1)).to_rfc3339()})).await;
    assert_eq!((started(&after), after["already_built"].as_u64()), (0, Some(1)), "{after}");
    assert_eq!(requested(&app).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_arrives_after_a_sweep_built_its_transition_folds_into_that_build() {
    let youtrack = YouTrack::start().await;
    let t = minute_ago();
    youtrack.transition("MOB-1", t, "jane.doe", "Open", "Building");
    youtrack.transition("MOB-2", t, "jane.doe", "Open", "Building");
    let app = reconcile_app(&youtrack).await;
    let report = sweep(&app, json!({})).await;
    let built = |issue: &str| {
        report["transitions"].as_array().unwrap().iter().find(|x| x["issue_id"] == issue).unwrap()["build_id"].clone()
    };

    // While the build is queued, and after it finished: the late webhook folds into it.
    let late = app.deliver(&webhook("MOB-1", t)).await;
    assert_eq!((late["outcome"].as_str(), &late["build_id"]), (Some("folded"), &built("MOB-1")));
    let b2: uuid::Uuid = serde_json::from_value(built("MOB-2")).unwrap();
    app.finish_build(b2, false).await;
    let late = app.deliver(&webhook("MOB-2", t + 400)).await;
    assert_eq!((late["outcome"].as_str(), &late["build_id"]), (Some("folded"), &built("MOB-2")));
    assert_eq!(requested(&app).await.len(), 2);
    // A later change of the same issue is a new transition: a new build.
    assert_eq!(app.deliver(&webhook("MOB-2", t + 30_000)).await["outcome"], "enqueued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_changes_other_projects_and_fields_and_issues_that_left_the_state_start_nothing() {
    let youtrack = YouTrack::start().await;
    let t = minute_ago();
    youtrack.transition("MOB-1", t, "meshgate-bot", "Open", "Building");
    youtrack.transition("WEB-1", t, "jane.doe", "Open", "Building");
    youtrack.change("MOB-2", t, "jane.doe", "Priority", "Normal", "Building");
    youtrack.set_state("MOB-2", "Building");
    youtrack.transition("MOB-3", t, "jane.doe", "Open", "Building");
    youtrack.set_state("MOB-3", "Open");
    let app = reconcile_app(&youtrack).await;
    let report = sweep(&app, json!({})).await;
    assert_eq!(report["activities_read"], 3, "the query names the triggers' projects: {report}");
    assert_eq!((started(&report), report["transitions_matched"].as_u64()), (0, Some(0)), "{report}");
    assert_eq!(report["left_since"], 1);
    assert_eq!(report["transitions"][0]["outcome"], "left_since");
    assert!(requested(&app).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_cut_short_is_done_again_after_a_restart_and_starts_nothing_twice() {
    let youtrack = YouTrack::start().await;
    let t = minute_ago();
    youtrack.transition("MOB-1", t, "jane.doe", "Open", "Building");
    youtrack.transition("MOB-2", t + 10, "jane.doe", "Open", "Building");
    youtrack.fail_at("/api/issues/MOB-2", Failure(503, None, "unavailable"));
    let app = reconcile_app(&youtrack).await;
    let cut = sweep(&app, json!({})).await;
    assert_eq!(started(&cut), 1, "{cut}");
    assert!(cut["errors"][0].as_str().unwrap().contains("MOB-2"), "{cut}");
    assert_eq!(cut["window_end"], cut["window_start"], "a sweep with errors does not move on");

    let app = app.restart().await;
    let again = sweep(&app, json!({})).await;
    assert_eq!((started(&again), again["already_built"].as_u64()), (1, Some(1)), "{again}");
    let issues: Vec<String> =
        requested(&app).await.iter().map(|b| b["issue_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(issues, ["MOB-1", "MOB-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn youtrack_failures_are_recorded_and_shown_in_readiness_after_several_in_a_row() {
    let youtrack = YouTrack::start().await;
    youtrack.transition("MOB-1", minute_ago(), "jane.doe", "Open", "Building");
    let app = reconcile_app(&youtrack).await;
    youtrack.fail_next(&[
        Failure(401, None, r#"{"error": "Unauthorized"}"#),
        Failure(429, Some("7"), ""),
        Failure(502, None, "<html>bad gateway</html>"),
        Failure(200, None, "{\"activities\": [ not json"),
    ]);
    let mut said = Vec::new();
    for n in 1..=4 {
        let report = sweep(&app, json!({})).await;
        assert_eq!(started(&report), 0);
        said.push(report["errors"][0].as_str().unwrap().to_owned());
        let ready: Value = app.client.get(app.url("/readyz")).send().await.unwrap().json().await.unwrap();
        assert_eq!(ready["status"], "ready", "webhooks are still taken");
        assert_eq!(ready["reconcile"]["status"], if n >= 3 { "failing" } else { "ok" }, "{ready}");
    }
    for (said, expected) in said.iter().zip(["401", "429", "502", "not json"]) {
        assert!(said.contains(expected), "{said}");
    }
    let events = app.all_events().await;
    let swept: Vec<Value> = events
        .iter()
        .filter(|e| e.event_type == "ReconcileSwept")
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    assert_eq!(swept.len(), 4);
    assert!(swept.iter().all(|s| !s["errors"].as_array().unwrap().is_empty()));

    // YouTrack is back: the next sweep builds the transition, and readiness says so.
    let report = sweep(&app, json!({})).await;
    assert_eq!(started(&report), 1, "{report}");
    let ready: Value = app.client.get(app.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (ready["reconcile"]["status"].as_str(), ready["reconcile"]["consecutive_failures"].as_u64()),
        (Some("ok"), Some(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_youtrack_that_never_answers_times_out_and_the_sweep_says_so() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let youtrack = YouTrack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = reconcile_config(dir.path(), &youtrack);
    config.youtrack.base_url = Some(format!("https://{addr}"));
    config.outbound.timeout_seconds = 1;
    let app = spawn_with(dir, config).await;
    let report = sweep(&app, json!({})).await;
    assert!(report["errors"][0].as_str().unwrap().contains("timed out"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_reads_every_page_and_the_next_continues_where_one_stopped_at_its_cap() {
    let youtrack = YouTrack::start().await;
    let t = minute_ago() - 60_000;
    for n in 1..=130 {
        youtrack.transition(&format!("MOB-{n}"), t + n, "jane.doe", "Open", "Building");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = reconcile_config(dir.path(), &youtrack);
    config.reconcile.max_activities_per_sweep = 120;
    let app = spawn_with(dir, config).await;
    let first = sweep(&app, json!({})).await;
    assert_eq!((first["activities_read"].as_u64(), started(&first)), (Some(120), 120));
    assert_eq!(youtrack.asked("/api/activitiesPage"), 2, "two pages of 100");
    let cut_at = chrono::DateTime::parse_from_rfc3339(first["window_end"].as_str().unwrap()).unwrap();
    assert_eq!(cut_at.timestamp_millis(), t + 120, "the next sweep continues from the last activity read");
    let second = sweep(&app, json!({})).await;
    assert_eq!(started(&second), 10, "{}", second["transitions"]);
    assert_eq!(requested(&app).await.len(), 130);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconcile_command_asks_the_running_gateway_or_sweeps_the_log_itself() {
    let youtrack = YouTrack::start().await;
    youtrack.transition("MOB-1", minute_ago(), "jane.doe", "Open", "Building");
    let app = reconcile_app(&youtrack).await;
    // The same gateway, as its configuration file says.
    let file = app.dir.path().join("meshgate.toml");
    let config = &app.config;
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"{}\"\ndata_dir = {:?}\n[admin]\ntoken_file = {:?}\n[nodes]\ntoken_file = {:?}\n\
             [webhook]\ntoken_files = [{:?}]\n[youtrack]\nbot_login = \"meshgate-bot\"\nbase_url = {:?}\ntoken_file = {:?}\n\
             [outbound]\nca_file = {:?}\n[reconcile]\ninterval_seconds = 0\n\n[[triggers]]\nname = \"ios-build\"\n\
             projects = [\"MOB\"]\nfield = \"State\"\nto = [\"Building\"]\nscript = \"ios-build\"\ngit_ref = \"main\"\n",
            app.addr,
            config.server.data_dir,
            config.admin.token_file.as_ref().unwrap(),
            config.nodes.token_file.as_ref().unwrap(),
            config.webhook.token_files[0],
            youtrack.url(),
            config.youtrack.token_file.as_ref().unwrap(),
            crate::pki::pki().ca_file,
        ),
    )
    .unwrap();
    let reconcile = |args: &[&str]| {
        let output = std::process::Command::new(crate::process::BIN)
            .args(["reconcile", "--config", file.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let dry = reconcile(&["--dry-run"]);
    assert!(dry.contains("dry run") && dry.contains("MOB-1") && dry.contains("would_start"), "{dry}");
    assert!(requested(&app).await.is_empty() && app.count("ReconcileSwept").await == 0, "a dry run records nothing");
    let done = reconcile(&[]);
    assert!(done.contains(" started ") && done.contains("started 1,"), "{done}");
    assert_eq!(requested(&app).await.len(), 1);

    // With the gateway stopped, the command opens the log and sweeps from here.
    let (dir, _) = app.shutdown().await;
    let here = reconcile(&["--json"]);
    let report: Value = serde_json::from_str(here.trim()).unwrap();
    assert_eq!((report["trigger"].as_str(), report["already_built"].as_u64()), (Some("cli"), Some(1)), "{report}");
    drop(dir);
}

/// A gateway process with `[youtrack]` on the stand-in and sweeps at start, its configuration in
/// `dir`; standard error lines arrive on the channel.
fn gateway_with_reconcile(
    dir: &Path,
    youtrack: &YouTrack,
) -> (crate::process::Gateway, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let toml = std::fs::read_to_string(fixtures().join("config/one-trigger.toml")).unwrap().replace(
        "bot_login = \"meshgate-bot\"",
        &format!("bot_login = \"meshgate-bot\"\nbase_url = {:?}\ntoken_file = \"youtrack.token\"", youtrack.url()),
    ) + &format!("\n[outbound]\nca_file = {:?}\n", crate::pki::pki().ca_file);
    std::fs::write(dir.join("meshgate.toml"), toml).unwrap();
    let config = dir.join("meshgate.toml");
    let mut gateway = crate::process::launch(
        dir,
        &["--config", config.to_str().unwrap()],
        &[("RUST_LOG", "info")],
        std::process::Stdio::piped(),
    );
    let stderr = std::io::BufReader::new(gateway.child.stderr.take().unwrap());
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || stderr.lines().map_while(Result::ok).for_each(|l| drop(tx.send(l))));
    (gateway, lines)
}

fn said(lines: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    loop {
        match lines.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("the gateway never said `{needle}`: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_sent_while_the_gateway_was_stopped_are_built_once_after_it_starts_and_their_late_webhook_folds() {
    let youtrack = YouTrack::start().await;
    let dir = tempfile::tempdir().unwrap();
    test_config(dir.path(), vec![]); // token files
    write_private(&dir.path().join("youtrack.token"), TOKEN);
    let (gateway, lines) = gateway_with_reconcile(dir.path(), &youtrack);
    assert!(said(&lines, "reconcile sweep").contains("trigger=\"start\""));
    gateway.stop();

    // Sent while it was down: YouTrack tried once each, and nobody answered.
    let t = Utc::now().timestamp_millis() - 1000;
    youtrack.transition("MOB-11", t, "jane.doe", "Open", "Building");
    youtrack.transition("MOB-12", t + 250, "omar.haddad", "Open", "Building");

    let (gateway, lines) = gateway_with_reconcile(dir.path(), &youtrack);
    let swept = said(&lines, "reconcile sweep");
    assert!(swept.contains("started=2"), "{swept}");
    let builds = crate::workers::events(dir.path(), "BuildRequested");
    assert_eq!(builds.len(), 2);
    assert!(builds.iter().all(|(_, b)| b["source"] == "reconcile"));

    // YouTrack's webhook for one of them turns up late (a proxy held it): it folds.
    let late = crate::pki::https_client()
        .post(gateway.url("/youtrack/webhook"))
        .header("X-YouTrack-Token", crate::process::token(dir.path(), "webhook.token"))
        .header("Content-Type", "application/json")
        .body(webhook("MOB-11", t))
        .send()
        .await
        .unwrap();
    let late: Value = late.json().await.unwrap();
    let mob11 = builds.iter().find(|(_, b)| b["issue_id"] == "MOB-11").unwrap();
    assert_eq!((late["outcome"].as_str(), &late["build_id"]), (Some("folded"), &mob11.1["build_id"]));
    gateway.stop();
    assert_eq!(crate::workers::events(dir.path(), "BuildRequested").len(), 2, "each exactly once");
}
