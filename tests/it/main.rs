//! One integration-test binary: real routers, real SQLite files in temp dirs, real `meshgate`
//! processes on free loopback ports.

mod config;
mod helpers;
mod idempotency;
mod matrix;
mod nodes;
mod outbound;
mod process;
mod rotation;
mod scenarios;
mod store;
mod webhook;
mod workers;
