//! meshgate: the shell around the pure core.
//!
//! - [`config`]: layered configuration, validated at start.
//! - [`secrets`]: token files, redaction, constant-time comparison.
//! - [`store`]: the event log trait and its SQLite backend.
//! - [`ingest`]: the delivery command handler (decide, append, retry on conflict).
//! - [`builds`]: commands on one build (claims, heartbeats, results) with the same protocol.
//! - [`reaper`]: requeues builds whose node stopped heartbeating.
//! - [`reconcile`]: sweeps of YouTrack's activity stream for transitions no webhook brought.
//! - [`youtrack`]: YouTrack's REST API as the gateway reads it.
//! - [`replay`]: ignored deliveries decided again under today's triggers.
//! - [`selftest`]: what a rotation can break, checked without starting a build.
//! - [`projector`]: live projections, saved to the read model.
//! - [`readmodel`]: the projections saved in a SQLite file beside the log.
//! - [`http`]: the webhook, read API and health endpoints.
//! - [`app`]: wiring it all together.
//! - [`links`]: signed, absolute links to build logs.
//! - [`outbound`]: chat lines and tracker comments, with retries, every attempt an event.
//! - [`files`]: build logs (live and whole) and artifacts on the gateway's disk.
//! - [`cli`]: the `meshgate` commands.
//! - [`tls`]: HTTPS in and out (rustls).
//! - [`report`]: errors with their whole chain of causes.

pub mod app;
pub mod builds;
pub mod cli;
pub mod config;
pub mod elected;
pub mod files;
pub mod http;
pub mod ingest;
pub mod links;
pub mod metrics;
pub mod outbound;
pub mod projector;
pub mod readmodel;
pub mod reaper;
pub mod rebuild;
pub mod reconcile;
pub mod replay;
pub mod report;
pub mod scrape;
pub mod secrets;
pub mod selftest;
pub mod store;
pub mod tls;
pub mod youtrack;
