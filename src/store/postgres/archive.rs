//! What `meshgate log archive` does to the log in PostgreSQL: the rows of archived builds
//! removed, a whole build per transaction, beside running gateways. The head row keeps the last
//! position given, so a removed position is never given again.

use super::target::Target;
use crate::store::StoreError;

/// Most rows removed in one transaction (a larger build goes alone in its own).
const ROWS_PER_TRANSACTION: usize = 2_000;

/// Removes the rows at `builds`' positions; returns the rows removed.
pub async fn remove(target: &Target, builds: &[Vec<u64>]) -> Result<usize, StoreError> {
    let mut client = target.connect().await?;
    let failed = |e: tokio_postgres::Error| StoreError::caused("cannot remove archived events", e);
    let mut removed = 0;
    let mut chunk: Vec<i64> = Vec::new();
    for (i, build) in builds.iter().enumerate() {
        chunk.extend(build.iter().map(|p| *p as i64));
        let next = builds.get(i + 1).map_or(0, Vec::len);
        if next == 0 || chunk.len() + next > ROWS_PER_TRANSACTION {
            let tx = client.transaction().await.map_err(failed)?;
            let n =
                tx.execute("DELETE FROM meshgate_events WHERE position = ANY($1)", &[&chunk]).await.map_err(failed)?;
            tx.commit().await.map_err(failed)?;
            removed += n as usize;
            chunk.clear();
        }
    }
    Ok(removed)
}
