//! A Mac build node set up from `docs/deploy/` as the quickstart says: the launchd jobs, the
//! node's settings and scripts files, the sample build script and the keychain and simulator
//! hooks. The hooks and the script run for real under an agent, with stand-ins on `PATH` for the
//! macOS tools this machine lacks (`security`, `xcrun`, `xcodebuild`, `ditto`); git is real.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use crate::helpers::*;
use crate::process::{start, with_tls, BIN};
use crate::workers::{deliver, events, wait_for, Agent};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/deploy")
}

fn plist(name: &str) -> plist::Dictionary {
    plist::Value::from_file(deploy().join(name)).unwrap().into_dictionary().unwrap()
}

fn string<'a>(dict: &'a plist::Dictionary, key: &str) -> &'a str {
    dict.get(key).and_then(plist::Value::as_string).unwrap_or_else(|| panic!("no {key}"))
}

#[test]
fn the_launchd_jobs_run_the_installed_agent_with_homebrew_on_its_path_and_room_to_drain() {
    let settings = meshgate_worker::FileSettings::load(&deploy().join("worker.example.toml")).unwrap();
    let scripts = meshgate_worker::scripts::Scripts::load(&deploy().join("scripts.example.toml")).unwrap();
    let grace = scripts.scripts.values().map(|s| s.stop_grace_seconds).max().unwrap();
    for (name, daemon) in
        [("com.example.meshgate-worker.plist", false), ("com.example.meshgate-worker.daemon.plist", true)]
    {
        let job = plist(name);
        assert_eq!(string(&job, "Label"), "com.example.meshgate-worker");
        let args: Vec<&str> =
            job["ProgramArguments"].as_array().unwrap().iter().map(|a| a.as_string().unwrap()).collect();
        // Where `cargo install --path worker` puts the agent, in the build user's home: it exists on
        // every Mac (unlike /usr/local/bin on a new Apple Silicon one).
        assert_eq!(
            args,
            ["/Users/builder/.cargo/bin/meshgate-worker", "--config", "/Users/builder/.meshgate/worker.toml"]
        );
        let env = job["EnvironmentVariables"].as_dictionary().unwrap();
        let path: Vec<&str> = string(env, "PATH").split(':').collect();
        assert!(path.starts_with(&["/opt/homebrew/bin", "/usr/local/bin"]) && path.contains(&"/usr/bin"), "{path:?}");
        assert_eq!(job["RunAtLoad"].as_boolean(), Some(true), "{name}");
        assert_eq!(job["KeepAlive"].as_boolean(), Some(true), "{name}");
        // launchd's SIGKILL comes after the drain and a script's grace.
        let exit = job["ExitTimeOut"].as_unsigned_integer().unwrap();
        assert!(exit > settings.drain_seconds.unwrap() + grace, "{name}: ExitTimeOut {exit}");
        if daemon {
            assert_eq!(string(&job, "UserName"), "builder");
            assert_eq!(string(env, "HOME"), "/Users/builder");
        }
    }
    // The scripts file's hooks are the shipped ones, beside it.
    let hook = scripts.hooks.before_build.as_ref().unwrap();
    assert_eq!(hook[0], deploy().join("hooks/around-build.sh").to_string_lossy());
    assert_eq!(settings.scripts.unwrap(), deploy().join("scripts.toml"));
}

#[test]
fn the_systemd_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    for (unit, binary) in
        [("meshgate.service", "/usr/local/bin/meshgate"), ("meshgate-worker.service", "/usr/local/bin/meshgate-worker")]
    {
        // As installed: the binary where the unit says, here the one just built.
        let text = std::fs::read_to_string(deploy().join(unit)).unwrap();
        assert!(text.contains(binary), "{unit}");
        let path = dir.path().join(unit);
        std::fs::write(&path, text.replace(binary, BIN)).unwrap();
        let verified = Command::new("systemd-analyze").arg("verify").arg(&path).output();
        let Ok(verified) = verified else {
            panic!("systemd-analyze is not installed (Debian's systemd package)");
        };
        assert!(verified.status.success(), "{unit}: {}", String::from_utf8_lossy(&verified.stderr));
    }
}

/// Stand-ins for the macOS tools: each records its arguments in `calls` and does what the hooks
/// and the script rely on. `security` keeps a search list and keychain files.
fn mac_tools(dir: &Path) -> PathBuf {
    let bin = dir.join("mac-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = dir.join("calls");
    let state = dir.join("search-list");
    std::fs::write(&state, "/Users/builder/Library/Keychains/login.keychain-db\n").unwrap();
    let tools = [
        (
            "security",
            format!(
                r#"echo "security $*" >> {calls}
case "$1" in
  create-keychain) touch "${{@: -1}}" ;;
  delete-keychain) test -e "$2" && rm "$2" ;;
  list-keychains)
    if [ "$3" = "-s" ]; then shift 3; printf '%s\n' "$@" > {state}; else sed 's/.*/    "&"/' {state}; fi ;;
esac"#,
                calls = calls.display(),
                state = state.display()
            ),
        ),
        ("xcrun", format!("echo \"xcrun $*\" >> {}", calls.display())),
        (
            "xcodebuild",
            format!(
                r#"echo "xcodebuild $*" >> {calls}
while [ $# -gt 0 ]; do [ "$1" = -resultBundlePath ] && mkdir -p "$2" && echo summary > "$2/Info.plist"; shift; done
echo "Test Suite 'All tests' passed"
echo "** TEST SUCCEEDED **""#,
                calls = calls.display()
            ),
        ),
        ("ditto", format!("echo \"ditto $*\" >> {}\ntar -czf \"${{@: -1}}\" \"${{@: -2:1}}\"", calls.display())),
    ];
    for (name, body) in tools {
        let path = bin.join(name);
        std::fs::write(&path, format!("#!/usr/bin/env bash\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    bin
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=builder", "-c", "user.email=builder@example.com"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_build_script_and_hooks_run_as_a_node_runs_them_and_the_commit_is_found() {
    let dir = tempfile::tempdir().unwrap();
    // The gateway.
    test_config(dir.path(), vec![]);
    let toml = std::fs::read_to_string(fixtures().join("config/two-lanes.toml")).unwrap();
    std::fs::write(dir.path().join("meshgate.toml"), with_tls(dir.path(), &toml)).unwrap();
    let gw = start(dir.path(), &["--config", dir.path().join("meshgate.toml").to_str().unwrap()], &[]);

    // The app's repository, with the issue's branch.
    let repo = dir.path().join("app.git");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "--quiet", "--initial-branch", "main"]);
    std::fs::write(repo.join("README"), "App\n").unwrap();
    git(&repo, &["add", "README"]);
    git(&repo, &["commit", "--quiet", "-m", "first"]);
    git(&repo, &["checkout", "--quiet", "-b", "feature/MOB-1"]);
    std::fs::write(repo.join("Checkout.swift"), "// checkout\n").unwrap();
    git(&repo, &["add", "Checkout.swift"]);
    git(&repo, &["commit", "--quiet", "-m", "checkout"]);
    let head = git(&repo, &["rev-parse", "HEAD"]);

    // The node's folder as the quickstart sets it up: the hooks and the sample script copied in,
    // the shipped scripts file naming them.
    let home = dir.path().join("Users/builder/.meshgate");
    std::fs::create_dir_all(home.join("hooks")).unwrap();
    for hook in ["around-build.sh", "keychain.sh", "simulators.sh"] {
        std::fs::copy(deploy().join("hooks").join(hook), home.join("hooks").join(hook)).unwrap();
    }
    let script = dir.path().join("Users/builder/ci/ios-build.sh");
    std::fs::create_dir_all(script.parent().unwrap()).unwrap();
    std::fs::copy(deploy().join("ios-build.example.sh"), &script).unwrap();
    let shipped = std::fs::read_to_string(deploy().join("scripts.example.toml")).unwrap();
    let scripts = home.join("scripts.toml");
    std::fs::write(&scripts, shipped.replace("/Users/builder/ci/ios-build.sh", script.to_str().unwrap())).unwrap();

    let tools = mac_tools(dir.path());
    let path = format!("{}:{}", tools.display(), std::env::var("PATH").unwrap_or_default());
    let work = dir.path().join("Users/builder/meshgate-work");
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .args(["worker", "--gateway", &gw.url(""), "--node-id", "mac-mini-01", "--slots", "1"])
        .args(["--ca-file", crate::pki::pki().ca_file.to_str().unwrap()])
        .args(["--token-file", dir.path().join("nodes.token").to_str().unwrap()])
        .args(["--scripts", scripts.to_str().unwrap(), "--work-dir", work.to_str().unwrap(), "--claim-wait", "2"])
        .env("PATH", path)
        .env("REPO_URL", format!("file://{}", repo.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(("mac-mini-01".to_owned(), line));
        }
    });
    let _agent = Agent::from_child(child);
    deliver(&gw, dir.path(), "MOB-1").await;
    let reported = wait_for(&lines, "reported", 1);
    assert!(reported[0].1.ends_with("accepted"), "{reported:?}");
    let build = reported[0].1.split_whitespace().nth(1).unwrap().to_owned();
    let log = std::fs::read_to_string(work.join(format!("logs/{build}-1.log"))).unwrap();

    // The commit the checkout holds, the tests' result bundle as an artifact.
    let succeeded: Vec<_> = events(dir.path(), "BuildSucceeded").into_iter().map(|(_, d)| d).collect();
    assert_eq!(succeeded.len(), 1, "{log}");
    assert_eq!(succeeded[0]["report"]["commit_sha"], head.as_str(), "{log}");
    assert_eq!(succeeded[0]["report"]["after_build"], serde_json::Value::Null, "{log}");
    let stored: Vec<_> = events(dir.path(), "ArtifactStored").into_iter().map(|(_, d)| d).collect();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["name"], "Tests.xcresult.zip");

    // The hooks: clean simulators, then a keychain of the build's own first in the search list,
    // used for signing, then removed and the search list back as it was.
    let keychain = work.join(format!("results/{build}-1/build.keychain-db")).display().to_string();
    let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    let position = |call: &str| {
        calls.iter().position(|c| c.starts_with(call)).unwrap_or_else(|| panic!("no `{call}` in {calls:#?}"))
    };
    let login = "/Users/builder/Library/Keychains/login.keychain-db";
    let order = [
        "xcrun simctl shutdown all".to_owned(),
        "xcrun simctl erase all".to_owned(),
        "security create-keychain -p ".to_owned(),
        "security unlock-keychain -p ".to_owned(),
        format!("security list-keychains -d user -s {keychain} {login}"),
        "xcodebuild test -scheme App".to_owned(),
        format!("security list-keychains -d user -s {login}"),
        format!("security delete-keychain {keychain}"),
    ];
    let at: Vec<usize> = order.iter().map(|c| position(c)).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{calls:#?}");
    assert!(calls.iter().any(|c| c.contains(&format!("OTHER_CODE_SIGN_FLAGS=--keychain={keychain}"))), "{calls:#?}");
    assert_eq!(calls.iter().filter(|c| **c == "xcrun simctl erase all").count(), 2, "before and after");
    assert!(!Path::new(&keychain).exists(), "the build's keychain outlived it");
    assert_eq!(std::fs::read_to_string(dir.path().join("search-list")).unwrap(), format!("{login}\n"));
    assert!(log.contains(&format!("keychain {keychain} ready")) && log.contains("** TEST SUCCEEDED **"), "{log}");
    gw.stop();
}
