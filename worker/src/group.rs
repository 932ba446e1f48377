//! A build's processes: the script (or a hook) runs as the leader of a process group of its own,
//! so everything it starts can be signalled at once. Stopping is SIGTERM to the group, up to
//! `grace` for it to go, then SIGKILL to whatever is left (`xcodebuild` gets to shut its
//! simulators down). Signals go through rustix: no `kill` program, no GNU-only arguments.

use std::io;
use std::time::Duration;

use meshgate_domain::node_api::StopSignal;
use rustix::process::{kill_process_group, test_kill_process_group, Pid, Signal};
use tokio::process::Child;

/// How often a group that is not our child is checked while it winds down (its members are the
/// script's children: only `kill(-pgid, 0)` can tell whether any is left).
const CHECK_EVERY: Duration = Duration::from_millis(50);

/// A running process group, named by its leader.
#[derive(Debug, Clone, Copy)]
pub struct Group(Pid);

impl Group {
    /// The group a child spawned with `process_group(0)` leads; none once it has been waited for.
    pub fn of(child: &Child) -> Option<Group> {
        child.id().and_then(|id| Pid::from_raw(id as i32)).map(Group)
    }

    fn signal(self, signal: Signal) -> io::Result<()> {
        kill_process_group(self.0, signal).map_err(io::Error::from)
    }

    /// Whether any process of the group is left.
    pub fn alive(self) -> bool {
        test_kill_process_group(self.0).is_ok()
    }

    /// Waits until the group is gone, or `limit` has passed; says whether it is gone.
    async fn gone_within(self, limit: Duration) -> bool {
        let until = tokio::time::Instant::now() + limit;
        while self.alive() {
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(CHECK_EVERY).await;
        }
        true
    }
}

/// Stops a running script's group: SIGTERM, then SIGKILL for what is left after `grace`. Says
/// whether SIGTERM was enough for the script itself. The leader is waited for (no zombie).
pub async fn stop(child: &mut Child, grace: Duration) -> StopSignal {
    let Some(group) = Group::of(child) else { return StopSignal::Terminated };
    let _ = group.signal(Signal::TERM);
    let deadline = tokio::time::Instant::now() + grace;
    let leader_exited = tokio::time::timeout_at(deadline, child.wait()).await.is_ok();
    // The rest of the group gets what is left of the grace.
    let rest_gone =
        leader_exited && group.gone_within(deadline.saturating_duration_since(tokio::time::Instant::now())).await;
    if !rest_gone {
        let _ = group.signal(Signal::KILL);
        let _ = child.wait().await;
    }
    if leader_exited {
        StopSignal::Terminated
    } else {
        StopSignal::Killed
    }
}

/// After a script exited by itself: processes it left behind in its group (a stray `tail -f`, a
/// helper that never quits) are stopped the same way, so they neither outlive the build nor hold
/// its output open. Says whether any was left.
pub async fn sweep(group: Group, grace: Duration) -> bool {
    if !group.alive() {
        return false;
    }
    let _ = group.signal(Signal::TERM);
    if !group.gone_within(grace).await {
        let _ = group.signal(Signal::KILL);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;
    use tokio::process::Command;

    fn spawn(script: &str) -> Child {
        Command::new("sh")
            .args(["-c", script])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// Waits for the script's first line: it has set its traps.
    async fn ready(child: &mut Child) {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ready"));
    }

    #[tokio::test]
    async fn a_script_that_honours_sigterm_is_terminated_within_the_grace() {
        let mut child = spawn("trap 'exit 143' TERM; echo ready; while :; do sleep 0.1; done");
        ready(&mut child).await;
        let group = Group::of(&child).unwrap();
        assert_eq!(stop(&mut child, Duration::from_secs(10)).await, StopSignal::Terminated);
        assert!(!group.alive());
    }

    #[tokio::test]
    async fn a_script_that_ignores_sigterm_is_killed_after_the_grace_with_its_children() {
        // The child shell ignores TERM too: only SIGKILL to the whole group ends both.
        let mut child = spawn("trap '' TERM; sh -c \"trap '' TERM; while :; do sleep 0.1; done\" & echo ready; wait");
        ready(&mut child).await;
        let group = Group::of(&child).unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(stop(&mut child, Duration::from_millis(300)).await, StopSignal::Killed);
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(group.gone_within(Duration::from_secs(5)).await, "the group's other member outlived SIGKILL");
    }

    #[tokio::test]
    async fn what_a_finished_script_left_behind_is_swept() {
        let mut child = spawn("sh -c 'while :; do sleep 0.1; done' & echo ready");
        ready(&mut child).await;
        let group = Group::of(&child).unwrap();
        child.wait().await.unwrap();
        assert!(sweep(group, Duration::from_secs(5)).await, "the stray loop was left running");
        assert!(group.gone_within(Duration::from_secs(5)).await);
        assert!(!sweep(group, Duration::from_secs(5)).await);
    }
}
