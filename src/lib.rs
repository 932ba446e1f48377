//! meshgate: the shell around the pure core (`meshgate-domain`, `meshgate-projections`). Its
//! modules sit in layers (docs/ARCHITECTURE.md, checked by `tests/it/architecture.rs`), lowest
//! first:
//!
//! - [`report`], [`secrets`], [`links`], [`metrics`]: errors with their whole chain of causes;
//!   token files, redaction, constant-time comparison; signed links to logs and artifacts; metric
//!   names and the recorder.
//! - [`tls`]: HTTPS in and out (rustls).
//! - [`config`]: layered configuration, validated at start, and the files it names.
//! - [`store`]: the event log (SQLite embedded, PostgreSQL or EventStoreDB shared), the one
//!   decide-and-append loop, opening the configured log.
//! - [`readmodel`], [`builds`], [`ingest`]: the projections saved beside the log; commands on one
//!   build; the delivery command handler.
//! - [`projector`]: live projections, following the log.
//! - [`files`], [`outbound`], [`rebuild`], [`scrape`]: build logs and artifacts on disk; chat
//!   lines, tracker comments and pages, every attempt an event; the read model rebuilt from the
//!   log; the gauges and listener Prometheus scrapes.
//! - [`youtrack`], [`reaper`], [`replay`]: YouTrack's REST API; builds whose node stopped
//!   heartbeating; ignored deliveries decided again under today's triggers.
//! - [`reconcile`], [`selftest`]: sweeps of YouTrack's activity stream; what a rotation can break.
//! - [`elected`]: the work done once per team of gateways.
//! - [`http`]: the webhook, the node API, the admin API, the dashboard, health checks.
//! - [`app`]: a running gateway, wired.
//! - [`cli`]: the `meshgate` commands.

pub mod actions;
pub mod app;
pub mod builds;
pub mod cli;
pub mod config;
pub mod elected;
pub mod files;
pub mod http;
pub mod ingest;
pub mod lane_watch;
pub mod links;
pub mod metrics;
pub mod outbound;
pub mod polls;
pub mod projector;
pub mod reactions;
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
