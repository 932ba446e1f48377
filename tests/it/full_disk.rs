//! A full disk: the log cannot grow. Webhooks are answered 503 and append nothing, nothing
//! accepted before is lost, and once space returns the gateway takes deliveries again without a
//! restart. The data dir is a small tmpfs mounted by the test (it needs root, as the test command
//! runs in CI; elsewhere the test says so and does nothing).

use std::path::{Path, PathBuf};
use std::process::Command;

use meshgate::store::sqlite::query;
use meshgate::store::EventFilter;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::process::{start, token, write_config, BIN};

/// A tmpfs mounted for the test, unmounted when it ends.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path, size: &str) -> Option<Mounted> {
    std::fs::create_dir_all(at).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).status();
    matches!(mounted, Ok(s) if s.success()).then(|| Mounted(at.to_owned()))
}

/// Fills the file system holding `dir` with one file until nothing more fits.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 64 << 10];
    while file.write_all(&block).is_ok() {}
    let small = [0u8; 512];
    while file.write_all(&small).is_ok() {}
    let _ = file.sync_all();
    filler
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_deliveries_loses_nothing_and_recovers_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let Some(disk) = mount_tmpfs(&dir.path().join("disk"), "48m") else {
        assert!(!root, "root could not mount a tmpfs");
        eprintln!("full_disk: mounting a tmpfs needs root: not run here (the test command runs it in CI, as root)");
        return;
    };
    let config = write_config(dir.path());
    let toml = std::fs::read_to_string(&config).unwrap().replacen(
        "data_dir = \"data\"",
        &format!("data_dir = \"{}\"", disk.0.join("data").display()),
        1,
    );
    std::fs::write(&config, toml).unwrap();
    let gateway = start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    let webhook = token(dir.path(), "webhook.token");
    let admin = token(dir.path(), "admin.token");
    let client = reqwest::Client::new();
    let building = fixture("mob-issueUpdated-state-building.json");
    let post = |issue: String| {
        client
            .post(gateway.url("/youtrack/webhook"))
            .header("X-YouTrack-Token", &webhook)
            .header("Content-Type", "application/json")
            .body(with(&building, &json!({"id": issue})))
            .send()
    };

    let mut accepted = Vec::new();
    for n in 0..20 {
        let answer = post(format!("MOB-{n}")).await.unwrap();
        assert_eq!(answer.status(), 200);
        accepted.push(answer.json::<Value>().await.unwrap()["correlation_id"].as_str().unwrap().to_owned());
    }

    // The disk fills up: deliveries are refused (503) once the log cannot grow.
    let filler = fill(&disk.0);
    let mut refused = Vec::new();
    for n in 20..220 {
        let answer = post(format!("MOB-{n}")).await.unwrap();
        let correlation = answer.headers()["x-correlation-id"].to_str().unwrap().to_owned();
        match answer.status().as_u16() {
            200 => accepted.push(correlation),
            503 => refused.push(correlation),
            other => panic!("a delivery on a full disk was answered {other}"),
        }
        if refused.len() >= 20 {
            break;
        }
    }
    assert!(refused.len() >= 20, "a full disk never refused a delivery");
    let ready = client.get(gateway.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "ready while the log cannot grow");
    let said: Value = ready.json().await.unwrap();
    assert!(said["store"].as_str().unwrap().contains("appends are failing"), "{said}");

    // Space returns: the same process is ready again (before any delivery tells it) and takes
    // deliveries.
    std::fs::remove_file(&filler).unwrap();
    let ready = client.get(gateway.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let answer = post("MOB-999".into()).await.unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    accepted.push(answer.headers()["x-correlation-id"].to_str().unwrap().to_owned());
    let read = client.get(gateway.url("/api/v1/builds?issue=MOB-999")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(read.status(), 200);
    gateway.stop();

    // Everything accepted is in the log; nothing refused is.
    let log = meshgate::store::sqlite::open_read_only(&disk.0.join("data/events.sqlite")).unwrap();
    let filter = EventFilter { event_type: Some("WebhookReceived".into()), ..Default::default() };
    let logged: std::collections::HashSet<String> =
        query(&log, &filter, 0, usize::MAX).unwrap().iter().map(|e| e.correlation_id.to_string()).collect();
    for correlation in &accepted {
        assert!(logged.contains(correlation), "accepted {correlation} is not in the log");
    }
    for correlation in &refused {
        assert!(!logged.contains(correlation), "refused {correlation} was recorded");
    }
    let verify = Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "projections", "rebuild", "--verify"])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    drop(disk);
}
