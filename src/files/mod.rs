//! The files builds leave on the gateway, beside the event log: their logs (sent live while they
//! run, then whole) and their artifacts. The log's events say what happened to a build; these
//! files hold what it printed and produced. Each gateway keeps the files uploaded to it.

pub mod artifacts;
pub mod logs;
pub mod retention;

pub use artifacts::{ArtifactError, Artifacts};
pub use logs::{BuildLogs, LogError};
