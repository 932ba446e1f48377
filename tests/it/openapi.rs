//! `GET /api/openapi.json`: the API's schema, generated from the handlers, and schemathesis run
//! from it against a live gateway (no 5xx; every status, content type and body as documented).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::helpers::*;
use crate::process::{start, token, with_tls, write_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_is_openapi_3_1_and_every_documented_operation_demands_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![ios_trigger()]);
    // One request without a token per operation, more than the default limit of bad tokens a
    // minute from one address: each must be refused as unauthorized, not as too many.
    config.webhook.max_bad_tokens_per_minute = 0;
    let app = spawn_with(dir, config).await;
    let schema: Value = reqwest::get(app.url("/api/openapi.json")).await.unwrap().json().await.unwrap();
    assert_eq!(schema["openapi"], "3.1.0");
    let paths = schema["paths"].as_object().unwrap();
    assert!(paths.len() >= 19, "{paths:?}");
    for (path, operations) in paths {
        for (method, operation) in operations.as_object().unwrap() {
            assert!(operation["security"].is_array(), "{method} {path} names no security");
            let url = app.url(&path.replace("{id}", "01a228b8-da99-7354-b32e-0c0eb7bbfeae"));
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let answer = app.client.request(method.clone(), &url).json(&json!({})).send().await.unwrap();
            assert_eq!(answer.status(), 401, "{method} {path} without a token");
            let body: Value = answer.json().await.unwrap();
            assert_eq!(body["error"], "unauthorized", "{method} {path}");
        }
    }
    for name in ["BuildView", "BuildState", "ErrorBody", "AuditEvent", "ClaimRequest", "ResultRequest"] {
        assert!(schema["components"]["schemas"].get(name).is_some(), "no {name}");
    }
}

/// The schemathesis CLI: `MESHGATE_SCHEMATHESIS`, or the venv `scripts/test.sh` provisions.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("MESHGATE_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/schemathesis-venv/bin/schemathesis");
    assert!(
        venv.exists(),
        "schemathesis is not provisioned: run ./scripts/test.sh (it installs target/schemathesis-venv)"
    );
    venv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    // One token for the admin and the node API, so one header reaches every operation; claims
    // answer at once.
    // Over HTTPS, as deployed.
    let toml = std::fs::read_to_string(&config)
        .unwrap()
        .replace("token_file = \"admin.token\"", "token_file = \"nodes.token\"")
        .replace("[nodes]\n", "[nodes]\nclaim_wait_seconds = 0\n");
    std::fs::write(&config, with_tls(dir.path(), &toml)).unwrap();
    let gateway = start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    assert_eq!(gateway.scheme, "https");
    let api_token = token(dir.path(), "nodes.token");
    let ca_file = crate::pki::pki().ca_file.clone();
    let client = meshgate::tls::client(reqwest::Client::builder(), Some(&ca_file)).unwrap();

    // Something for the operations on one build and one node to find: three builds, one running.
    let building = fixture("mob-issueUpdated-state-building.json");
    let mut builds = Vec::new();
    for issue in ["MOB-1", "MOB-2", "MOB-3"] {
        let delivery = client
            .post(gateway.url("/youtrack/webhook"))
            .header("X-YouTrack-Token", token(dir.path(), "webhook.token"))
            .header("Content-Type", "application/json")
            .body(with(&building, &json!({"id": issue})));
        builds.push(build_id(&answer_of(delivery).await));
    }
    let claim = json!({"node_id": "mac-1", "labels": ["xcode-16"], "slots": 2});
    let claimed = client.post(gateway.url("/api/v1/nodes/claim")).bearer_auth(&api_token).json(&claim);
    assert_eq!(answer_of(claimed).await["build"]["build_id"], builds[0].to_string());

    let base = gateway.url("");
    let build = builds[0].to_string();
    let settings = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis/schemathesis.toml");
    let work = dir.path().join("schemathesis");
    std::fs::create_dir_all(&work).unwrap();
    let run = tokio::task::spawn_blocking(move || {
        // Run in a folder of its own: schemathesis keeps a cache where it runs.
        std::process::Command::new(schemathesis())
            .current_dir(&work)
            .arg("--config-file")
            .arg(&settings)
            .args(["run", &format!("{base}/api/openapi.json"), "--exclude-path", "/api/v1/events/stream"])
            // Bounded: a fixed seed and a few examples per operation (a few seconds); longer runs
            // are documented in docs/operations.md.
            .args(["--max-examples", "25", "--seed", "20261129", "--phases", "examples,coverage,fuzzing"])
            .arg("--no-color")
            .arg("--tls-verify")
            .arg(&ca_file)
            .env("MESHGATE_API_TOKEN", &api_token)
            .env("MESHGATE_BUILD_ID", &build)
            .env("MESHGATE_NODE_ID", "mac-1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "schemathesis failed:\n{said}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(said.contains("Tested:"), "{said}");
    gateway.stop();
}
