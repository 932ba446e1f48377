//! A gateway process as the measurements start it: `meshgate init`'s layout (a configuration folder
//! beside the data folder, neither the working directory) and `meshgate serve` on a free loopback
//! port, optionally under a wrapper (`valgrind`). Linux only (memory and CPU come from `/proc`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A configuration folder and a data folder, as `meshgate init` lays them out.
pub(crate) struct Site {
    pub root: PathBuf,
    pub config: PathBuf,
    pub data: PathBuf,
}

impl Site {
    pub(crate) fn create(root: &Path) -> anyhow::Result<Site> {
        let config_dir = root.join("etc");
        let data = root.join("data");
        let config = config_dir.join("meshgate.toml");
        if !config.exists() {
            let status = Command::new(crate::gateway_binary()?)
                .arg("init")
                .arg(&config_dir)
                .arg("--data-dir")
                .arg(&data)
                .stdout(Stdio::null())
                .status()?;
            anyhow::ensure!(status.success(), "meshgate init failed");
        }
        Ok(Site { root: root.to_owned(), config, data })
    }

    pub(crate) fn log(&self) -> PathBuf {
        self.data.join("events.sqlite")
    }

    pub(crate) fn webhook_token(&self) -> anyhow::Result<String> {
        let path = self.config.with_file_name("secrets").join("webhook.token");
        Ok(std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?.trim().to_owned())
    }
}

/// A gateway process started as a service manager starts it: its configuration in another
/// folder than the working directory.
pub(crate) struct Running {
    child: Child,
    pub addr: std::net::SocketAddr,
    pub ready_in: Duration,
}

/// Whether `GET /readyz` answers 200.
fn ready(addr: std::net::SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut tcp) = std::net::TcpStream::connect(addr) else { return false };
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut answer = [0u8; 12];
    tcp.write_all(request.as_bytes()).is_ok() && tcp.read_exact(&mut answer).is_ok() && answer.ends_with(b" 200")
}

/// The shipped unit (`docs/deploy/meshgate.service`), read when the benchmark was built.
const UNIT: &str = include_str!("../../docs/deploy/meshgate.service");

/// The variables the shipped unit's `Environment=` lines set: the gateway is measured as it is
/// deployed (the allocator's decay among them).
pub(crate) fn unit_environment() -> anyhow::Result<Vec<(&'static str, &'static str)>> {
    UNIT.lines()
        .filter_map(|line| line.strip_prefix("Environment="))
        .map(|assignment| {
            assignment
                .split_once('=')
                .filter(|(name, value)| !name.is_empty() && !value.contains([' ', '"', '\'']))
                .with_context(|| format!("the unit's Environment={assignment} is not one plain NAME=value"))
        })
        .collect()
}

pub(crate) struct Memory {
    pub rss: u64,
    pub peak: u64,
}

impl Running {
    pub(crate) fn start(site: &Site) -> anyhow::Result<Running> {
        Self::start_under(site, &[], &[])
    }

    /// The same, the gateway run by `wrapper` (a command and its arguments, the gateway's command
    /// line appended), as `valgrind --tool=callgrind` runs it, with `env` set over the defaults:
    /// the environment the shipped systemd unit sets ([`unit_environment`]) and `RUST_LOG=warn`.
    /// Metrics are served, as deployments serve them, on a free port.
    pub(crate) fn start_under(site: &Site, wrapper: &[OsString], env: &[(&str, &str)]) -> anyhow::Result<Running> {
        use std::io::BufRead;
        let started = Instant::now();
        let gateway = crate::gateway_binary()?;
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(gateway);
                command
            }
            None => Command::new(gateway),
        };
        let mut child = command
            .arg("--config")
            .arg(&site.config)
            .arg("serve")
            .current_dir(&site.root)
            .envs(unit_environment()?)
            .env("MESHGATE_SERVER__LISTEN", "127.0.0.1:0")
            .env("MESHGATE_METRICS__LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut stdout = std::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
        let mut addr = None;
        for line in stdout.by_ref() {
            if let Some(rest) = line?.strip_prefix("meshgate listening on http://") {
                addr = Some(rest.split('/').next().unwrap_or_default().parse()?);
                break;
            }
        }
        let Some(addr) = addr else { bail!("the gateway exited before listening: {:?}", child.wait()?) };
        // Whatever the gateway prints later is read and let go: a pipe nobody reads would fill and
        // stop it, a closed one would fail its next line.
        std::thread::spawn(move || stdout.map_while(Result::ok).for_each(drop));
        // Polling is what a load balancer does; this is a benchmark, not a test.
        while !ready(addr) {
            if let Some(status) = child.try_wait()? {
                bail!("the gateway exited before it was ready: {status}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Running { child, addr, ready_in: started.elapsed() })
    }

    pub(crate) fn memory(&self) -> anyhow::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        Ok(Memory { rss: field("VmRSS:"), peak: field("VmHWM:") })
    }

    /// CPU seconds each thread name has used so far (threads of one name summed).
    pub(crate) fn cpu_by_thread(&self) -> Vec<(String, f64)> {
        let mut by_name: Vec<(String, f64)> = Vec::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.child.id())) else { return by_name };
        for task in tasks.flatten() {
            let Some((name, seconds)) = cpu_of(&task.path()) else { continue };
            match by_name.iter_mut().find(|(n, _)| *n == name) {
                Some((_, total)) => *total += seconds,
                None => by_name.push((name, seconds)),
            }
        }
        by_name
    }

    /// SIGTERM, then the time until the process has exited.
    pub(crate) fn stop(mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let exit = self.child.wait()?;
        let elapsed = started.elapsed();
        anyhow::ensure!(exit.success(), "the gateway exited with {exit} after SIGTERM");
        Ok(elapsed)
    }

    pub(crate) fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The name and CPU seconds (user and system) of the process or thread at `/proc/…/<dir>`.
pub(crate) fn cpu_of(dir: &Path) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // `pid (name) state ...`: the name may hold spaces; fields 14 and 15 are utime, stime.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let fields: Vec<&str> = stat.get(close + 2..)?.split(' ').collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // Clock ticks per second: 100 on Linux unless the kernel says otherwise (it does not here).
    Some((stat[open + 1..close].to_owned(), (ticks(11) + ticks(12)) / 100.0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_gateway_is_measured_with_the_units_environment() {
        let environment = super::unit_environment().unwrap();
        assert!(environment.contains(&("MALLOC_CONF", "dirty_decay_ms:1000,muzzy_decay_ms:0")), "{environment:?}");
    }
}
