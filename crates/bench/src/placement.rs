//! `--only placement`: what a placement buys the quiet tenant. Tenant B's exec round trips
//! (`true`) alone and beside tenant A's noise, with B `shared` and then `dedicated` (one core of
//! its own), for each of A's noises alone and for all of them at once; each pair (alone, with
//! noise) is measured in the same minute, so the ratios compare like with like.

use bulkhead_api::{PlacementMode, PlacementSpec};
use bulkhead_client::Client;
use bulkhead_runtime::cgroup::Cgroups;
use serde::Serialize;

use crate::load::{self, Noise, NoisyNeighbour};

/// One row: a placement of B beside one noise of A.
#[derive(Debug, Serialize)]
pub struct Row {
    /// B's placement: `shared` or `dedicated`.
    pub placement: String,
    /// A's noise: one name, or `all` for every noise at once.
    pub noise: String,
    pub figures: NoisyNeighbour,
}

/// The figures of `--only placement`.
#[derive(Debug, Serialize)]
pub struct PlacementReport {
    pub rows: Vec<Row>,
    /// Why a dedicated row is missing (the host has a single core, say).
    pub dedicated_skipped: Option<String>,
}

/// Every row; `noises` are A's noises measured one at a time, then together.
pub async fn measure(
    admin: &Client,
    cgroups: &Cgroups,
    execs: usize,
    noises: &[&Noise],
) -> anyhow::Result<PlacementReport> {
    let mut sets: Vec<(String, Vec<&Noise>)> = noises.iter().map(|n| (n.name.to_owned(), vec![*n])).collect();
    if noises.len() > 1 {
        sets.push(("all".into(), noises.to_vec()));
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let dedicated_skipped = (cores < 2).then(|| format!("this host has {cores} core: one is always kept shared"));
    let mut placements = vec![("shared", None)];
    if dedicated_skipped.is_none() {
        let spec = PlacementSpec { mode: PlacementMode::Dedicated, cpus: Some(1), memory_bytes: None };
        placements.push(("dedicated", Some(spec)));
    }
    let mut rows = Vec::new();
    for (name, set) in &sets {
        for (placement, spec) in &placements {
            eprintln!("  B {placement}, A's {name} ...");
            let figures = load::placed_noisy_neighbour(admin, cgroups, execs, set, spec.clone()).await?;
            rows.push(Row { placement: (*placement).into(), noise: name.clone(), figures });
        }
    }
    Ok(PlacementReport { rows, dedicated_skipped })
}

pub fn print(r: &PlacementReport) {
    println!("\nnoisy neighbour by placement: tenant B's exec round trip (`true`), alone and beside tenant A's noise");
    println!(
        "{:<10} {:<11} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "B", "A's noise", "p50 alone", "p50 noisy", "p99 alone", "p99 noisy", "p50 x", "p99 x"
    );
    for row in &r.rows {
        let f = &row.figures;
        println!(
            "{:<10} {:<11} {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>7.2}x {:>7.2}x",
            row.placement,
            row.noise,
            f.b_alone.p50_ms,
            f.b_with_noisy_a.p50_ms,
            f.b_alone.p99_ms,
            f.b_with_noisy_a.p99_ms,
            f.p50_ratio,
            f.p99_ratio
        );
    }
    if let Some(why) = &r.dedicated_skipped {
        println!("(dedicated not measured: {why})");
    }
}
