//! What each fuzz target checks, callable from the targets and from the tests below (which run
//! every seed on a stable toolchain, so the targets cannot rot).

use std::sync::OnceLock;

use meshgate_domain::Event;

/// The payload parser: any bytes are parsed or refused, never a panic; a parsed delivery's
/// fingerprint is the same when the body is parsed again; a body read for the log is stored in a
/// `WebhookReceived` that reads back to the same bytes.
pub fn payload(data: &[u8]) {
    if let Ok((fingerprint, delivery)) = meshgate_domain::payload::parse_bytes(data) {
        let (again, _) = meshgate_domain::payload::parse_bytes(data).expect("a body parsed once parses again");
        assert_eq!(fingerprint, again);
        assert!(!delivery.issue_id.is_empty());
        let text = std::str::from_utf8(data).expect("a body parsed is text");
        let read = meshgate_domain::payload::read(text).expect("a body parsed is read");
        let received = Event::WebhookReceived(meshgate_domain::event::WebhookReceived {
            correlation_id: uuid::Uuid::nil(),
            event_type: delivery.event.as_str().to_owned(),
            issue_id: delivery.issue_id,
            project: delivery.project,
            fingerprint: fingerprint.to_string(),
            body: read.body,
            received_at: chrono::DateTime::UNIX_EPOCH,
        });
        let stored = received.encode();
        let back = Event::decode("WebhookReceived", Event::SCHEMA_VERSION, &stored).expect("a stored body decodes");
        assert_eq!(back, received);
    }
}

/// Event decoding: the first byte picks a type, the rest is its data; what decodes re-encodes to
/// data that decodes to the same event.
pub fn event_decode(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else { return };
    let event_type = Event::TYPES[pick as usize % Event::TYPES.len()];
    let Ok(text) = std::str::from_utf8(rest) else { return };
    if let Ok(event) = Event::decode(event_type, Event::SCHEMA_VERSION, text) {
        let again = Event::decode(event_type, Event::SCHEMA_VERSION, &event.encode()).expect("re-encoded data decodes");
        assert_eq!(event, again);
    }
}

/// The node API's bodies: read or refused, never a panic.
pub fn node_bodies(data: &[u8]) {
    use meshgate_domain::node_api::{ClaimRequest, HeartbeatRequest, ResultRequest};
    let _ = serde_json::from_slice::<ClaimRequest>(data);
    let _ = serde_json::from_slice::<HeartbeatRequest>(data);
    let _ = serde_json::from_slice::<ResultRequest>(data);
}

struct Gateway {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    token: String,
    /// Kept for the whole process (a static is never dropped): the tests remove it at their end; a
    /// fuzzing run leaves it behind (`/dev/shm/.tmp…`).
    #[cfg_attr(not(test), allow(dead_code))]
    dir: tempfile::TempDir,
}

fn gateway() -> &'static Gateway {
    static GATEWAY: OnceLock<Gateway> = OnceLock::new();
    GATEWAY.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // On tmpfs when there is one: every accepted delivery is a durable commit.
        let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
        let dir = tempfile::tempdir_in(base).unwrap();
        let mut config = meshgate::config::Config::default();
        config.server.data_dir = dir.path().join("data");
        config.metrics.listen = String::new();
        config.reconcile.interval_seconds = 0;
        let token_file = dir.path().join("webhook.token");
        for other in ["admin.token", "nodes.token"] {
            meshgate::secrets::generate_token_file(&dir.path().join(other), 0o400).unwrap();
        }
        config.admin.token_file = Some(dir.path().join("admin.token"));
        config.nodes.token_file = Some(dir.path().join("nodes.token"));
        meshgate::secrets::generate_token_file(&token_file, 0o400).unwrap();
        config.webhook.token_files = vec![token_file.clone()];
        config.triggers = meshgate::config::Config::sample_triggers();
        let app = runtime.block_on(meshgate::app::App::start(&config)).unwrap();
        let token = std::fs::read_to_string(&token_file).unwrap().trim().to_owned();
        Gateway { runtime, router: app.router.clone(), token, dir }
    })
}

/// The webhook through the real router (token, size, media type, parser, ingest, the log): any
/// body is answered 200, 400 or 413, never a 5xx or a panic.
pub fn webhook(data: &[u8]) {
    use tower::ServiceExt;
    let gateway = gateway();
    let request = axum::http::Request::post("/youtrack/webhook")
        .header("X-YouTrack-Token", &gateway.token)
        .header("Content-Type", "application/json")
        .body(axum::body::Body::from(data.to_vec()))
        .unwrap();
    let answer = gateway.runtime.block_on(gateway.router.clone().oneshot(request)).unwrap();
    let status = answer.status().as_u16();
    assert!(matches!(status, 200 | 400 | 413), "a body was answered {status}");
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every seed: the fixtures' bodies, the hostile table's bodies, and the corpus if one exists.
    fn seeds() -> Vec<Vec<u8>> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
        let mut seeds = Vec::new();
        for dir in ["youtrack", "youtrack/malformed"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let path = entry.unwrap().path();
                if path.is_file() {
                    seeds.push(std::fs::read(path).unwrap());
                }
            }
        }
        let table: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("hostile/webhook.json")).unwrap()).unwrap();
        for case in table["cases"].as_array().unwrap() {
            if let Some(text) = case["body"]["text"].as_str() {
                seeds.push(text.as_bytes().to_vec());
            }
        }
        assert!(seeds.len() > 40);
        seeds
    }

    #[test]
    fn every_seed_passes_every_target() {
        for seed in seeds() {
            super::payload(&seed);
            super::node_bodies(&seed);
            for pick in 0..=255u8 {
                super::event_decode(&[&[pick][..], &seed].concat());
            }
            super::webhook(&seed);
        }
        let _ = std::fs::remove_dir_all(super::gateway().dir.path());
    }
}
