//! `meshgate demo`: the whole loop on one machine with no setup. A gateway on loopback with a
//! sample trigger (`State` → `Building`, any project), a build node in the same process running a
//! sample script (`fixtures/demo/build.sh`, built into the binary), and a `console` sink printing
//! each build's timeline here. Its data goes to a throwaway folder unless `--data-dir` says where.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use meshgate_domain::Trigger;

use crate::config::{ChatConfig, ChatKind, Config, WorkerConfig};

/// The sample script, as kept in `fixtures/demo/`.
const SCRIPT: &str = include_str!("../../fixtures/demo/build.sh");
/// The throwaway folder, in the working directory, and the file that marks it as the demo's.
const THROWAWAY: &str = "meshgate-demo";
const MARKER: &str = ".meshgate-demo";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to listen: loopback only.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Keep the demo's data (log, tokens, build logs) in DIR instead of a throwaway folder.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        bail!("the demo listens on loopback only (such as 127.0.0.1:8080), not {}", args.listen);
    }
    let throwaway = args.data_dir.is_none();
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => fresh_throwaway(Path::new(THROWAWAY))?,
    };
    // Absolute: the node runs each build in a folder of its own.
    let absolute = std::path::absolute(&data_dir).with_context(|| format!("cannot resolve {}", data_dir.display()))?;
    let config = demo_config(args.listen, &absolute);
    config.validate()?;
    let node = write_node_files(&config)?;

    let mut worker = None;
    let served = super::serve_then(config, |config| {
        let gateway = format!("http://{}", config.server.listen);
        print_banner(config, &data_dir, throwaway);
        let node = WorkerConfig { gateway: Some(gateway), ..node };
        worker = Some(tokio::spawn(async move {
            let ran = match meshgate_worker::Settings::merge(meshgate_worker::WorkerArgs::default(), &node) {
                Ok(settings) => meshgate_worker::run(settings, meshgate_worker::shutdown_signal()).await,
                Err(e) => Err(e),
            };
            if let Err(e) = ran {
                eprintln!("error: the demo's build node stopped: {}", crate::report::chain(e.as_ref()));
            }
        }));
        Ok(())
    })
    .await;
    // The node drains on the same Ctrl-C; its folder is inside the data dir.
    if let Some(worker) = worker {
        let _ = tokio::time::timeout(Duration::from_secs(10), worker).await;
    }
    if throwaway {
        remove_throwaway(&data_dir).await;
    }
    served
}

/// Removes the throwaway folder. The log's threads may still be closing their files for a moment
/// after the gateway stopped, so a failed try is repeated; a folder left behind is only reported
/// (the next demo clears it).
async fn remove_throwaway(dir: &Path) {
    let mut last = None;
    for _ in 0..20 {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {
                println!("removed {}", dir.display());
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(e) = last {
        eprintln!("warning: cannot remove {}: {e}; the next demo clears it", dir.display());
    }
}

/// The gateway's configuration: embedded defaults, the sample trigger, a console sink.
fn demo_config(listen: SocketAddr, data_dir: &Path) -> Config {
    let mut config = Config::default();
    config.server.listen = listen;
    config.server.data_dir = data_dir.to_owned();
    config.triggers = vec![Trigger {
        name: "demo".into(),
        projects: Vec::new(),
        field: "State".into(),
        to: vec!["Building".into()],
        from: Vec::new(),
        script: "demo-build".into(),
        lane: "default".into(),
        git_ref: "main".into(),
        xcode: None,
        on_success_command: None,
        on_failure_command: None,
        fixed_in_build_field: None,
    }];
    config.chat = vec![ChatConfig::new("console", ChatKind::Console)];
    config.nodes.claim_wait_seconds = 5;
    config
}

/// Writes the sample script and the node's scripts file; the node's settings but its gateway.
fn write_node_files(config: &Config) -> anyhow::Result<WorkerConfig> {
    use std::os::unix::fs::PermissionsExt;
    let dir = config.server.data_dir.join("node");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let script = dir.join("build.sh");
    std::fs::write(&script, SCRIPT)?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    let scripts = dir.join("scripts.toml");
    let command = toml_string(&script.to_string_lossy());
    std::fs::write(
        &scripts,
        format!("[scripts.demo-build]\ncommand = [\"/bin/sh\", {command}]\ntimeout_seconds = 60\n"),
    )?;
    // The pool token is generated with the gateway's other tokens before the node starts.
    Ok(WorkerConfig {
        node_id: Some("demo-node".into()),
        token_file: Some(config.nodes_token_file()),
        scripts: Some(scripts),
        work_dir: Some(dir.join("work")),
        claim_wait_seconds: Some(5),
        drain_seconds: Some(5),
        ..WorkerConfig::default()
    })
}

fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A new, empty throwaway folder: one left by an earlier demo is cleared; anything else of that
/// name is left alone and refused.
fn fresh_throwaway(dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.exists() {
        if !dir.join(MARKER).exists() {
            bail!("{} exists and is not a demo's folder; move it, or pass --data-dir DIR", dir.display());
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), "made by `meshgate demo`; removed when it stops\n")?;
    Ok(dir.to_owned())
}

fn print_banner(config: &Config, data_dir: &Path, throwaway: bool) {
    let kept = if throwaway { "removed when the demo stops; --data-dir DIR keeps it" } else { "kept" };
    let token = config.webhook_token_files()[0].clone();
    println!();
    println!("meshgate demo: a gateway, a build node (demo-node) and a console sink, on this machine only");
    println!("  data: {} ({kept})", data_dir.display());
    println!("  trigger: any project, State -> Building runs the demo script; a summary with \"fail\" fails it");
    println!("Post a delivery from another terminal (in meshgate's folder, for the fixture):");
    println!("  curl -X POST http://{}{} \\", config.server.listen, config.webhook.path);
    println!("    -H \"X-YouTrack-Token: $(cat {})\" \\", token.display());
    println!("    -H 'Content-Type: application/json' \\");
    println!("    --data-binary @fixtures/youtrack/demo-issueUpdated-state-building.json");
    println!("Each build's timeline appears below. Ctrl-C stops the demo.");
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_configuration_is_valid_and_stays_on_loopback() {
        let config = demo_config("127.0.0.1:0".parse().unwrap(), Path::new("/tmp/x"));
        config.validate().unwrap();
        assert!(config.server.listen.ip().is_loopback());
        assert_eq!(config.chat[0].kind, ChatKind::Console);
    }

    #[test]
    fn a_folder_that_is_not_a_demo_s_is_never_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("meshgate-demo");
        std::fs::create_dir_all(&theirs).unwrap();
        std::fs::write(theirs.join("precious"), "x").unwrap();
        assert!(fresh_throwaway(&theirs).is_err());
        assert!(theirs.join("precious").exists());
        let ours = dir.path().join("ours");
        fresh_throwaway(&ours).unwrap();
        std::fs::write(ours.join("left over"), "x").unwrap();
        fresh_throwaway(&ours).unwrap();
        assert!(!ours.join("left over").exists() && ours.join(MARKER).exists());
    }
}
