//! `meshgate log archive` beside a gateway process taking deliveries: the streams of builds that
//! finished before the cut leave the live log for a checksummed archive, nothing of an unfinished
//! build or an undecided notification goes, every delivery acknowledged meanwhile stays, and the
//! log with its archives rebuilds to the saved read model; damaged archives and bad cuts are
//! refused with nothing changed.

use std::path::Path;
use std::process::{Command, Output};

use chrono::{Duration, Utc};
use meshgate::store::sqlite::{SqliteStore, WriterOptions};
use meshgate::store::{EventStore, NewEvent, StreamAppend};
use meshgate_domain::event::{BuildRequested, NotificationAttempted};
use meshgate_domain::notify::Milestone;
use meshgate_domain::stream::{build_stream, notification_stream};
use meshgate_domain::{Event, ExpectedVersion};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;
use crate::process::{start, token, write_config, BIN};

fn meshgate(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN).arg("--config").arg(config).args(args).output().unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The `--json` lines `meshgate events` prints for `args`.
fn events(config: &Path, args: &[&str]) -> Vec<Value> {
    let out = meshgate(config, &[&["events", "--json"], args].concat());
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Appends, ten days ago, a build still queued and a finished build of `seed_history`'s whose
/// notification is still being retried; returns the queued one.
async fn seed_kept(log: &Path, undecided: Uuid) -> Uuid {
    let store = SqliteStore::open(log, WriterOptions::default()).unwrap();
    let at = Utc::now() - Duration::days(10);
    let queued = Uuid::now_v7();
    let requested = BuildRequested {
        build_id: queued,
        issue_id: "MOB-900".into(),
        project: "MOB".into(),
        summary: None,
        trigger: "ios-build".into(),
        script: "ios-build".into(),
        lane: "default".into(),
        git_ref: "main".into(),
        requested_by: None,
        intent_key: "MOB-900/ios-build".into(),
        correlation_id: queued,
        requested_at: at,
        transition_at: None,
        source: Default::default(),
        xcode: None,
        rebuild_of: None,
    };
    let key = format!("slack/{undecided}/succeeded");
    let attempted = NotificationAttempted {
        key: key.clone(),
        sink: "slack".into(),
        build_id: undecided,
        milestone: Milestone::Succeeded,
        attempt: 1,
        status: Some(503),
        excerpt: "busy".into(),
        next_attempt_at: Some(at + Duration::minutes(1)),
    };
    for (stream, event) in [
        (build_stream(queued), Event::BuildRequested(requested)),
        (notification_stream(&key), Event::NotificationAttempted(attempted)),
    ] {
        let append = StreamAppend {
            stream,
            expected: ExpectedVersion::Any,
            events: vec![NewEvent::from_domain(&event, Uuid::now_v7(), None, at)],
        };
        store.append(vec![append]).await.unwrap();
    }
    queued
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_builds_before_the_cut_move_to_an_archive_beside_a_serving_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let log = dir.path().join("data/events.sqlite");
    crate::stats::seed_history(&log, 14).await;
    // The builds of the seed's days: six a day; ten days ago, the second one.
    let undecided_day = (Utc::now() - Duration::days(10)).date_naive().to_string();
    let undecided = {
        let seeded = events_of_type(&config, "BuildRequested");
        let on_day: Vec<&Value> =
            seeded.iter().filter(|e| e["recorded_at"].as_str().unwrap().starts_with(&undecided_day)).collect();
        assert_eq!(on_day.len(), 6);
        on_day[1]["data"]["build_id"].as_str().unwrap().parse::<Uuid>().unwrap()
    };
    let queued = seed_kept(&log, undecided).await;
    let before = events_of_type(&config, "BuildRequested").len();

    let gateway = start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    let webhook = token(dir.path(), "webhook.token");
    let building = fixture("mob-issueUpdated-state-building.json");
    let url = gateway.url("/youtrack/webhook");
    // Deliveries keep coming while the archive runs; each one acknowledged must stay.
    let load = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut acknowledged = Vec::new();
        for n in 0..120 {
            let body = with(&building, &json!({"id": format!("MOB-{}", 1000 + n)}));
            let answer = client
                .post(&url)
                .header("X-YouTrack-Token", &webhook)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 200);
            acknowledged.push(answer.json::<Value>().await.unwrap()["correlation_id"].as_str().unwrap().to_owned());
        }
        acknowledged
    });

    // The cut: midnight a week ago. Days 8 to 14 ago are before it (42 builds), less the one whose
    // notification is undecided; the queued one stays too.
    let cut = (Utc::now() - Duration::days(7)).date_naive().to_string();
    let archives = dir.path().join("archives");
    let dry = meshgate(&config, &["log", "archive", "--before", &cut, "--to", archives.to_str().unwrap(), "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains("would archive 41 builds"), "{}", text(&dry));
    assert!(!archives.exists(), "a dry run writes nothing");
    let archived = tokio::task::spawn_blocking({
        let (config, archives, cut) = (config.clone(), archives.clone(), cut.clone());
        move || meshgate(&config, &["log", "archive", "--before", &cut, "--to", archives.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert!(archived.status.success(), "{}", text(&archived));
    let said = text(&archived);
    assert!(said.contains("archived 41 builds"), "{said}");
    assert!(said.contains(", 1 with a notification not yet decided"), "{said}");
    let acknowledged = load.await.unwrap();

    // The live log: the archived builds gone, the kept ones and every acknowledged delivery there.
    let live = events_of_type(&config, "BuildRequested");
    assert_eq!(live.len(), before + acknowledged.len() - 41, "only the 41 archived builds left");
    let named = |events: &[Value], id: Uuid| events.iter().any(|e| e["data"]["build_id"] == id.to_string());
    assert!(named(&live, queued) && named(&live, undecided));
    for correlation in &acknowledged {
        let found = events(&config, &["--correlation", correlation]);
        assert!(found.iter().any(|e| e["type"] == "BuildRequested"), "{correlation}");
    }
    let old = live.iter().filter(|e| e["recorded_at"].as_str().unwrap() < cut.as_str()).count();
    assert_eq!(old, 2, "before the cut, only the queued build and the undecided one are left");

    // The archive: a file and its checksum, private, readable beside the live log.
    let files: Vec<_> = std::fs::read_dir(&archives).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(files.len(), 2, "{files:?}");
    let archive = archives.join(files.iter().find(|f| f.to_str().unwrap().ends_with(".jsonl.gz")).unwrap());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777, 0o600);
    let archive_arg = archives.to_str().unwrap();
    let all = events(&config, &["--type", "BuildRequested", "--include-archives", archive_arg]);
    assert_eq!(all.len(), live.len() + 41);
    let positions: Vec<u64> = all.iter().map(|e| e["position"].as_u64().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "in log order, each once");

    // A second run finds nothing more.
    let again = meshgate(&config, &["log", "archive", "--before", &cut, "--to", archive_arg]);
    assert!(again.status.success() && text(&again).contains("nothing to archive"), "{}", text(&again));

    // The saved read model still knows the archived builds: a rebuild of the live log alone
    // differs (and says why), one with the archives matches.
    gateway.stop();
    let alone = meshgate(&config, &["projections", "rebuild", "--verify"]);
    assert!(!alone.status.success());
    assert!(text(&alone).contains("--include-archives"), "{}", text(&alone));
    let with = meshgate(&config, &["projections", "rebuild", "--verify", "--include-archives", archive_arg]);
    assert!(with.status.success(), "{}", text(&with));

    damaged_archives_and_bad_cuts_are_refused(&config, &archives, &archive, &log);
}

fn events_of_type(config: &Path, event_type: &str) -> Vec<Value> {
    events(config, &["--type", event_type])
}

fn damaged_archives_and_bad_cuts_are_refused(config: &Path, archives: &Path, archive: &Path, log: &Path) {
    let log_bytes = std::fs::read(log).unwrap();
    let refused = |args: &[&str], says: &str| {
        let out = meshgate(config, args);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    };
    let to = archives.to_str().unwrap();
    let tomorrow = (Utc::now() + Duration::days(1)).date_naive().to_string();
    refused(&["log", "archive", "--before", &tomorrow, "--to", to], "is in the future");
    refused(&["log", "archive", "--older-than", "0d", "--to", to], "expected a number of days");
    refused(&["log", "archive", "--older-than", "2w", "--to", to], "expected a number of days");
    refused(&["log", "archive", "--before", "last-year", "--to", to], "expected a day");
    refused(&["log", "archive", "--to", to], "--before");
    assert_eq!(std::fs::read(log).unwrap(), log_bytes, "nothing changed in the log");

    let bad = archives.parent().unwrap().join("bad");
    let copy = |name: &str, bytes: &[u8], sum: Option<&[u8]>| {
        let _ = std::fs::remove_dir_all(&bad);
        std::fs::create_dir_all(&bad).unwrap();
        let file = bad.join(name);
        std::fs::write(&file, bytes).unwrap();
        if let Some(sum) = sum {
            std::fs::write(format!("{}.sha256", file.display()), sum).unwrap();
        }
    };
    let name = archive.file_name().unwrap().to_str().unwrap();
    let bytes = std::fs::read(archive).unwrap();
    let sum = std::fs::read(format!("{}.sha256", archive.display())).unwrap();
    let read = ["events", "--include-archives", bad.to_str().unwrap()];
    // Cut short: the checksum says so.
    copy(name, &bytes[..bytes.len() / 2], Some(&sum));
    refused(&read, "does not match its checksum");
    // Cut short, its checksum made to match: gzip says so, with the line.
    let half = &bytes[..bytes.len() / 2];
    let digest = sha256_hex(half);
    copy(name, half, Some(format!("{digest}  {name}\n").as_bytes()));
    refused(&read, &format!("{name}, line"));
    // No checksum beside it.
    copy(name, &bytes, None);
    refused(&read, "has no checksum beside it");
    // A folder that holds no archive.
    std::fs::remove_dir_all(&bad).unwrap();
    std::fs::create_dir_all(&bad).unwrap();
    refused(&read, "holds no archives");
    refused(&["projections", "rebuild", "--verify", "--include-archives", bad.to_str().unwrap()], "holds no archives");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The same beside a gateway on a PostgreSQL log (the seed's history copied there with `store
/// migrate`); an EventStoreDB log is refused with what to do instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_log_is_archived_beside_its_gateway_and_rebuilds_with_its_archives() {
    let source = tempfile::tempdir().unwrap();
    let source_config = write_config(source.path());
    std::fs::create_dir_all(source.path().join("data")).unwrap();
    crate::stats::seed_history(&source.path().join("data/events.sqlite"), 10).await;

    let dir = tempfile::tempdir().unwrap();
    for name in ["webhook.token", "admin.token", "nodes.token"] {
        std::fs::copy(source.path().join(name), dir.path().join(name)).unwrap();
    }
    crate::pki::write_private(&dir.path().join("log.url"), &crate::postgres::database().await);
    let toml = std::fs::read_to_string(&source_config).unwrap();
    let config = dir.path().join("meshgate.toml");
    std::fs::write(&config, format!("{toml}\n[store]\nbackend = \"postgres\"\nurl_file = \"log.url\"\n")).unwrap();
    let moved = meshgate(&source_config, &["store", "migrate", "--to-config", config.to_str().unwrap()]);
    assert!(moved.status.success(), "{}", text(&moved));

    let gateway = start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    let client = reqwest::Client::new();
    let building = fixture("mob-issueUpdated-state-building.json");
    for n in 0..5 {
        let answer = client
            .post(gateway.url("/youtrack/webhook"))
            .header("X-YouTrack-Token", token(dir.path(), "webhook.token"))
            .header("Content-Type", "application/json")
            .body(with(&building, &json!({"id": format!("MOB-{}", 2000 + n)})))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    let before = events_of_type(&config, "BuildRequested").len();
    let cut = (Utc::now() - Duration::days(7)).date_naive().to_string();
    let archives = dir.path().join("archives");
    let to = archives.to_str().unwrap();
    let archived = meshgate(&config, &["log", "archive", "--before", &cut, "--to", to]);
    assert!(archived.status.success(), "{}", text(&archived));
    assert!(text(&archived).contains("archived 18 builds"), "days 8 to 10 ago: {}", text(&archived));
    assert_eq!(events_of_type(&config, "BuildRequested").len(), before - 18);
    assert_eq!(events(&config, &["--type", "BuildRequested", "--include-archives", to]).len(), before);
    gateway.stop();
    let with = meshgate(&config, &["projections", "rebuild", "--verify", "--include-archives", to]);
    assert!(with.status.success(), "{}", text(&with));

    let esdb = dir.path().join("esdb.toml");
    std::fs::write(&esdb, format!("{toml}\n[store]\nbackend = \"eventstoredb\"\nurl_file = \"log.url\"\n")).unwrap();
    let refused = meshgate(&esdb, &["log", "archive", "--older-than", "90d", "--to", to]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("$maxAge"), "{}", text(&refused));
}
