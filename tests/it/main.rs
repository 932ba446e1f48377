//! One integration-test binary: real routers, real SQLite files in temp dirs, real `meshgate`
//! processes on free loopback ports.

mod bench;
mod config;
mod demo;
mod deploy;
mod frozen_logs;
mod helpers;
mod idempotency;
mod matrix;
mod nodes;
mod outbound;
mod pki;
mod process;
mod quickstart;
mod reconcile;
mod replay;
mod rotation;
mod scenarios;
mod selftest;
mod sinks;
mod stand_in;
mod store;
mod stream_index;
mod tls;
mod upgrade;
mod webhook;
mod workers;
mod youtrack;
