//! A new release whose projections changed: the gateway finds a read model saved by an older
//! projection version and rebuilds it from the log before `/readyz` answers 200
//! (docs/adr/0003-projection-checkpoints.md).

use serde_json::{json, Value};

use crate::helpers::*;
use crate::process::{start, token, write_config};

/// A gateway in `dir` that starts a build for each of `issues`, then stops.
async fn start_builds(dir: &std::path::Path, args: &[&str], webhook: &str, issues: &[&str]) {
    let gateway = start(dir, args, &[]);
    let building = fixture("mob-issueUpdated-state-building.json");
    for issue in issues {
        let answer = reqwest::Client::new()
            .post(gateway.url("/youtrack/webhook"))
            .header("X-YouTrack-Token", webhook)
            .header("Content-Type", "application/json")
            .body(with(&building, &json!({"id": issue})))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    gateway.stop();
}

/// The issues of the builds `GET /api/v1/builds` lists, sorted.
async fn issues_listed(client: &reqwest::Client, gateway: &crate::process::Gateway, admin: &str) -> Vec<String> {
    let listed: Value =
        client.get(gateway.url("/api/v1/builds")).bearer_auth(admin).send().await.unwrap().json().await.unwrap();
    let mut issues: Vec<String> = listed["builds"]
        .as_array()
        .unwrap_or_else(|| panic!("{listed}"))
        .iter()
        .map(|b| b["issue_id"].as_str().unwrap().to_owned())
        .collect();
    issues.sort();
    issues
}

#[tokio::test]
async fn a_gateway_on_a_read_model_of_an_older_projection_version_rebuilds_it_before_it_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let args = ["--config", config.to_str().unwrap()];
    let client = reqwest::Client::new();
    let (webhook, admin) = (token(dir.path(), "webhook.token"), token(dir.path(), "admin.token"));

    start_builds(dir.path(), &args, &webhook, &["MOB-1", "MOB-2", "MOB-3"]).await;

    // What an older release left: its builds projection one version behind, and a view of a
    // build it folded differently (here: none at all for MOB-2).
    let readmodel = dir.path().join("data/events.readmodel.sqlite");
    let conn = rusqlite::Connection::open(&readmodel).unwrap();
    assert_eq!(conn.execute("UPDATE versions SET version = version - 1 WHERE name = 'builds'", []).unwrap(), 1);
    assert_eq!(conn.execute("DELETE FROM builds WHERE issue_id = 'MOB-2'", []).unwrap(), 1);
    drop(conn);

    let gateway = start(dir.path(), &args, &[]);
    let ready = client.get(gateway.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["projections"]["caught_up"], true);
    assert_eq!(issues_listed(&client, &gateway, &admin).await, ["MOB-1", "MOB-2", "MOB-3"], "rebuilt from the log");
    gateway.stop();

    let said = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(said.contains("rebuilding it from the log"), "{said}");
    // Saved again under today's versions: the next start trusts it.
    let conn = rusqlite::Connection::open(&readmodel).unwrap();
    let versions: Vec<(String, u32)> = conn
        .prepare("SELECT name, version FROM versions ORDER BY name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut today: Vec<(String, u32)> =
        meshgate_projections::ProjectionSet::VERSIONS.iter().map(|(n, v)| (n.to_string(), *v)).collect();
    today.sort();
    assert_eq!(versions, today);
}

#[tokio::test]
async fn a_read_model_of_another_layout_is_removed_and_built_again_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let args = ["--config", config.to_str().unwrap()];
    let client = reqwest::Client::new();
    let (webhook, admin) = (token(dir.path(), "webhook.token"), token(dir.path(), "admin.token"));

    start_builds(dir.path(), &args, &webhook, &["MOB-1", "MOB-2"]).await;

    // A file an earlier release wrote (no layout number), whose projection versions match
    // today's: only its layout says it cannot be read as it is. One of its builds is taken out,
    // so a gateway that kept it would list one build.
    let readmodel = dir.path().join("data/events.readmodel.sqlite");
    let conn = rusqlite::Connection::open(&readmodel).unwrap();
    conn.pragma_update(None, "user_version", 0).unwrap();
    assert_eq!(conn.execute("DELETE FROM builds WHERE issue_id = 'MOB-2'", []).unwrap(), 1);
    drop(conn);

    let gateway = start(dir.path(), &args, &[]);
    assert_eq!(client.get(gateway.url("/readyz")).send().await.unwrap().status(), 200);
    assert_eq!(issues_listed(&client, &gateway, &admin).await, ["MOB-1", "MOB-2"], "built again from the log");
    gateway.stop();

    let said = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(said.contains("of another layout"), "{said}");
    let conn = rusqlite::Connection::open(&readmodel).unwrap();
    assert_eq!(
        conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0)).unwrap(),
        meshgate::readmodel::LAYOUT
    );
}
