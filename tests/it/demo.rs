//! `meshgate demo` as a newcomer runs it: the README's first command, then the README's `curl`,
//! and the build's timeline read from the demo's standard output.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::helpers::fixtures;
use crate::process::BIN;

/// The README's `curl` block under "See it work", as written.
fn readme_curl() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme.split("## See it work").nth(1).unwrap();
    let block = section.split("```sh\n").find(|b| b.starts_with("curl -X POST")).expect("the README's curl");
    block.split("```").next().unwrap().to_owned()
}

/// Runs a shell snippet in `dir` and returns what it printed.
fn sh(dir: &Path, script: &str) -> String {
    let output = Command::new("bash").args(["-euo", "pipefail", "-c", script]).current_dir(dir).output().unwrap();
    assert!(output.status.success(), "{script}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// The next line starting with `prefix` (a bounded wait on the channel).
fn line_starting(lines: &mpsc::Receiver<String>, prefix: &str) -> String {
    loop {
        match lines.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.starts_with(prefix) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line starting with `{prefix}`: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_the_whole_timeline_of_the_readme_s_delivery_and_of_a_failing_one() {
    let dir = tempfile::tempdir().unwrap();
    // The README's commands run in meshgate's folder, where `fixtures/` is.
    std::os::unix::fs::symlink(fixtures(), dir.path().join("fixtures")).unwrap();
    let mut demo = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(demo.stdout.take().unwrap());
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || stdout.lines().map_while(Result::ok).for_each(|l| drop(tx.send(l))));
    let listening = line_starting(&lines, "meshgate listening on http://");
    let addr = listening.trim_start_matches("meshgate listening on http://").split('/').next().unwrap().to_owned();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    line_starting(&lines, "Each build's timeline appears below");

    let curl = readme_curl().replace("127.0.0.1:8080", &addr);
    assert!(sh(dir.path(), &curl).contains(r#""outcome":"enqueued""#));
    assert!(line_starting(&lines, "⏳ DEMO-1 demo #1 queued").contains("Dark mode for the settings screen"));
    assert!(line_starting(&lines, "🔨 DEMO-1 demo #1 running").contains("on demo-node"));
    let passed = line_starting(&lines, "✅ DEMO-1 demo #1 succeeded");
    let log = passed.split("log: ").nth(1).expect("where the log is").to_owned();
    assert!(log.starts_with(&format!("http://{addr}/api/v1/builds/")), "{passed}");
    let text = reqwest::get(&log).await.unwrap().text().await.unwrap();
    assert!(text.contains("** TEST SUCCEEDED **"), "{text}");

    // The README's other fixture says "fails": the sample script fails and the line names the test.
    let failing = curl.replace("demo-issueUpdated-state-building.json", "issueUpdated-state-building.json");
    sh(dir.path(), &failing);
    line_starting(&lines, "🔨 GW-42 demo #2 running");
    let failed = line_starting(&lines, "❌ GW-42 demo #2 failed");
    assert!(failed.contains("failing: DemoTests.testCheckout") && failed.contains("log: http://"), "{failed}");

    // Ctrl-C stops it, and the throwaway folder goes with it.
    assert!(Command::new("kill").args(["-INT", &demo.id().to_string()]).status().unwrap().success());
    let status = demo.wait().unwrap();
    assert!(status.success(), "{status}: {}", std::fs::read_to_string(dir.path().join("stderr.log")).unwrap());
    assert!(!dir.path().join("meshgate-demo").exists());
}

#[test]
fn the_demo_never_listens_beyond_loopback() {
    let output = Command::new(BIN).args(["demo", "--listen", "0.0.0.0:0"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("loopback only"));
}
