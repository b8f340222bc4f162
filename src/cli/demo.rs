//! `syncpay demo`: placeholder until the simulator lands.

use clap::Args;

#[derive(Args)]
pub struct DemoArgs {}

pub async fn run(_args: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("demo not built yet")
}
