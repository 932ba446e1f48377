//! One integration-test binary: real routers, real SQLite files in temp dirs, real `meshgate`
//! processes on free loopback ports.

mod admin_actions;
mod audit;

mod bench;
mod builds_api;
mod chaos;
mod config;
mod dashboard;
mod demo;
mod deploy;
pub mod esdb;
mod frozen_logs;
mod full_disk;
mod ha;
mod helpers;
mod hostile;
mod idempotency;
pub mod matrix;
mod metrics;
mod migrate;
mod nodes;
mod nodes_view;
mod openapi;
mod outbound;
mod pki;
mod postgres;
mod process;
mod quickstart;
mod reconcile;
mod replay;
mod rotation;
mod scenarios;
mod selftest;
mod sinks;
pub mod stand_in;
mod store;
mod store_esdb;
mod store_postgres;
mod stream_index;
mod tls;
mod two_gateways;
mod upgrade;
mod webhook;
pub mod workers;
mod youtrack;
