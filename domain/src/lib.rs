//! meshgate's pure core.
//!
//! Everything here is a function of its inputs: no I/O, no clocks, no random numbers. Time and ids
//! are passed in by the shell (`meshgate` in `src/`).
//!
//! - [`json`]: a JSON tree borrowing from the received bytes, read once per delivery.
//! - [`payload`]: parsing the bodies YouTrack's Webhook Triggers app sends.
//! - [`fingerprint`]: the hash that tells two deliveries of one change apart from two changes.
//! - [`trigger`]: configured rules mapping a transition to a build request.
//! - [`audit`]: which recorded events answer an audit question.
//! - [`event`]: every fact the gateway records, with its stable type name and schema version.
//! - [`build`]: the build aggregate, an enum state machine with `decide` and `evolve`.
//! - [`ingest`]: deciding what a delivery appends, given what the log already holds.
//! - [`intent`]: what one transition does to one intent (start, fold, or nothing), however it came.
//! - [`notification`]: one notification's lifecycle: pending, attempting, delivered or abandoned.
//! - [`notify`]: chat lines and tracker comments about builds.
//! - [`retry`]: backoff with full jitter, `Retry-After` hints, retryable answers.
//! - [`rfc3339`]: times written and read as chrono does, at a fraction of the cost.
//! - [`reconcile`]: which transitions in YouTrack's activity stream a trigger watches.
//! - [`node_api`]: what a build node's agent and the gateway say to each other.
//! - [`xcode`]: which Xcode a build requires and a node runs it with.

pub mod action;
pub mod audit;
pub mod build;
pub mod event;
pub mod fingerprint;
pub mod ingest;
pub mod intent;
pub mod json;
pub mod node_api;
pub mod notification;
pub mod notify;
pub mod pause;
pub mod payload;
pub mod reconcile;
pub mod retry;
pub mod rfc3339;
pub mod stream;
pub mod trigger;
pub mod writeback;
pub mod xcode;

pub use build::{BuildCommand, BuildError, BuildState, ReportedOutcome};
pub use event::{Event, Recorded};
pub use fingerprint::Fingerprint;
pub use payload::{Delivery, EventKind, PayloadError};
pub use stream::ExpectedVersion;
pub use trigger::{IntentKey, Trigger};
