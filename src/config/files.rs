//! Every file the configuration names, read as the gateway (or the worker) would read it: token,
//! key and URL files with their permission checks, the certificate pair, CA bundles, the worker's
//! scripts. `meshgate config check` and the self-test ask this.

use std::path::{Path, PathBuf};

use super::Config;
use crate::secrets::Token;

impl Config {
    /// Every file the configuration names that the gateway (or the worker) would refuse.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !cfg!(feature = "eventstoredb") && self.store.backend == super::StoreBackend::EventStoreDb {
            problems.push(super::EVENTSTOREDB_NOT_BUILT_IN.to_owned());
        }
        let mut secret = |key: String, path: &Path, generated: bool| {
            if generated && !path.exists() {
                return; // written on first start
            }
            if let Err(e) = Token::read(path) {
                problems.push(format!("{key}: {}", crate::report::chain(&e)));
            }
        };
        if self.webhook.token_files.is_empty() {
            secret("webhook.token_files".into(), &self.webhook_token_files()[0], true);
        }
        for (i, path) in self.webhook.token_files.iter().enumerate() {
            secret(format!("webhook.token_files[{i}]"), path, false);
        }
        secret("admin.token_file".into(), &self.admin_token_file(), self.admin.token_file.is_none());
        secret("nodes.token_file".into(), &self.nodes_token_file(), self.nodes.token_file.is_none());
        let optional: [(&str, &Option<PathBuf>); 6] = [
            ("admin.previous_token_file", &self.admin.previous_token_file),
            ("nodes.previous_token_file", &self.nodes.previous_token_file),
            ("youtrack.token_file", &self.youtrack.token_file),
            ("youtrack.previous_token_file", &self.youtrack.previous_token_file),
            ("pager.routing_key_file", &self.pager.routing_key_file),
            ("worker.token_file", &self.worker.token_file),
        ];
        for (key, path) in optional {
            if let Some(path) = path {
                secret(key.into(), path, false);
            }
        }
        for (i, chat) in self.chat.iter().enumerate() {
            let files = [
                ("url_file", &chat.url_file),
                ("token_file", &chat.token_file),
                ("signing_secret_file", &chat.signing_secret_file),
            ];
            for (key, path) in files {
                if let Some(path) = path {
                    secret(format!("chat[{i}].{key} (`{}`)", chat.name), path, false);
                }
            }
        }
        if let Some(files) = self.tls_files() {
            if let Err(e) = crate::tls::server_config(&files) {
                problems.push(format!("server.tls_cert_file / server.tls_key_file: {}", crate::report::chain(&e)));
            }
        }
        if let Some((files, Some(clients))) = self.node_tls() {
            if let Err(e) = crate::tls::node_server_config(&files, &clients) {
                problems.push(format!("nodes.client_ca_file: {}", crate::report::chain(&e)));
            }
        }
        for (key, path) in [("outbound.ca_file", &self.outbound.ca_file), ("worker.ca_file", &self.worker.ca_file)] {
            if let Some(path) = path {
                if let Err(e) = crate::tls::ca_bundle(path) {
                    problems.push(format!("{key}: {}", crate::report::chain(&e)));
                }
            }
        }
        if let Some(path) = &self.worker.scripts {
            if let Err(e) = meshgate_worker::scripts::Scripts::load(path) {
                problems.push(format!("worker.scripts: {}", crate::report::chain(&e)));
            }
        }
        problems
    }

    /// Bodies an EventStoreDB log cannot take, in words.
    pub fn too_large_bodies(&self, largest: usize) -> String {
        format!(
            "webhook.max_body_bytes ({}) is above what one append to the log may hold (store.max_append_bytes {}): \
             deliveries larger than about {largest} bytes will be refused with 413; raise the server's MaxAppendSize \
             and store.max_append_bytes, or lower webhook.max_body_bytes",
            self.webhook.max_body_bytes, self.store.max_append_bytes
        )
    }
}
