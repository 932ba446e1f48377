//! Backing the log in PostgreSQL up and restoring it with PostgreSQL's own tools: `pg_dump` of
//! meshgate's tables (custom format, one consistent snapshot, the gateways may keep writing) and
//! `pg_restore` into a database that holds none of them, in one transaction.
//!
//! The tools reach the database as the gateway does: the URL's host, user and database, its
//! `sslmode` (or the gateway's default for the host: `verify-full` off this machine) and
//! `sslrootcert` or `[store] ca_file`; the password goes through `PGPASSWORD`, never on a command
//! line another user could read.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::target::Target;
use crate::store::StoreError;

/// A database as `pg_dump` and `pg_restore` are told of it.
struct Libpq {
    /// The URL without its password, with the `sslmode` the gateway would use.
    url: String,
    password: Option<String>,
    root: Option<PathBuf>,
}

fn libpq(url: &str, ca_file: Option<&Path>) -> Result<(Target, Libpq), StoreError> {
    let target = Target::parse(url, ca_file)?;
    let mut parsed = reqwest::Url::parse(url)
        .map_err(|e| StoreError::caused("the event log's database URL is not a postgres:// URL", e))?;
    let password = parsed.password().map(|p| percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned());
    let _ = parsed.set_password(None);
    let pairs: Vec<(String, String)> =
        parsed.query_pairs().filter(|(k, _)| k != "sslmode").map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let root =
        pairs.iter().find(|(k, _)| k == "sslrootcert").map(|(_, v)| PathBuf::from(v)).or(ca_file.map(Path::to_owned));
    parsed.query_pairs_mut().clear().extend_pairs(&pairs).append_pair("sslmode", target.mode().as_str());
    Ok((target, Libpq { url: parsed.to_string(), password, root }))
}

/// Runs one of PostgreSQL's tools against the database; its error output on failure.
fn run(tool: &str, args: &[&str], db: &Libpq) -> Result<(), StoreError> {
    let mut command = Command::new(tool);
    command.args(args).arg(format!("--dbname={}", db.url));
    if let Some(password) = &db.password {
        command.env("PGPASSWORD", password);
    }
    if let Some(root) = &db.root {
        command.env("PGSSLROOTCERT", root);
    }
    let output = command.output().map_err(|e| {
        StoreError::caused(
            format!(
                "cannot run {tool} (PostgreSQL's client tools, of the server's major version or newer, on the PATH)"
            ),
            e,
        )
    })?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        return Err(StoreError::failed(format!("{tool} failed: {}", said.trim())));
    }
    Ok(())
}

/// The last position the log holds, as its head row says.
async fn head(target: &Target) -> Result<Option<u64>, StoreError> {
    let client = target.connect().await?;
    let exists: Option<String> = client
        .query_one("SELECT to_regclass('meshgate_events')::text", &[])
        .await
        .map_err(|e| StoreError::caused("cannot read the database", e))?
        .get(0);
    if exists.is_none() {
        return Ok(None);
    }
    let last: i64 = client
        .query_one("SELECT last FROM meshgate_head WHERE id = 1", &[])
        .await
        .map_err(|e| StoreError::caused("cannot read the log's head", e))?
        .get(0);
    Ok(Some(last as u64))
}

/// Dumps meshgate's tables into `file`; returns the position the log had reached when the dump
/// began (every event up to it is in the dump).
pub async fn dump(url: &str, ca_file: Option<&Path>, file: &Path) -> Result<u64, StoreError> {
    let (target, db) = libpq(url, ca_file)?;
    let head = head(&target).await?.ok_or_else(|| StoreError::failed("the database holds no meshgate log"))?;
    let out = format!("--file={}", file.display());
    let args = ["--format=custom", "--no-owner", "--no-privileges", "--table=meshgate_*", out.as_str()];
    tokio::task::block_in_place(|| run("pg_dump", &args, &db))?;
    Ok(head)
}

/// Restores `file` (a [`dump`]) into the database, which must hold no meshgate log; returns the
/// position the restored log ends at.
pub async fn restore(url: &str, ca_file: Option<&Path>, file: &Path) -> Result<u64, StoreError> {
    let (target, db) = libpq(url, ca_file)?;
    if head(&target).await?.is_some() {
        return Err(StoreError::failed("the database already holds a meshgate log; restore into an empty one"));
    }
    let args =
        ["--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction", file.to_str().unwrap_or("")];
    tokio::task::block_in_place(|| run("pg_restore", &args, &db))?;
    head(&target).await?.ok_or_else(|| StoreError::failed("pg_restore left no meshgate log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_leaves_the_url_and_the_gateway_s_ssl_mode_joins_it() {
        let (_, db) = libpq("postgres://meshgate:p%40ss@db.internal:5432/meshgate?application_name=x", None).unwrap();
        assert_eq!(db.password.as_deref(), Some("p@ss"));
        assert!(!db.url.contains("p%40ss") && !db.url.contains("p@ss"), "{}", db.url);
        assert!(db.url.ends_with("?application_name=x&sslmode=verify-full"), "{}", db.url);
        let (_, local) =
            libpq("postgres://postgres@127.0.0.1:5432/t?sslmode=require&sslrootcert=/ca.pem", None).unwrap();
        assert!(local.url.ends_with("sslrootcert=%2Fca.pem&sslmode=require"), "{}", local.url);
        assert_eq!(local.root.as_deref(), Some(Path::new("/ca.pem")));
        assert!(libpq("postgres://h/db?sslmode=prefer", None).is_err(), "a mode the gateway refuses");
    }
}
