//! The scripts a node may run, by name. Commands are argument lists, never shell strings built
//! from tracker data: build facts reach a script only as environment variables.

use std::collections::BTreeMap;
use std::path::Path;

use figment::providers::{Format, Toml};
use figment::Figment;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// Program and arguments; relative programs are resolved against the scripts file's folder.
    pub command: Vec<String>,
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// A JUnit XML report the script writes, relative to the build's work dir.
    pub junit: Option<String>,
}

fn default_timeout() -> u64 {
    3600
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scripts {
    #[serde(default)]
    pub scripts: BTreeMap<String, Script>,
}

impl Scripts {
    pub fn load(path: &Path) -> anyhow::Result<Scripts> {
        if !path.exists() {
            anyhow::bail!("scripts file {} does not exist", path.display());
        }
        let mut scripts: Scripts = Figment::from(Toml::file(path))
            .extract()
            .map_err(|e| anyhow::anyhow!("scripts file {}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for (name, script) in &mut scripts.scripts {
            let Some(program) = script.command.first_mut() else {
                anyhow::bail!("script `{name}`: command must not be empty");
            };
            if program.contains('/') && Path::new(program.as_str()).is_relative() {
                *program = base.join(program.as_str()).to_string_lossy().into_owned();
            }
            if script.timeout_seconds == 0 {
                anyhow::bail!("script `{name}`: timeout_seconds must be at least 1");
            }
        }
        Ok(scripts)
    }

    pub fn get(&self, name: &str) -> Option<&Script> {
        self.scripts.get(name)
    }
}
