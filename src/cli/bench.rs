//! `meshgate bench`: see docs/benchmarks.md.

use clap::Args;

#[derive(Debug, Args)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
