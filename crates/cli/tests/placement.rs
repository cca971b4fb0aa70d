//! Placement from the inside: a dedicated namespace's sandboxes run on its cores alone (what
//! the kernel lets a process in them and beside them do), running sandboxes move at once when
//! the placement changes, admission refuses what the host does not have with a 409 naming it,
//! and bad requests are 400 with nothing changed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::http::{Method, StatusCode};
use bulkhead_core::placement::CpuSet;
use common::{assert_envelope, Harness};
use serde_json::{json, Value};

/// The cores a command inside sandbox `id` may run on, as its kernel says (`/proc/self/status`),
/// and what `nproc` (the CPU affinity) counts.
async fn cores_inside(h: &Harness, ns: &str, id: &str) -> (CpuSet, usize) {
    let (code, out, err) = h.sh(ns, id, &h.admin, "grep Cpus_allowed_list /proc/self/status | cut -f2; nproc").await;
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    let cpus = CpuSet::parse(lines.next().expect("the cpu list")).expect("a cpu list");
    let nproc = lines.next().and_then(|n| n.trim().parse().ok()).expect("nproc's count");
    (cpus, nproc)
}

/// Whether a command inside sandbox `id` gets its affinity set to `cpu` (the kernel refuses a
/// core outside the sandbox's cpuset).
async fn can_pin_to(h: &Harness, ns: &str, id: &str, cpu: u32) -> bool {
    let script = format!("python3 -c 'import os; os.sched_setaffinity(0, {{{cpu}}})'");
    h.sh(ns, id, &h.admin, &script).await.0 == 0
}

async fn patch(h: &Harness, ns: &str, body: Value) -> common::Reply {
    h.call(Method::PATCH, &format!("/v1/namespaces/{ns}"), Some(&h.admin), body).await
}

async fn get(h: &Harness, ns: &str) -> Value {
    let r = h.call(Method::GET, &format!("/v1/namespaces/{ns}"), Some(&h.admin), json!(null)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body
}

fn host_cpus() -> CpuSet {
    bulkhead_runtime::host::capacity().expect("this host's cores").cpus
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedicated_namespace_runs_on_its_own_cores_and_moves_back_live() {
    let h = Harness::with_namespaces(&["gold", "tin"]).await;
    let all = host_cpus();
    let gold = h.create_sandbox("gold", &h.admin, json!({})).await;
    let tin = h.create_sandbox("tin", &h.admin, json!({})).await;
    assert_eq!(cores_inside(&h, "gold", &gold).await.0, all);
    assert_eq!(get(&h, "gold").await["placement"], json!({"mode": "shared"}));

    let r = patch(&h, "gold", json!({"placement": {"mode": "dedicated", "cpus": 1}})).await;
    if all.len() < 2 {
        // A host of one core keeps it for the control plane and the shared namespaces.
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
        assert_envelope(&r, "conflict");
        return;
    }
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let placement = &r.body["placement"];
    assert_eq!(placement["mode"], "dedicated");
    assert_eq!(placement["cpus"], 1);
    // The reservation defaults to the memory quota.
    assert_eq!(placement["memory_bytes"], r.body["quotas"]["memory_bytes"]);
    let cpuset = CpuSet::parse(placement["cpuset"].as_str().expect("its cores")).unwrap();
    assert_eq!(cpuset.len(), 1);
    assert!(cpuset.is_subset(&all));
    let core = cpuset.iter().next().unwrap();
    let shared = all.difference(&cpuset);

    // The running sandboxes moved: gold's onto its core, tin's off it.
    assert_eq!(cores_inside(&h, "gold", &gold).await, (cpuset.clone(), 1));
    assert_eq!(cores_inside(&h, "tin", &tin).await, (shared.clone(), shared.len()));
    // Asking the kernel from inside tin for gold's core is refused; gold cannot leave its own.
    assert!(!can_pin_to(&h, "tin", &tin, core).await, "a shared sandbox got onto a dedicated core");
    let other = shared.iter().next().unwrap();
    assert!(!can_pin_to(&h, "gold", &gold, other).await, "a dedicated sandbox got onto a shared core");
    assert!(can_pin_to(&h, "gold", &gold, core).await, "the check itself must be able to pass");
    // New sandboxes start where their namespace is.
    let gold2 = h.create_sandbox("gold", &h.admin, json!({})).await;
    let tin2 = h.create_sandbox("tin", &h.admin, json!({})).await;
    assert_eq!(cores_inside(&h, "gold", &gold2).await.0, cpuset);
    assert_eq!(cores_inside(&h, "tin", &tin2).await.0, shared);

    // No second core to give: a 409 naming the cores, and nothing changed.
    h.create_namespace("lead").await;
    let r = patch(&h, "lead", json!({"placement": {"mode": "dedicated", "cpus": 1}})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_envelope(&r, "conflict");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("placement.cpus"), "{}", r.body);
    assert_eq!(get(&h, "lead").await["placement"], json!({"mode": "shared"}));
    let r = patch(&h, "gold", json!({"placement": {"mode": "dedicated", "cpus": all.len()}})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    // More memory than the host has: a 409 naming the memory; the quotas of the same request
    // are not applied either.
    let before = get(&h, "gold").await;
    let r = patch(
        &h,
        "gold",
        json!({"quotas": {"memory_bytes": 60u64 << 40}, "placement": {"mode": "dedicated", "cpus": 1, "memory_bytes": 50u64 << 40}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("placement.memory_bytes"), "{}", r.body);
    let after = get(&h, "gold").await;
    assert_eq!(after["quotas"], before["quotas"]);
    assert_eq!(after["placement"], before["placement"]);
    // Quotas below the reservation are refused while it stands.
    let r = patch(&h, "gold", json!({"quotas": {"memory_bytes": 64u64 << 20}})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);

    // Back to shared: every running sandbox has every core again.
    let r = patch(&h, "gold", json!({"placement": {"mode": "shared"}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["placement"], json!({"mode": "shared"}));
    for (ns, id) in [("gold", &gold), ("gold", &gold2), ("tin", &tin), ("tin", &tin2)] {
        assert_eq!(cores_inside(&h, ns, id).await.0, all, "{ns}/{id}");
    }
    // Now the core is free for another namespace, and deleting that namespace gives it back.
    let r = patch(&h, "lead", json!({"placement": {"mode": "dedicated", "cpus": 1}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(cores_inside(&h, "tin", &tin).await.0, shared);
    let r = h.call(Method::DELETE, "/v1/namespaces/lead", Some(&h.admin), json!(null)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(cores_inside(&h, "tin", &tin).await.0, all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_is_the_platform_admins_and_bad_requests_change_nothing() {
    let h = Harness::with_namespaces(&["gold"]).await;
    let (_, owner) = h.create_key("gold", "boss", "owner").await;
    let r =
        h.call(Method::PATCH, "/v1/namespaces/gold", Some(&owner), json!({"placement": {"mode": "dedicated"}})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    for bad in [
        json!({"mode": "exclusive"}),
        json!({"mode": "dedicated", "cpus": 0}),
        json!({"mode": "dedicated", "cpus": -1}),
        json!({"mode": "dedicated", "cpus": 1e30}),
        json!({"mode": "dedicated", "cpus": "1"}),
        json!({"mode": "dedicated", "cpus": 1_000_000}),
        json!({"mode": "dedicated", "cpus": 1, "memory_bytes": 1}),
        json!({"mode": "dedicated", "cpus": 1, "memory_bytes": 4u64 << 40}),
        json!({"mode": "dedicated", "cpus": 1, "memory_bytes": -5}),
        json!({"mode": "shared", "cpus": 1}),
        json!({"mode": "shared", "memory_bytes": 1 << 30}),
        json!({"mode": "dedicated", "cpuset": "0"}),
        json!({"cpus": 1}),
        json!("dedicated"),
    ] {
        let r = patch(&h, "gold", json!({"placement": bad})).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
        assert_envelope(&r, "invalid_request");
        assert_eq!(get(&h, "gold").await["placement"], json!({"mode": "shared"}), "{bad}");
    }
    // At create, the same request and the same checks; a refused create leaves no namespace.
    let mut body = common::namespace_body("iron");
    body["placement"] = json!({"mode": "dedicated", "cpus": 0});
    let r = h.call(Method::POST, "/v1/namespaces", Some(&h.admin), body.clone()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    body["placement"] = json!({"mode": "dedicated", "cpus": 1000});
    let r = h.call(Method::POST, "/v1/namespaces", Some(&h.admin), body.clone()).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    let r = h.call(Method::GET, "/v1/namespaces/iron", Some(&h.admin), json!(null)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    if host_cpus().len() >= 2 {
        body["placement"] = json!({"mode": "dedicated", "cpus": 1, "memory_bytes": 1 << 30});
        let r = h.call(Method::POST, "/v1/namespaces", Some(&h.admin), body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        assert_eq!(r.body["placement"]["memory_bytes"], 1 << 30);
        let iron = h.create_sandbox("iron", &h.admin, json!({})).await;
        let cpuset = CpuSet::parse(r.body["placement"]["cpuset"].as_str().unwrap()).unwrap();
        assert_eq!(cores_inside(&h, "iron", &iron).await.0, cpuset);
    }
}

/// Creates in flight while the placement changes end on the namespace's cores as the change left
/// them: a start that read the namespace before a change never writes the old cores back after
/// it, and quotas racing a reservation never end below it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_and_quotas_racing_a_change_end_where_the_change_put_them() {
    let h = Harness::with_namespaces(&["race", "tin"]).await;
    let all = host_cpus();
    if all.len() < 2 {
        return;
    }
    let tin = h.create_sandbox("tin", &h.admin, json!({})).await;
    let small = json!({"cpu_millis": 100, "memory_bytes": 64 << 20});
    for (round, mode) in ["dedicated", "shared", "dedicated"].into_iter().enumerate() {
        let creates = futures_util::future::join_all(
            (0..4).map(|_| h.call(Method::POST, "/v1/namespaces/race/sandboxes", Some(&h.admin), small.clone())),
        );
        let body = if mode == "dedicated" {
            json!({"placement": {"mode": "dedicated", "cpus": 1, "memory_bytes": 512 << 20}})
        } else {
            json!({"placement": {"mode": "shared"}})
        };
        let (replies, changed) = tokio::join!(creates, patch(&h, "race", body));
        assert_eq!(changed.status, StatusCode::OK, "round {round}: {}", changed.body);
        let expected = match changed.body["placement"]["cpuset"].as_str() {
            Some(cpus) => CpuSet::parse(cpus).unwrap(),
            None => all.clone(),
        };
        for r in &replies {
            assert_eq!(r.status, StatusCode::CREATED, "round {round}: {}", r.body);
            let id = r.body["id"].as_str().unwrap();
            assert_eq!(cores_inside(&h, "race", id).await.0, expected, "round {round}: sandbox {id}");
        }
        let shared = if mode == "dedicated" { all.difference(&expected) } else { all.clone() };
        assert_eq!(cores_inside(&h, "tin", &tin).await.0, shared, "round {round}");
        for r in &replies {
            let id = r.body["id"].as_str().unwrap();
            let d = h
                .call(Method::DELETE, &format!("/v1/namespaces/race/sandboxes/{id}"), Some(&h.admin), json!(null))
                .await;
            assert_eq!(d.status, StatusCode::NO_CONTENT, "{}", d.body);
        }
    }
    // A quota change racing a reservation: whichever lands second is judged against the first.
    let (quotas, placement) = tokio::join!(
        patch(&h, "race", json!({"quotas": {"memory_bytes": 256u64 << 20}})),
        patch(&h, "race", json!({"placement": {"mode": "dedicated", "cpus": 1, "memory_bytes": 1u64 << 30}})),
    );
    let now = get(&h, "race").await;
    let quota = now["quotas"]["memory_bytes"].as_u64().unwrap();
    if let Some(reserved) = now["placement"]["memory_bytes"].as_u64() {
        assert!(
            reserved <= quota,
            "a {reserved}-byte reservation under a {quota}-byte quota: {} / {}",
            quotas.body,
            placement.body
        );
    }
    assert!(
        quotas.status != StatusCode::OK || placement.status != StatusCode::OK || quota >= 1 << 30,
        "both applied: {} / {}",
        quotas.body,
        placement.body
    );
}
