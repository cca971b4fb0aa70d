//! The warm pool subcommands: `pool set --image NAME --size N`, `pool list`, `pool rm --image
//! NAME`. A pool keeps N started sandboxes of an image ready in a namespace, so that a create
//! naming the image claims one instead of starting a sandbox; they count against the
//! namespace's quotas. A namespace's admins size the pools of its own images, the platform admin
//! those of public images.

use std::process::ExitCode;

use bulkhead_api::WarmPool;
use clap::Subcommand;

use crate::commands::client;
use crate::output;
use crate::Global;

#[derive(Subcommand)]
pub enum PoolCmd {
    /// Keep SIZE started sandboxes of an image ready to claim (0 removes the pool).
    Set {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// The image: a name or an `img_…` id.
        #[arg(long)]
        image: String,
        /// How many sandboxes to keep ready.
        #[arg(long)]
        size: u64,
    },
    /// The namespace's pools: size, and how many sandboxes are ready and starting.
    List {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
    },
    /// Remove the pool of an image; its ready sandboxes are destroyed.
    Rm {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// The image: a name or an `img_…` id.
        #[arg(long)]
        image: String,
    },
}

const POOL_HEADERS: [&str; 6] = ["IMAGE", "SCOPE", "SIZE", "READY", "STARTING", "UPDATED"];

fn pool_row(p: &WarmPool) -> Vec<String> {
    vec![
        p.image.clone(),
        if p.public { "public" } else { "own" }.to_owned(),
        p.size.to_string(),
        p.ready.to_string(),
        p.starting.to_string(),
        p.updated_at.clone(),
    ]
}

pub async fn pool(cmd: PoolCmd, global: &Global) -> anyhow::Result<ExitCode> {
    let c = client(global)?;
    match cmd {
        PoolCmd::Set { ns, image, size } => {
            let p = c.set_pool(&ns, &image, size).await?;
            output::item(global.json, &p, &POOL_HEADERS, pool_row)?;
        }
        PoolCmd::List { ns } => {
            let pools = c.list_pools(&ns).await?.items;
            output::list(global.json, &pools, &POOL_HEADERS, pool_row)?;
        }
        PoolCmd::Rm { ns, image } => {
            c.delete_pool(&ns, &image).await?;
            output::note(global.json, format_args!("removed the pool of {image}"));
        }
    }
    Ok(ExitCode::SUCCESS)
}
