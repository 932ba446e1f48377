//! Fixture-driven scenarios: `fixtures/scenarios/*.json` are sequences of deliveries (and build
//! results) with the outcome of each, the whole event log, and snapshots of the projections.
//! For every scenario, the live projections equal a rebuild from position 0, before and after a
//! restart.

use meshgate::config::StoreBackend;
use std::collections::{BTreeMap, HashMap};

use meshgate_domain::build::BuildCommand;
use meshgate_domain::stream::build_stream;
use meshgate_domain::Trigger;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    #[allow(dead_code)]
    description: String,
    triggers: Vec<Trigger>,
    steps: Vec<Step>,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Step {
    Deliver { deliver: String, set: Option<Value>, expect: StepExpect },
    Finish { finish: String, succeeded: bool },
    Cancel { cancel: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepExpect {
    outcome: String,
    reason: Option<String>,
    build: Option<String>,
    builds: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    events: Vec<String>,
    builds: Vec<BuildExpect>,
    queue: Vec<String>,
    active_intents: BTreeMap<String, String>,
    fingerprints: usize,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct BuildExpect {
    build: String,
    /// Its trigger and number (`ios-build #2`).
    name: String,
    issue: String,
    git_ref: String,
    state: String,
    folds: Vec<String>,
}

/// Build aliases (`b1`) bound to the ids the gateway chose, in the order they first appear.
#[derive(Default)]
struct Aliases(HashMap<String, Uuid>);

impl Aliases {
    fn bind(&mut self, alias: &str, id: Uuid, context: &str) {
        let bound = *self.0.entry(alias.to_owned()).or_insert(id);
        assert_eq!(bound, id, "{context}: {alias} is another build");
    }

    fn id(&self, alias: &str) -> Uuid {
        self.0[alias]
    }

    fn alias(&self, id: Uuid) -> String {
        self.0.iter().find(|(_, v)| **v == id).map(|(k, _)| k.clone()).unwrap_or_else(|| id.to_string())
    }
}

/// Runs one scenario on the embedded log, or on a fresh PostgreSQL database (`shared`).
async fn run(path: &std::path::Path, backend: StoreBackend) {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let scenario: Scenario = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect(&name);
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), scenario.triggers.clone());
    config.store.backend = backend;
    match backend {
        StoreBackend::Sqlite => {}
        StoreBackend::Postgres => config.store.url = Some(crate::postgres::database().await),
        #[cfg(not(feature = "eventstoredb"))]
        StoreBackend::EventStoreDb => unreachable!("the EventStoreDB scenarios need the eventstoredb feature"),
        #[cfg(feature = "eventstoredb")]
        StoreBackend::EventStoreDb => {
            config.store.url = Some(crate::esdb::server().await.url);
            config.store.stream_prefix = crate::helpers::fresh_prefix();
        }
    }
    let priorities: std::collections::HashMap<String, i64> =
        config.lanes.iter().map(|l| (l.name.clone(), l.priority)).collect();
    let app = spawn_with(dir, config).await;
    let mut aliases = Aliases::default();

    for (i, step) in scenario.steps.iter().enumerate() {
        let context = format!("{name} step {i}");
        match step {
            Step::Deliver { deliver, set, expect } => {
                let mut body = fixture(deliver);
                if let Some(set) = set {
                    body = with(&body, set);
                }
                let answer = app.deliver(&body).await;
                assert_eq!(answer["outcome"], expect.outcome.as_str(), "{context}: {answer}");
                if let Some(reason) = &expect.reason {
                    assert_eq!(answer["reason"], reason.as_str(), "{context}");
                }
                let ids: Vec<Uuid> = answer["build_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| Uuid::parse_str(v.as_str().unwrap()).unwrap())
                    .collect();
                let expected: Vec<String> =
                    expect.builds.clone().or_else(|| expect.build.clone().map(|b| vec![b])).unwrap_or_default();
                assert_eq!(ids.len(), expected.len(), "{context}: {answer}");
                for (alias, id) in expected.iter().zip(ids) {
                    aliases.bind(alias, id, &context);
                }
            }
            Step::Finish { finish, succeeded } => app.finish_build(aliases.id(finish), *succeeded).await,
            Step::Cancel { cancel } => {
                let id = aliases.id(cancel);
                app.apply_command(&build_stream(id), id, BuildCommand::Cancel { reason: "superseded".into() }).await;
            }
        }
    }

    let types: Vec<String> = app.all_events().await.into_iter().map(|e| e.event_type).collect();
    assert_eq!(types, scenario.expect.events, "{name}: event log");

    let live = app.live().await;
    let builds: Vec<BuildExpect> = live
        .builds
        .iter()
        .map(|b| BuildExpect {
            build: aliases.alias(b.build_id),
            name: b.name(),
            issue: b.issue_id.clone(),
            git_ref: b.git_ref.clone(),
            state: b.state.name().to_owned(),
            folds: b
                .folds
                .iter()
                .map(|f| serde_json::to_value(f.reason).unwrap().as_str().unwrap().to_owned())
                .collect(),
        })
        .collect();
    assert_eq!(builds, scenario.expect.builds, "{name}: builds projection");
    let queue: Vec<String> = live.queue.ordered(&priorities).iter().map(|e| aliases.alias(e.build_id)).collect();
    assert_eq!(queue, scenario.expect.queue, "{name}: queue projection");
    // The active build of each intent, and the changes seen (a `delivery-` stream each).
    let intents: BTreeMap<String, String> = live
        .builds
        .iter()
        .filter(|b| b.state.is_active())
        .map(|b| (b.intent_key.clone(), aliases.alias(b.build_id)))
        .collect();
    assert_eq!(intents, scenario.expect.active_intents, "{name}: active intents");
    let fingerprints: std::collections::BTreeSet<String> =
        app.all_events().await.into_iter().map(|e| e.stream).filter(|s| s.starts_with("delivery-")).collect();
    assert_eq!(fingerprints.len(), scenario.expect.fingerprints, "{name}: fingerprints");

    assert_eq!(live, app.rebuilt().await, "{name}: rebuilt projections differ from live ones");
    let app = app.restart().await;
    assert_eq!(app.live().await, live, "{name}: projections changed across a restart");
}

fn scenarios() -> Vec<std::path::PathBuf> {
    let dir = fixtures().join("scenarios");
    let mut paths: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.retain(|p| p.extension().is_some_and(|e| e == "json"));
    paths.sort();
    assert!(paths.len() >= 4, "scenarios missing from {}", dir.display());
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_produces_its_expected_log_and_projections() {
    for path in scenarios() {
        run(&path, StoreBackend::Sqlite).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_produces_its_expected_log_and_projections_on_postgres() {
    for path in scenarios() {
        run(&path, StoreBackend::Postgres).await;
    }
}

#[cfg(feature = "eventstoredb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_produces_its_expected_log_and_projections_on_eventstoredb() {
    for path in scenarios() {
        run(&path, StoreBackend::EventStoreDb).await;
    }
}
