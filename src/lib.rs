//! meshgate: the shell around the pure core.
//!
//! - [`config`]: layered configuration, validated at start.
//! - [`secrets`]: token files, redaction, constant-time comparison.
//! - [`store`]: the event log trait and its SQLite backend.
//! - [`ingest`]: the delivery command handler (decide, append, retry on conflict).
//! - [`projector`]: live projections with checkpoints.
//! - [`http`]: the webhook, read API and health endpoints.
//! - [`app`]: wiring it all together.
//! - [`cli`]: the `meshgate` commands.

pub mod app;
pub mod cli;
pub mod config;
pub mod http;
pub mod ingest;
pub mod projector;
pub mod secrets;
pub mod store;
