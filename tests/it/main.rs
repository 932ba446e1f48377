//! One integration-test binary: real routers, real SQLite files in temp dirs, real `meshgate`
//! processes on free loopback ports.

mod admin_actions;
mod agent;
mod architecture;
mod archive;
mod audit;
mod backup;

mod bench;
mod builds_api;
mod chaos;
mod config;
mod dashboard;
mod demo;
mod deploy;
#[cfg(feature = "eventstoredb")]
pub mod esdb;
#[cfg(feature = "eventstoredb")]
mod esdb_server;
mod frozen_logs;
mod full_disk;
mod ha;
mod helpers;
mod hostile;
mod idempotency;
mod lane_watch;
mod mac_node;
pub mod matrix;
mod matrix_reactions;
mod metrics;
mod migrate;
mod node_files;
mod nodes;
mod nodes_view;
mod openapi;
mod outbound;
mod pause;
mod pki;
mod postgres;
mod postgres_tls;
mod process;
mod quickstart;
mod reconcile;
mod replay;
mod rotation;
mod scenarios;
mod selftest;
mod sinks;
mod slack;
mod sources;
pub mod stand_in;
mod stats;
mod store;
#[cfg(feature = "eventstoredb")]
pub mod store_esdb;
mod store_postgres;
mod stream_index;
mod tls;
mod two_gateways;
mod upgrade;
mod waiting;
mod webhook;
pub mod workers;
mod writeback;
mod youtrack;
