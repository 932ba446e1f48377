//! `meshgate-worker doctor`: what this node has, checked the way a build would use it: the token
//! file, the gateway (reachable with its CA, the token accepted), the scripts file and whether
//! each command and hook can be run, the Xcodes found, the work dir writable, the free disk.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use meshgate_domain::xcode::Xcode;

use crate::gateway::Gateway;
use crate::scripts::Scripts;
use crate::settings::Settings;

/// Below this much free disk a build machine is warned about (an Xcode build with derived data
/// and simulators takes tens of GiB).
const LOW_DISK_BYTES: u64 = 20 * 1024 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub verdict: Verdict,
    pub what: String,
}

fn check(verdict: Verdict, what: impl Into<String>) -> Check {
    Check { verdict, what: what.into() }
}

/// Runs every check; the caller prints them and fails if any failed.
pub async fn run(settings: &Settings) -> Vec<Check> {
    let mut checks = Vec::new();
    let token = match crate::read_token(&settings.token_file) {
        Ok(token) => {
            checks
                .push(check(Verdict::Ok, format!("token file {} (permissions tight)", settings.token_file.display())));
            Some(token)
        }
        Err(e) => {
            checks.push(check(Verdict::Fail, format!("{e:#}")));
            None
        }
    };
    if let Some(token) = token {
        checks.extend(gateway(settings, token).await);
    }
    let scripts = match Scripts::load(&settings.scripts) {
        Ok(scripts) => {
            checks.push(check(
                Verdict::Ok,
                format!("scripts file {}: {} script(s)", settings.scripts.display(), scripts.scripts.len()),
            ));
            checks.extend(commands(&scripts));
            Some(scripts)
        }
        Err(e) => {
            checks.push(check(Verdict::Fail, e.to_string()));
            None
        }
    };
    let xcodes = crate::node_xcodes(settings, scripts.as_ref());
    checks.push(xcodes_check(settings, &xcodes));
    checks.push(work_dir(&settings.work_dir));
    checks.push(disk(&settings.work_dir));
    checks
}

async fn gateway(settings: &Settings, token: secrecy::SecretString) -> Vec<Check> {
    let ca = settings.ca_file.as_ref().map(|p| format!(" trusting {}", p.display())).unwrap_or_default();
    let gateway =
        match Gateway::new(&settings.gateway, token, settings.ca_file.as_deref(), settings.client_identity.as_ref()) {
            Ok(gateway) => gateway,
            Err(e) => return vec![check(Verdict::Fail, format!("{e}"))],
        };
    if let Err(e) = gateway.healthy().await {
        return vec![check(Verdict::Fail, format!("gateway {}{ca}: {e}", settings.gateway))];
    }
    let reached = check(Verdict::Ok, format!("gateway {} reachable{ca}", settings.gateway));
    let accepted = match gateway.check_token().await {
        Ok(()) => check(Verdict::Ok, "the gateway accepts the pool token"),
        Err(e) => check(Verdict::Fail, format!("the gateway refuses the pool token: {e}")),
    };
    vec![reached, accepted]
}

/// Whether `program` can be run: a path must be an executable file; a bare name must be one on
/// `PATH`.
fn executable(program: &str) -> Result<PathBuf, String> {
    let runnable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let path = PathBuf::from(program);
        return match std::fs::metadata(&path) {
            Err(_) => Err(format!("{program} does not exist")),
            Ok(_) if !runnable(&path) => Err(format!("{program} is not executable (chmod +x {program})")),
            Ok(_) => Ok(path),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| runnable(p))
        .ok_or_else(|| format!("`{program}` is not on PATH ({})", path.to_string_lossy()))
}

fn commands(scripts: &Scripts) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut each = |what: String, command: &[String]| {
        checks.push(match executable(&command[0]) {
            Ok(path) => check(Verdict::Ok, format!("{what} runs {}", path.display())),
            Err(problem) => check(Verdict::Fail, format!("{what}: {problem}")),
        });
    };
    for (name, script) in &scripts.scripts {
        each(format!("script `{name}`"), &script.command);
    }
    if let Some(hook) = &scripts.hooks.before_build {
        each("hook before_build".into(), hook);
    }
    if let Some(hook) = &scripts.hooks.after_build {
        each("hook after_build".into(), hook);
    }
    checks
}

fn xcodes_check(settings: &Settings, xcodes: &[Xcode]) -> Check {
    if xcodes.is_empty() {
        let searched = settings
            .xcode_search_dir
            .as_ref()
            .map_or("no folder searched".to_owned(), |d| format!("none in {}", d.display()));
        return check(Verdict::Warn, format!("no Xcode ({searched}): builds that require one go to other nodes"));
    }
    let missing: Vec<&Xcode> = xcodes.iter().filter(|x| !Path::new(&x.developer_dir()).is_dir()).collect();
    let listed: Vec<String> = xcodes.iter().map(|x| format!("{} at {}", x.version, x.path)).collect();
    if let Some(x) = missing.first() {
        return check(Verdict::Fail, format!("Xcode {}: {} is not a folder", x.version, x.developer_dir()));
    }
    check(Verdict::Ok, format!("Xcodes: {}", listed.join(", ")))
}

fn work_dir(dir: &Path) -> Check {
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    let writable = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&probe, b"ok"));
    let _ = std::fs::remove_file(&probe);
    match writable {
        Ok(()) => check(Verdict::Ok, format!("work dir {} is writable", dir.display())),
        Err(e) => check(Verdict::Fail, format!("work dir {} is not writable: {e}", dir.display())),
    }
}

fn disk(dir: &Path) -> Check {
    match rustix::fs::statvfs(dir) {
        Ok(stat) => {
            let free = stat.f_bavail.saturating_mul(stat.f_frsize);
            let gib = free as f64 / (1024.0 * 1024.0 * 1024.0);
            let verdict = if free < LOW_DISK_BYTES { Verdict::Warn } else { Verdict::Ok };
            check(verdict, format!("{gib:.1} GiB free in {}", dir.display()))
        }
        Err(e) => check(Verdict::Warn, format!("cannot read the free disk of {}: {e}", dir.display())),
    }
}

/// Runs every check and prints them; fails if any failed (`meshgate-worker doctor`,
/// `meshgate worker doctor`).
pub async fn report(settings: &Settings) -> anyhow::Result<()> {
    let checks = run(settings).await;
    print!("{}", table(&checks));
    let failed = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed");
    }
    Ok(())
}

/// One line per check, as printed.
pub fn table(checks: &[Check]) -> String {
    checks
        .iter()
        .map(|c| {
            let word = match c.verdict {
                Verdict::Ok => "ok  ",
                Verdict::Warn => "warn",
                Verdict::Fail => "FAIL",
            };
            format!("{word}  {}\n", c.what)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_without_its_execute_bit_is_named_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("build.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let error = executable(script.to_str().unwrap()).unwrap_err();
        assert!(error.contains("is not executable (chmod +x"), "{error}");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(executable(script.to_str().unwrap()).unwrap(), script);
        assert!(executable("sh").is_ok());
        assert!(executable("no-such-program-here").unwrap_err().contains("is not on PATH"));
        assert!(executable("/no/such/file").unwrap_err().contains("does not exist"));
    }
}
