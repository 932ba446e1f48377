//! The agent's settings: flags, over a `[worker]` table (in a file of the node's own, `--config`,
//! or in a gateway's configuration when `meshgate worker` runs it), validated at start. Every path
//! a file names resolves against that file's folder; every path the agent hands a script is
//! absolute.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use meshgate_domain::trigger::is_simple_name;
use meshgate_domain::xcode::Xcode;
use serde::{Deserialize, Serialize};

use crate::xcodes;

/// Flags override the `[worker]` table.
#[derive(Debug, Default, Clone, Args)]
pub struct WorkerArgs {
    /// The gateway's base URL, such as https://ci.example.com:8443.
    #[arg(long, env = "MESHGATE_GATEWAY")]
    pub gateway: Option<String>,
    /// This node's id: 1-64 of [A-Za-z0-9._-].
    #[arg(long, env = "MESHGATE_NODE_ID")]
    pub node_id: Option<String>,
    /// Labels this node offers, comma separated (such as signing,arm64).
    #[arg(long, value_delimiter = ',')]
    pub labels: Option<Vec<String>>,
    /// Builds this node runs at once (default 1).
    #[arg(long)]
    pub slots: Option<usize>,
    /// File holding the pool token (`[nodes] token_file` on the gateway).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// TOML file naming the scripts this node runs, its hooks and Xcodes.
    #[arg(long)]
    pub scripts: Option<PathBuf>,
    /// Where builds run, logs are kept and results are spooled.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Seconds a claim waits for work (default 30).
    #[arg(long)]
    pub claim_wait: Option<u64>,
    /// On SIGTERM: seconds running builds may finish before they are stopped and reported
    /// cancelled (default 300).
    #[arg(long)]
    pub drain_seconds: Option<u64>,
    /// A PEM bundle to trust beside the platform's store, for a gateway whose certificate comes
    /// from a private CA.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// This node's client certificate (PEM chain), for a gateway whose node API requires one
    /// (`[nodes] client_ca_file`); with --client-key.
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM) of --client-cert.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// An Xcode this node has, as VERSION=PATH (16.2=/Applications/Xcode-16.2.app); repeatable.
    #[arg(long = "xcode", value_name = "VERSION=PATH")]
    pub xcodes: Vec<String>,
    /// Where to look for Xcode*.app bundles (default: /Applications on macOS, nowhere elsewhere).
    #[arg(long)]
    pub xcode_search_dir: Option<PathBuf>,
}

/// The `[worker]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSettings {
    pub gateway: Option<String>,
    pub node_id: Option<String>,
    pub labels: Vec<String>,
    pub slots: Option<usize>,
    pub token_file: Option<PathBuf>,
    pub scripts: Option<PathBuf>,
    pub work_dir: Option<PathBuf>,
    pub claim_wait_seconds: Option<u64>,
    pub drain_seconds: Option<u64>,
    /// A PEM bundle trusted beside the platform's store, for a gateway with a private CA.
    pub ca_file: Option<PathBuf>,
    /// This node's client certificate and its key (PEM), for a gateway that requires one.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// Xcodes listed by hand: version → app path.
    pub xcode: BTreeMap<String, PathBuf>,
    /// Where to look for Xcode*.app bundles.
    pub xcode_search_dir: Option<PathBuf>,
}

impl FileSettings {
    /// The `[worker]` table of a TOML file, its paths resolved against the file's folder.
    pub fn load(path: &Path) -> anyhow::Result<FileSettings> {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            worker: Option<FileSettings>,
        }
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        // Other tables (a gateway's whole configuration) are not the agent's business.
        let file: File = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut settings = file.worker.ok_or_else(|| anyhow::anyhow!("{} has no [worker] table", path.display()))?;
        settings.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(settings)
    }

    /// Every relative path resolves against `base`, the folder of the file that named it.
    pub fn resolve_paths(&mut self, base: &Path) {
        if base.as_os_str().is_empty() {
            return;
        }
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for p in [
            &mut self.token_file,
            &mut self.scripts,
            &mut self.work_dir,
            &mut self.ca_file,
            &mut self.client_cert_file,
            &mut self.client_key_file,
            &mut self.xcode_search_dir,
        ]
        .into_iter()
        .flatten()
        {
            resolve(p);
        }
    }
}

/// A client certificate chain and its key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Settings after flags and the table are merged and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub gateway: String,
    pub node_id: String,
    pub labels: Vec<String>,
    pub slots: usize,
    pub token_file: PathBuf,
    pub scripts: PathBuf,
    /// Absolute: scripts run elsewhere, and every path they are given is under it.
    pub work_dir: PathBuf,
    pub claim_wait: u64,
    pub drain_seconds: u64,
    pub ca_file: Option<PathBuf>,
    /// The client certificate and key presented to the gateway.
    pub client_identity: Option<ClientIdentity>,
    /// Listed by hand (flags, then the table).
    pub xcodes: Vec<Xcode>,
    pub xcode_search_dir: Option<PathBuf>,
}

impl Settings {
    /// Flags over the `[worker]` table `file`.
    pub fn merge(args: WorkerArgs, file: &FileSettings) -> anyhow::Result<Settings> {
        let missing =
            |flag: &str| anyhow::anyhow!("--{flag} (or `{}` in [worker]) is required", flag.replace('-', "_"));
        let mut listed: Vec<Xcode> = file
            .xcode
            .iter()
            .map(|(version, path)| Xcode { version: version.clone(), path: path.to_string_lossy().into_owned() })
            .collect();
        for flag in &args.xcodes {
            listed.push(xcodes::parse_flag(flag).map_err(anyhow::Error::msg)?);
        }
        let work_dir = args.work_dir.or_else(|| file.work_dir.clone()).ok_or_else(|| missing("work-dir"))?;
        let settings = Settings {
            gateway: args.gateway.or_else(|| file.gateway.clone()).ok_or_else(|| missing("gateway"))?,
            node_id: args.node_id.or_else(|| file.node_id.clone()).ok_or_else(|| missing("node-id"))?,
            labels: args.labels.unwrap_or_else(|| file.labels.clone()).into_iter().filter(|l| !l.is_empty()).collect(),
            slots: args.slots.or(file.slots).unwrap_or(1),
            token_file: args.token_file.or_else(|| file.token_file.clone()).ok_or_else(|| missing("token-file"))?,
            scripts: args.scripts.or_else(|| file.scripts.clone()).ok_or_else(|| missing("scripts"))?,
            work_dir: absolute(&work_dir)?,
            claim_wait: args.claim_wait.or(file.claim_wait_seconds).unwrap_or(30),
            drain_seconds: args.drain_seconds.or(file.drain_seconds).unwrap_or(300),
            ca_file: args.ca_file.or_else(|| file.ca_file.clone()),
            client_identity: match (
                args.client_cert.or_else(|| file.client_cert_file.clone()),
                args.client_key.or_else(|| file.client_key_file.clone()),
            ) {
                (Some(cert_file), Some(key_file)) => Some(ClientIdentity { cert_file, key_file }),
                (None, None) => None,
                _ => anyhow::bail!("--client-cert and --client-key (client_cert_file, client_key_file) go together"),
            },
            xcodes: listed,
            xcode_search_dir: args
                .xcode_search_dir
                .or_else(|| file.xcode_search_dir.clone())
                .or_else(xcodes::default_search_dir),
        };
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> anyhow::Result<()> {
        if !is_simple_name(&self.node_id) {
            anyhow::bail!("--node-id must be 1-64 of [A-Za-z0-9._-]");
        }
        if let Some(bad) = self.labels.iter().find(|l| !is_simple_name(l)) {
            anyhow::bail!("label `{bad}` must be 1-64 of [A-Za-z0-9._-]");
        }
        if !(1..=256).contains(&self.slots) {
            anyhow::bail!("--slots must be between 1 and 256");
        }
        if !(1..=300).contains(&self.claim_wait) {
            anyhow::bail!("--claim-wait must be between 1 and 300 seconds");
        }
        Ok(())
    }
}

/// `path` made absolute against the working directory (it need not exist yet).
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    let here = std::env::current_dir().map_err(|e| anyhow::anyhow!("cannot read the working directory: {e}"))?;
    Ok(here.join(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> WorkerArgs {
        WorkerArgs {
            gateway: Some("https://gw".into()),
            node_id: Some("mac-1".into()),
            token_file: Some("nodes.token".into()),
            scripts: Some("scripts.toml".into()),
            work_dir: Some("work".into()),
            ..WorkerArgs::default()
        }
    }

    #[test]
    fn a_relative_work_dir_becomes_absolute() {
        let settings = Settings::merge(args(), &FileSettings::default()).unwrap();
        assert!(settings.work_dir.is_absolute());
        assert_eq!(settings.work_dir, std::env::current_dir().unwrap().join("work"));
    }

    #[test]
    fn a_config_file_s_paths_resolve_against_its_folder_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "[server]\nlisten = \"x\"\n\n[worker]\ngateway = \"https://gw\"\nnode_id = \"mac-from-file\"\n\
             token_file = \"nodes.token\"\nscripts = \"scripts.toml\"\nwork_dir = \"work\"\nslots = 2\n\
             [worker.xcode]\n\"16.2\" = \"/Applications/Xcode-16.2.app\"\n",
        )
        .unwrap();
        let flags = WorkerArgs {
            node_id: Some("mac-flag".into()),
            xcodes: vec!["15.4=/Applications/Xcode-15.4.app".into()],
            ..WorkerArgs::default()
        };
        let settings = Settings::merge(flags, &FileSettings::load(&file).unwrap()).unwrap();
        assert_eq!(settings.node_id, "mac-flag");
        assert_eq!(settings.slots, 2);
        assert_eq!(settings.work_dir, dir.path().join("work"));
        assert_eq!(settings.token_file, dir.path().join("nodes.token"));
        let versions: Vec<&str> = settings.xcodes.iter().map(|x| x.version.as_str()).collect();
        assert_eq!(versions, ["16.2", "15.4"]);
    }

    #[test]
    fn bad_settings_are_refused_naming_the_flag() {
        let cases = [
            (WorkerArgs { node_id: Some("a b".into()), ..args() }, "--node-id"),
            (WorkerArgs { slots: Some(0), ..args() }, "--slots"),
            (WorkerArgs { labels: Some(vec!["x y".into()]), ..args() }, "label `x y`"),
            (WorkerArgs { claim_wait: Some(0), ..args() }, "--claim-wait"),
            (WorkerArgs { gateway: None, ..args() }, "--gateway (or `gateway` in [worker]) is required"),
            (WorkerArgs { xcodes: vec!["16".into()], ..args() }, "VERSION=PATH"),
        ];
        for (args, expected) in cases {
            let error = Settings::merge(args, &FileSettings::default()).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }
}
