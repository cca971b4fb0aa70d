//! `--only placement`: what a placement buys the quiet tenant. Tenant B's exec round trips
//! (`true`) alone and beside tenant A's noise, with B `shared` and then `dedicated` (one core of
//! its own), for each of A's noises alone and for all of them at once; each pair (alone, with
//! noise) is measured in the same minute, so the ratios compare like with like. B `shared` is
//! measured twice, on two servers: one with its control plane unweighted (in the cgroup the
//! server was started in, `--control-plane-cpu-weight 0`), one with the default weight.

use bulkhead_api::{PlacementMode, PlacementSpec};
use bulkhead_client::Client;
use bulkhead_runtime::cgroup::Cgroups;
use serde::Serialize;

use crate::load::{self, Noise, NoisyNeighbour};

/// Where the server's own process runs while a row is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlPlane {
    /// In the cgroup the server was started in (`--control-plane-cpu-weight 0`).
    Unweighted,
    /// In `<prefix>.control-plane` with [`bulkhead_runtime::cgroup::CONTROL_PLANE_CPU_WEIGHT`].
    Weighted,
}

/// One row: a placement of B beside one noise of A.
#[derive(Debug, Serialize)]
pub struct Row {
    /// B's placement: `shared` or `dedicated`.
    pub placement: String,
    /// The control plane's cgroup during the row.
    pub control_plane: ControlPlane,
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

impl PlacementReport {
    /// The rows of an unweighted run (shared only) beside a weighted one, noise by noise.
    pub fn merge(unweighted: PlacementReport, weighted: PlacementReport) -> PlacementReport {
        let mut rows = unweighted.rows;
        rows.extend(weighted.rows);
        let order = |r: &Row| rows_noise_order(&r.noise);
        rows.sort_by_key(|r| (order(r), r.placement != "shared", r.control_plane == ControlPlane::Weighted));
        PlacementReport { rows, dedicated_skipped: weighted.dedicated_skipped }
    }
}

/// Noises in the order they are measured, `all` last.
fn rows_noise_order(noise: &str) -> (bool, usize) {
    let at = load::NOISES.iter().position(|n| n.name == noise).unwrap_or(usize::MAX);
    (noise == "all", at)
}

/// Every row; `noises` are A's noises measured one at a time, then together. With the control
/// plane `Unweighted`, B is measured `shared` alone (the baseline the weight is judged by).
pub async fn measure(
    admin: &Client,
    cgroups: &Cgroups,
    execs: usize,
    noises: &[&Noise],
    control_plane: ControlPlane,
) -> anyhow::Result<PlacementReport> {
    let mut sets: Vec<(String, Vec<&Noise>)> = noises.iter().map(|n| (n.name.to_owned(), vec![*n])).collect();
    if noises.len() > 1 {
        sets.push(("all".into(), noises.to_vec()));
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let dedicated_skipped = (cores < 2).then(|| format!("this host has {cores} core: one is always kept shared"));
    let mut placements = vec![("shared", None)];
    if dedicated_skipped.is_none() && control_plane == ControlPlane::Weighted {
        let spec = PlacementSpec { mode: PlacementMode::Dedicated, cpus: Some(1), memory_bytes: None };
        placements.push(("dedicated", Some(spec)));
    }
    let mut rows = Vec::new();
    for (name, set) in &sets {
        for (placement, spec) in &placements {
            eprintln!("  B {placement}, A's {name}, control plane {control_plane:?} ...");
            let figures = load::placed_noisy_neighbour(admin, cgroups, execs, set, spec.clone()).await?;
            rows.push(Row { placement: (*placement).into(), control_plane, noise: name.clone(), figures });
        }
    }
    Ok(PlacementReport { rows, dedicated_skipped })
}

pub fn print(r: &PlacementReport) {
    println!("\nnoisy neighbour by placement: tenant B's exec round trip (`true`), alone and beside tenant A's noise");
    println!(
        "{:<10} {:<14} {:<11} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "B", "control plane", "A's noise", "p50 alone", "p50 noisy", "p99 alone", "p99 noisy", "p50 x", "p99 x"
    );
    for row in &r.rows {
        let f = &row.figures;
        let plane = match row.control_plane {
            ControlPlane::Unweighted => "unweighted",
            ControlPlane::Weighted => "weighted",
        };
        println!(
            "{:<10} {:<14} {:<11} {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>7.2}x {:>7.2}x",
            row.placement,
            plane,
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
