//! What nodes send besides results, against the real router and log: live log chunks, artifacts
//! and their retention, and every bad input of them refused with nothing stored.

use std::time::{Duration, SystemTime};

use meshgate::files::retention::{Retention, Swept};
use meshgate::files::BuildLogs;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::helpers::*;

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The running attempt 1 succeeds, as its node would report.
async fn succeed(app: &TestApp, build: Uuid) {
    let stream = meshgate_domain::stream::build_stream(build);
    app.apply_command(&stream, build, meshgate_domain::BuildCommand::Succeed { attempt: 1 }).await;
}

/// A build claimed by `mac-1` as attempt 1.
async fn running(app: &TestApp, issue: &str) -> Uuid {
    let body = with(&fixture("mob-issueUpdated-state-building.json"), &json!({"id": issue}));
    let build = build_id(&app.deliver(&body).await);
    let claim = app.claim("mac-1", &[], 4, 0).await.expect("a build to claim");
    assert_eq!(claim["build"]["build_id"], build.to_string());
    build
}

async fn chunk(app: &TestApp, build: Uuid, node: &str, attempt: u32, offset: u64, bytes: &[u8]) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/api/v1/builds/{build}/log/chunks?node_id={node}&attempt={attempt}&offset={offset}")))
        .bearer_auth(app.nodes_token())
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
}

/// `name` as one path segment.
fn segment(name: &str) -> String {
    let mut url = reqwest::Url::parse("http://x/").unwrap();
    url.path_segments_mut().unwrap().pop_if_empty().push(name);
    url.path().trim_start_matches('/').to_owned()
}

async fn put_artifact(
    app: &TestApp,
    build: Uuid,
    node: &str,
    name: &str,
    sha: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    app.client
        .put(
            app.url(&format!(
                "/api/v1/builds/{build}/artifacts/{}?node_id={node}&attempt=1&sha256={sha}",
                segment(name)
            )),
        )
        .bearer_auth(app.nodes_token())
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_build_s_chunks_are_stored_once_at_their_offsets_and_read_while_it_runs() {
    let app = spawn_app().await;
    let build = running(&app, "MOB-1").await;
    let answer: Value = chunk(&app, build, "mac-1", 1, 0, b"line one\n").await.json().await.unwrap();
    assert_eq!(answer, json!({"received": 9, "cut": false}));
    // The same chunk again, then one that overlaps it: nothing twice.
    chunk(&app, build, "mac-1", 1, 0, b"line one\n").await;
    let answer: Value = chunk(&app, build, "mac-1", 1, 5, b"one\nline two\n").await.json().await.unwrap();
    assert_eq!(answer["received"], 18);
    // Past the end: not stored; the answer says where to resume.
    let answer: Value = chunk(&app, build, "mac-1", 1, 40, b"lost").await.json().await.unwrap();
    assert_eq!(answer["received"], 18);
    // Readable while the build runs, with the admin token and with the signed link.
    let log = app.get(&format!("/api/v1/builds/{build}/log")).await.text().await.unwrap();
    assert_eq!(log, "line one\nline two\n");
    let detail: Value = app.get(&format!("/api/v1/builds/{build}")).await.json().await.unwrap();
    assert_eq!(detail["build"]["state"]["state"], "running");
    let link = detail["log_url"].as_str().unwrap().replace(&format!("http://{}", app.addr), "");
    let linked = app.client.get(app.url(&format!("{link}&offset=9"))).send().await.unwrap();
    assert_eq!(linked.text().await.unwrap(), "line two\n");
    // Chunks are counted, not recorded in the event log.
    let types: Vec<String> = app.all_events().await.into_iter().map(|e| e.event_type).collect();
    assert!(!types.iter().any(|t| t.contains("Log")), "{types:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_and_artifacts_from_a_node_that_does_not_hold_the_build_are_refused() {
    let app = spawn_app().await;
    let build = running(&app, "MOB-1").await;
    let head = *app.store().head().borrow();
    for (node, attempt) in [("mac-2", 1), ("mac-1", 2)] {
        let refused = chunk(&app, build, node, attempt, 0, b"x").await;
        assert_eq!(refused.status(), 409, "{node} attempt {attempt}");
    }
    assert_eq!(chunk(&app, Uuid::now_v7(), "mac-1", 1, 0, b"x").await.status(), 404);
    let ipa = sha256(b"ipa");
    assert_eq!(put_artifact(&app, build, "mac-2", "App.ipa", &ipa, &b"ipa"[..]).await.status(), 409);
    assert_eq!(*app.store().head().borrow(), head, "a refused chunk or upload records nothing");
    // A finished build takes no more.
    succeed(&app, build).await;
    assert_eq!(chunk(&app, build, "mac-1", 1, 0, b"x").await.status(), 409);
    assert_eq!(put_artifact(&app, build, "mac-1", "App.ipa", &ipa, &b"ipa"[..]).await.status(), 409);
    assert_eq!(app.count("ArtifactStored").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_past_max_log_bytes_is_cut_with_a_line_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    config.nodes.max_log_bytes = 1024;
    let app = spawn_with(dir, config).await;
    let build = running(&app, "MOB-1").await;
    let answer: Value = chunk(&app, build, "mac-1", 1, 0, &[b'a'; 2000]).await.json().await.unwrap();
    assert_eq!(answer["cut"], true);
    let log = app.get(&format!("/api/v1/builds/{build}/log")).await.text().await.unwrap();
    assert!(log.starts_with(&"a".repeat(1024)) && !log.starts_with(&"a".repeat(1025)), "{} bytes", log.len());
    assert!(log.ends_with("[meshgate: the log was cut at 1024 bytes (nodes.max_log_bytes)]\n"), "{log}");
    // The whole log uploaded at the end is cut the same way.
    let upload = app
        .client
        .put(app.url(&format!("/api/v1/builds/{build}/log?attempt=1&total=5000")))
        .bearer_auth(app.nodes_token())
        .body(vec![b'b'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 200);
    let log = app.get(&format!("/api/v1/builds/{build}/log")).await.text().await.unwrap();
    assert_eq!(log, format!("{}\n[meshgate: the log was cut at 1024 bytes (nodes.max_log_bytes)]\n", "b".repeat(1024)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_is_stored_once_listed_and_downloaded_with_its_link_without_a_token() {
    let app = spawn_app().await;
    let build = running(&app, "MOB-1").await;
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let sha = sha256(&bytes);
    let stored = put_artifact(&app, build, "mac-1", "reports/App.dSYM.zip", &sha, bytes.clone()).await;
    assert_eq!(stored.status(), 200);
    let stored: Value = stored.json().await.unwrap();
    assert_eq!((stored["bytes"].as_u64(), stored["sha256"].as_str()), (Some(200_000), Some(sha.as_str())));
    // The same upload again (its answer was lost): answered, not recorded twice.
    let again = put_artifact(&app, build, "mac-1", "reports/App.dSYM.zip", &sha.to_uppercase(), bytes.clone()).await;
    assert_eq!(again.status(), 200);
    assert_eq!(app.count("ArtifactStored").await, 1);
    let list: Value = app.get(&format!("/api/v1/builds/{build}/artifacts")).await.json().await.unwrap();
    assert_eq!(list["artifacts"].as_array().unwrap().len(), 1);
    let url = list["artifacts"][0]["url"].as_str().unwrap();
    assert!(url.contains("/artifacts/reports%2FApp.dSYM.zip?attempt=1&key="), "{url}");
    let download = reqwest::get(url).await.unwrap();
    assert_eq!(download.status(), 200);
    let disposition = download.headers()["content-disposition"].to_str().unwrap().to_owned();
    assert_eq!(disposition, "attachment; filename=\"App.dSYM.zip\"");
    assert_eq!(download.bytes().await.unwrap().to_vec(), bytes);
    // A wrong key opens nothing; the admin token does.
    let wrong = url.rsplit_once("key=").unwrap().0.to_owned() + "key=00";
    assert_eq!(reqwest::get(&wrong).await.unwrap().status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_names_that_could_leave_the_build_folder_are_refused_and_nothing_is_written() {
    let app = spawn_app().await;
    let build = running(&app, "MOB-1").await;
    let ipa = sha256(b"ipa");
    let long = "a".repeat(256);
    for name in ["../escape", "../../../etc/passwd", "/etc/passwd", "a/../../b", "a\0b", "a\\b", long.as_str()] {
        let refused = put_artifact(&app, build, "mac-1", name, &ipa, &b"ipa"[..]).await;
        assert_eq!(refused.status(), 400, "{name:?}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["field"], "name", "{name:?}: {body}");
    }
    let bad_sum = put_artifact(&app, build, "mac-1", "App.ipa", "xyz", &b"ipa"[..]).await;
    assert_eq!(bad_sum.status(), 400);
    let data = app.dir.path().join("data");
    assert!(!data.join("artifacts").exists(), "nothing was written for a refused name");
    assert!(!data.join("escape").exists() && !app.dir.path().join("escape").exists());
    assert_eq!(app.count("ArtifactStored").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_whose_checksum_differs_or_that_passes_the_cap_is_refused_and_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    config.nodes.max_artifact_bytes = 1000;
    let app = spawn_with(dir, config).await;
    let build = running(&app, "MOB-1").await;
    let mismatch = put_artifact(&app, build, "mac-1", "App.ipa", &sha256(b"something else"), &b"ipa"[..]).await;
    assert_eq!(mismatch.status(), 422);
    assert_eq!(mismatch.json::<Value>().await.unwrap()["error"], "checksum_mismatch");
    assert_eq!(put_artifact(&app, build, "mac-1", "a.bin", &sha256(&[7; 800]), vec![7u8; 800]).await.status(), 200);
    // 800 of the attempt's 1000 bytes are taken.
    let past = put_artifact(&app, build, "mac-1", "b.bin", &sha256(&[7; 300]), vec![7u8; 300]).await;
    assert_eq!(past.status(), 413);
    // A broken-off upload leaves nothing either.
    let broken = futures_util::stream::iter(vec![
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"half")),
        Err(std::io::Error::other("the node lost its network")),
    ]);
    let sent = app
        .client
        .put(
            app.url(&format!("/api/v1/builds/{build}/artifacts/c.bin?node_id=mac-1&attempt=1&sha256={}", sha256(b"x"))),
        )
        .bearer_auth(app.nodes_token())
        .body(reqwest::Body::wrap_stream(broken))
        .send()
        .await;
    assert!(sent.is_err() || sent.unwrap().status() != 200);
    let list: Value = app.get(&format!("/api/v1/builds/{build}/artifacts")).await.json().await.unwrap();
    let names: Vec<&str> = list["artifacts"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a.bin"]);
    let folder = app.dir.path().join(format!("data/artifacts/{build}/1"));
    let files: Vec<String> =
        std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(files, ["a.bin"], "refused and broken uploads leave no file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_artifacts_older_than_their_days_are_removed_and_the_removals_recorded() {
    let app = spawn_app().await;
    let build = running(&app, "MOB-1").await;
    let sha = sha256(b"ipa");
    assert_eq!(put_artifact(&app, build, "mac-1", "App.ipa", &sha, &b"ipa"[..]).await.status(), 200);
    assert_eq!(chunk(&app, build, "mac-1", 1, 0, b"** BUILD SUCCEEDED **\n").await.status(), 200);
    succeed(&app, build).await;
    let retention = Retention {
        // The gateway's logs folder: the files say what is there.
        logs: std::sync::Arc::new(BuildLogs::new(app.dir.path().join("data/logs"), 1 << 20)),
        artifacts: std::sync::Arc::clone(&app.handles.artifacts),
        store: std::sync::Arc::clone(app.store()),
        projections: app.handles.projections.clone(),
        build_logs_days: 30,
        artifacts_days: 14,
    };
    // Thirteen days on: both kept. Fifteen: the artifacts removed, once. Thirty-one: the logs.
    let day = Duration::from_secs(86_400);
    let swept = |days: u32| {
        let retention = &retention;
        async move { retention.sweep_once(SystemTime::now() + days * day).await.unwrap() }
    };
    assert_eq!(swept(13).await, Swept::default());
    assert_eq!(swept(15).await, Swept { logs: vec![], artifacts: vec![build] });
    assert_eq!(swept(15).await, Swept::default());
    app.wait_for_count("ArtifactsExpired", 1).await;
    assert_eq!(app.get(&format!("/api/v1/builds/{build}/log")).await.status(), 200);
    assert_eq!(swept(31).await, Swept { logs: vec![build], artifacts: vec![] });
    assert_eq!(swept(31).await, Swept::default());
    app.wait_for_count("BuildLogsExpired", 1).await;
    let log = app.get(&format!("/api/v1/builds/{build}/log")).await;
    assert_eq!(log.status(), 404);
    assert!(log.text().await.unwrap().contains("build_logs_days"));
    let detail: Value = app.get(&format!("/api/v1/builds/{build}")).await.json().await.unwrap();
    assert_eq!(detail["build"]["logs_removed"], true);
    // Days of 0 keep everything.
    let forever = Retention { build_logs_days: 0, artifacts_days: 0, ..retention };
    let other = running(&app, "MOB-2").await;
    assert_eq!(chunk(&app, other, "mac-1", 1, 0, b"log").await.status(), 200);
    assert_eq!(forever.sweep_once(SystemTime::now() + 3650 * day).await.unwrap(), Swept::default());
    assert!(!app.dir.path().join(format!("data/artifacts/{build}")).exists());
    let list: Value = app.get(&format!("/api/v1/builds/{build}/artifacts")).await.json().await.unwrap();
    assert_eq!(list["artifacts"], json!([]));
    let gone =
        app.client.get(app.url(&format!("/api/v1/builds/{build}/artifacts/App.ipa"))).bearer_auth(&app.admin_token);
    let gone = gone.send().await.unwrap();
    assert_eq!(gone.status(), 404);
    assert!(gone.text().await.unwrap().contains("artifacts_days"));
    // The view still says what there was.
    let detail: Value = app.get(&format!("/api/v1/builds/{build}")).await.json().await.unwrap();
    assert_eq!(detail["build"]["artifacts"][0]["removed"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_artifacts_survive_a_restart_and_a_rebuild_of_the_projections() {
    let app = spawn_app().await;
    let build = running(&app, "MOB-1").await;
    let sha = sha256(b"ipa");
    assert_eq!(put_artifact(&app, build, "mac-1", "logs/xcodebuild.log", &sha, &b"ipa"[..]).await.status(), 200);
    let failed = json!({"node_id": "mac-1", "attempt": 1, "outcome": "failed", "reason": "script_failed",
        "exit_code": 70, "duration_ms": 1000, "log_tail": "Failed to boot simulator\n",
        "retry_rule": "Failed to boot simulator"});
    let answer = app.node_post(&format!("/api/v1/builds/{build}/result"), failed.clone()).await;
    assert_eq!(answer.json::<Value>().await.unwrap()["state"], "queued");
    // The same result again (its answer was lost): answered, not recorded twice.
    let again = app.node_post(&format!("/api/v1/builds/{build}/result"), failed).await;
    assert_eq!(again.json::<Value>().await.unwrap()["duplicate"], true);
    assert_eq!(app.count("BuildRetryScheduled").await, 1);
    let claim = app.claim("mac-2", &[], 1, 0).await.expect("the retry, claimed by another node");
    assert_eq!(claim["attempt"], 2);

    let app = app.restart().await;
    let detail: Value = app.get(&format!("/api/v1/builds/{build}")).await.json().await.unwrap();
    assert_eq!(detail["build"]["retries"][0]["rule"], "Failed to boot simulator");
    assert_eq!(detail["build"]["retries"][0]["node_id"], "mac-1");
    assert_eq!(detail["build"]["artifacts"][0]["name"], "logs/xcodebuild.log");
    assert_eq!(detail["build"]["state"]["state"], "running");
    let list: Value = app.get(&format!("/api/v1/builds/{build}/artifacts")).await.json().await.unwrap();
    assert_eq!(list["artifacts"].as_array().unwrap().len(), 1);
    assert_eq!(app.live().await, app.rebuilt().await, "the projections rebuilt from the log are the live ones");
}
