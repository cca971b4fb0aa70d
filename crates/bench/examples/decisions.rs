//! Authorization decisions per second: `cargo run --release -p bulkhead-bench --example decisions`.
//! `bulkhead bench` reports the 100-policy figure beside Cedar alone; this prints a few more.

// It measures the engine itself, below the decision function.
#![allow(clippy::disallowed_methods)]

use std::time::Instant;

use bulkhead_bench::policy::{cedar_alone_decisions_per_s, engine_decisions_per_s};
use bulkhead_policy::{Engine, PrincipalRef, Request, ResourceRef};

// The engine is asked directly: what is measured is the engine itself.
#[allow(clippy::disallowed_methods)]
fn main() -> anyhow::Result<()> {
    for n in [0, 100, 1000] {
        let rate = engine_decisions_per_s(n, 200_000)?;
        println!("sandbox.exec, {n} custom policies: {rate:.0} decisions/s ({:.2} us each)", 1e6 / rate);
    }
    let rate = cedar_alone_decisions_per_s(100, 2_000)?;
    println!("sandbox.exec, 100 custom policies, Cedar alone: {rate:.0} decisions/s ({:.2} us each)", 1e6 / rate);
    // A request whose deciding built-in has a condition, so Cedar evaluates it.
    let set = Engine::new().builtin();
    let principal =
        PrincipalRef::Sandbox { id: "sbx_1".into(), creator: "key:key_1".into(), project: None, task: None };
    let resource = ResourceRef::Secret("db".into());
    let req = Request {
        principal: &principal,
        namespace: "acme",
        action: "secret.read",
        resource: &resource,
        target_role: None,
    };
    anyhow::ensure!(set.decide(&req).allowed, "a sandbox may read its namespace's secrets by default");
    let iters = 20_000;
    let start = Instant::now();
    for _ in 0..iters {
        std::hint::black_box(set.decide(std::hint::black_box(&req)));
    }
    let rate = iters as f64 / start.elapsed().as_secs_f64();
    println!("secret.read (a condition Cedar evaluates): {rate:.0} decisions/s ({:.2} us each)", 1e6 / rate);
    Ok(())
}
