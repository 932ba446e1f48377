//! The scripts file: the scripts a node may run by name, the hooks around every build, and the
//! Xcodes listed by hand. Commands are argument lists, never shell strings built from tracker
//! data: build facts reach a script only as environment variables.
//!
//! ```toml
//! [hooks]
//! before_build = ["hooks/keychain.sh", "create"]
//! after_build = ["hooks/keychain.sh", "delete"]
//!
//! [xcode]
//! "16.2" = "/Applications/Xcode-16.2.app"
//!
//! [scripts.ios-build]
//! command = ["./ios-build.sh"]
//! timeout_seconds = 3600
//! no_output_timeout_seconds = 600
//! retry_on = ["Failed to boot simulator", "exit:75"]
//! artifacts = ["build/*.ipa"]
//! ```

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use meshgate_domain::xcode::{Version, Xcode};
use regex::Regex;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// Program and arguments; a relative program with a `/` resolves against the scripts file's
    /// folder, a bare name is looked up on `PATH`.
    pub command: Vec<String>,
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// No byte on stdout or stderr for this long stops the build as hung.
    #[serde(default)]
    pub no_output_timeout_seconds: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL when the build is stopped.
    #[serde(default = "default_grace")]
    pub stop_grace_seconds: u64,
    /// A JUnit XML report the script writes, relative to the build's work dir.
    #[serde(default)]
    pub junit: Option<String>,
    /// Failures that mean "infrastructure, not the change": `exit:N` for an exit code, anything
    /// else a regular expression matched against each line of output.
    #[serde(default)]
    pub retry_on: Vec<String>,
    /// Files to keep beside `$MESHGATE_RESULT_DIR/artifacts/`: globs relative to the work dir.
    #[serde(default)]
    pub artifacts: Vec<String>,
    #[serde(skip)]
    pub rules: Vec<RetryRule>,
}

fn default_timeout() -> u64 {
    3600
}

fn default_grace() -> u64 {
    30
}

/// One `retry_on` entry, compiled.
#[derive(Debug, Clone)]
pub enum RetryRule {
    Exit { code: i32, text: String },
    Output { regex: Regex, text: String },
}

impl RetryRule {
    fn parse(text: &str) -> Result<RetryRule, String> {
        if let Some(code) = text.strip_prefix("exit:") {
            let code = code.trim().parse().map_err(|_| format!("`{text}`: exit codes are integers (`exit:75`)"))?;
            return Ok(RetryRule::Exit { code, text: text.to_owned() });
        }
        if text.is_empty() || text.len() > meshgate_domain::node_api::MAX_NOTE_BYTES {
            return Err(format!("`{text}`: a rule is 1-200 bytes"));
        }
        let regex = Regex::new(text).map_err(|e| format!("`{text}` is not a regular expression: {e}"))?;
        Ok(RetryRule::Output { regex, text: text.to_owned() })
    }

    pub fn text(&self) -> &str {
        match self {
            RetryRule::Exit { text, .. } | RetryRule::Output { text, .. } => text,
        }
    }
}

/// Commands run around every build, with the build's environment.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Before the script; if it fails, the build fails with `setup_failed` and the script does not
    /// run.
    #[serde(default)]
    pub before_build: Option<Vec<String>>,
    /// After every end (success, failure, cancel, timeout, hang, drain); a failure is reported with
    /// the result, never turned into a build failure.
    #[serde(default)]
    pub after_build: Option<Vec<String>>,
    /// How long `after_build` may take.
    #[serde(default = "default_hook_timeout")]
    pub after_build_timeout_seconds: u64,
}

fn default_hook_timeout() -> u64 {
    300
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scripts {
    #[serde(default)]
    pub scripts: BTreeMap<String, Script>,
    #[serde(default)]
    pub hooks: Hooks,
    /// Xcodes listed by hand: version → app path.
    #[serde(default)]
    pub xcode: BTreeMap<String, PathBuf>,
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ScriptsError {
    #[error("scripts file {0} does not exist")]
    Missing(PathBuf),
    #[error("cannot read scripts file {path}")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("scripts file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Scripts {
    pub fn load(path: &Path) -> Result<Scripts, ScriptsError> {
        if !path.exists() {
            return Err(ScriptsError::Missing(path.to_owned()));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|source| ScriptsError::Unreadable { path: path.to_owned(), source })?;
        Scripts::parse(&text, path)
    }

    /// Reads the text of the scripts file at `path`; relative programs resolve against its folder.
    pub fn parse(text: &str, path: &Path) -> Result<Scripts, ScriptsError> {
        let invalid = |message: String| ScriptsError::Invalid { path: path.to_owned(), message };
        let mut scripts: Scripts = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        scripts.path = path.to_owned();
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |command: &mut Vec<String>, what: &str| -> Result<(), String> {
            let Some(program) = command.first_mut() else { return Err(format!("{what}: command must not be empty")) };
            if program.contains('/') && Path::new(program.as_str()).is_relative() {
                *program = base.join(program.as_str()).to_string_lossy().into_owned();
            }
            Ok(())
        };
        for (name, script) in &mut scripts.scripts {
            if !meshgate_domain::trigger::is_simple_name(name) {
                return Err(invalid(format!("script name `{name}` must be 1-64 of [A-Za-z0-9._-]")));
            }
            resolve(&mut script.command, &format!("script `{name}`")).map_err(invalid)?;
            if script.timeout_seconds == 0 {
                return Err(invalid(format!("script `{name}`: timeout_seconds must be at least 1")));
            }
            if script.no_output_timeout_seconds == Some(0) {
                return Err(invalid(format!("script `{name}`: no_output_timeout_seconds must be at least 1")));
            }
            script.rules = script
                .retry_on
                .iter()
                .map(|r| RetryRule::parse(r))
                .collect::<Result<_, _>>()
                .map_err(|e| invalid(format!("script `{name}`: retry_on {e}")))?;
            for pattern in &script.artifacts {
                if Path::new(pattern).is_absolute() || pattern.split('/').any(|p| p == "..") {
                    return Err(invalid(format!(
                        "script `{name}`: artifacts `{pattern}` must be relative to the work dir, without `..`"
                    )));
                }
                glob::Pattern::new(pattern)
                    .map_err(|e| invalid(format!("script `{name}`: artifacts `{pattern}`: {e}")))?;
            }
        }
        if let Some(hook) = &mut scripts.hooks.before_build {
            resolve(hook, "hooks.before_build").map_err(invalid)?;
        }
        if let Some(hook) = &mut scripts.hooks.after_build {
            resolve(hook, "hooks.after_build").map_err(invalid)?;
        }
        for version in scripts.xcode.keys() {
            Version::parse(version).map_err(|e| invalid(format!("[xcode]: {e}")))?;
        }
        Ok(scripts)
    }

    pub fn get(&self, name: &str) -> Option<&Script> {
        self.scripts.get(name)
    }

    /// The Xcodes of the `[xcode]` table.
    pub fn xcodes(&self) -> Vec<Xcode> {
        self.xcode
            .iter()
            .map(|(version, path)| Xcode { version: version.clone(), path: path.to_string_lossy().into_owned() })
            .collect()
    }
}

impl Script {
    /// The first rule a failure matches: its exit code, or a line of its log (read line by line).
    pub fn retry_rule(&self, exit_code: Option<i32>, mut log: impl BufRead) -> Option<&RetryRule> {
        if let Some(rule) =
            self.rules.iter().find(|r| matches!(r, RetryRule::Exit { code, .. } if Some(*code) == exit_code))
        {
            return Some(rule);
        }
        let outputs: Vec<&RetryRule> = self.rules.iter().filter(|r| matches!(r, RetryRule::Output { .. })).collect();
        if outputs.is_empty() {
            return None;
        }
        let mut line = Vec::new();
        loop {
            line.clear();
            if log.read_until(b'\n', &mut line).ok()? == 0 {
                return None;
            }
            let text = String::from_utf8_lossy(&line);
            let matched =
                outputs.iter().copied().find(|r| matches!(r, RetryRule::Output { regex, .. } if regex.is_match(&text)));
            if matched.is_some() {
                return matched;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scripts, ScriptsError> {
        Scripts::parse(text, Path::new("/etc/meshgate/scripts.toml"))
    }

    #[test]
    fn a_full_scripts_file_reads_with_its_defaults_and_resolved_programs() {
        let scripts = parse(
            r#"
            [hooks]
            before_build = ["hooks/keychain.sh", "create"]
            after_build = ["/usr/bin/true"]

            [xcode]
            "16.2" = "/Applications/Xcode-16.2.app"

            [scripts.ios-build]
            command = ["./ios-build.sh", "--flag"]
            no_output_timeout_seconds = 600
            retry_on = ["Failed to boot simulator", "exit:75"]
            artifacts = ["build/*.ipa"]

            [scripts.lint]
            command = ["swiftlint"]
            "#,
        )
        .unwrap();
        let build = scripts.get("ios-build").unwrap();
        assert_eq!(build.command, ["/etc/meshgate/./ios-build.sh", "--flag"]);
        assert_eq!((build.timeout_seconds, build.stop_grace_seconds), (3600, 30));
        assert_eq!(scripts.get("lint").unwrap().command, ["swiftlint"]);
        assert_eq!(scripts.hooks.before_build.as_ref().unwrap()[0], "/etc/meshgate/hooks/keychain.sh");
        assert_eq!(scripts.xcodes()[0].developer_dir(), "/Applications/Xcode-16.2.app/Contents/Developer");
    }

    #[test]
    fn retry_rules_match_an_exit_code_or_a_line_of_output() {
        let scripts = parse(
            "[scripts.b]\ncommand = [\"b\"]\nretry_on = [\"Failed to boot simulator\", \"exit:75\", \"Unable to find a destination.*iOS\"]\n",
        )
        .unwrap();
        let script = scripts.get("b").unwrap();
        assert_eq!(script.retry_rule(Some(75), &b"anything"[..]).unwrap().text(), "exit:75");
        let log = b"Testing...\nxcodebuild: error: Failed to boot simulator 'iPhone 16'\n";
        assert_eq!(script.retry_rule(Some(65), &log[..]).unwrap().text(), "Failed to boot simulator");
        let log = b"error: Unable to find a destination matching { platform:iOS Simulator }\n";
        assert_eq!(script.retry_rule(Some(70), &log[..]).unwrap().text(), "Unable to find a destination.*iOS");
        assert!(script.retry_rule(Some(65), &b"Test Case '-[A b]' failed\n"[..]).is_none());
        assert!(script.retry_rule(None, &b""[..]).is_none());
    }

    #[test]
    fn a_scripts_file_that_cannot_work_is_refused_naming_the_problem() {
        let cases = [
            ("[scripts.a]\ncommand = []\n", "command must not be empty"),
            ("[scripts.a]\ncommand = [\"x\"]\ntimeout_seconds = 0\n", "timeout_seconds"),
            ("[scripts.a]\ncommand = [\"x\"]\nretry_on = [\"exit:x\"]\n", "exit codes are integers"),
            ("[scripts.a]\ncommand = [\"x\"]\nretry_on = [\"(unclosed\"]\n", "not a regular expression"),
            ("[scripts.a]\ncommand = [\"x\"]\nartifacts = [\"../x\"]\n", "without `..`"),
            ("[scripts.a]\ncommand = [\"x\"]\nartifacts = [\"/abs/*\"]\n", "relative"),
            ("[scripts.a]\ncommand = [\"x\"]\nunknown = 1\n", "unknown field"),
            ("[xcode]\n\"sixteen\" = \"/x\"\n", "must be numbers"),
            ("[scripts.\"a b\"]\ncommand = [\"x\"]\n", "1-64 of"),
            ("[hooks]\nbefore_build = []\n", "hooks.before_build"),
        ];
        for (text, expected) in cases {
            let error = parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
