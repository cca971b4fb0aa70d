//! Warm pools, from the inside: a create claims a sandbox whose supervisor started before the
//! request arrived, and finds in it everything of its own (limits, writable size, environment,
//! secrets, workload token, filesystem read-write or read-only) that the pool sandbox did not
//! have; pools count against the namespace's quotas, refill, shrink under memory pressure and
//! go with their size; only the platform admin sizes a public image's pool.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use common::{assert_envelope, Harness};
use serde_json::{json, Value};

/// Polls the namespace's pool of `image` until `done` holds for it (ready, starting), or fails
/// after a generous deadline.
async fn wait_pool(h: &Harness, ns: &str, token: &str, image: &str, what: &str, done: impl Fn(u64, u64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = h.call(Method::GET, &format!("/v1/namespaces/{ns}/pools"), Some(token), Value::Null).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let pool = r.body["items"].as_array().unwrap().iter().find(|p| p["image"] == image).cloned();
        let (ready, starting) =
            pool.as_ref().map_or((0, 0), |p| (p["ready"].as_u64().unwrap(), p["starting"].as_u64().unwrap()));
        if done(ready, starting) {
            return;
        }
        assert!(Instant::now() < deadline, "the pool of {image} never reached {what}: {}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Seconds since the host booted (`/proc/uptime`), the clock of `/proc/<pid>/stat`'s start times.
fn host_uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime").unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

/// The sandbox's init (its supervisor), as the sandbox sees it: seconds after the host booted
/// that it started.
async fn init_started_at(h: &Harness, ns: &str, id: &str, token: &str) -> f64 {
    let (code, out, err) =
        h.sh(ns, id, token, "s=$(cat /proc/1/stat); s=${s##*) }; set -- $s; echo \"${20} $(getconf CLK_TCK)\"").await;
    assert_eq!(code, 0, "{err}");
    let mut it = out.split_whitespace().map(|v| v.parse::<f64>().unwrap());
    let (ticks, hz) = (it.next().unwrap(), it.next().unwrap());
    ticks / hz
}

/// The nice value of every thread of host process `pid` (field 19 of
/// `/proc/<pid>/task/<tid>/stat`, counted after the command's closing parenthesis).
fn thread_nices(pid: u32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap();
            let after = &stat[stat.rfind(')').unwrap() + 1..];
            after.split_whitespace().nth(16).unwrap().parse().unwrap()
        })
        .collect()
}

/// The CPU weight of host process `pid`'s cgroup as its file reads: v1 `cpu.shares`, else v2
/// `cpu.weight`.
fn cpu_weight_of(pid: u32) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v1 = cgroups.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == "cpu").then(|| format!("/sys/fs/cgroup/cpu{path}/cpu.shares"))
    });
    let file = v1.unwrap_or_else(|| {
        let path = cgroups.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        format!("/sys/fs/cgroup{path}/cpu.weight")
    });
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}")).trim().to_owned()
}

#[tokio::test]
async fn a_create_claims_a_started_sandbox_and_everything_of_the_claimant_is_bound_at_claim() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let (_, dev) = h.create_key("alpha", "dev", "developer").await;
    let (_, ns_admin) = h.create_key("alpha", "ops", "admin").await;
    let r = h
        .call(
            Method::POST,
            "/v1/namespaces/alpha/secrets",
            Some(&ns_admin),
            json!({"name": "tok", "value": "s3cr3t-value"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = h
        .call(
            Method::POST,
            "/v1/namespaces/alpha/filesystems",
            Some(&dev),
            json!({"name": "work", "size_bytes": 32 << 20}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let fs = r.body["id"].as_str().unwrap().to_owned();

    // The default image is public: its pool in a namespace is the platform admin's to size.
    let pool = "/v1/namespaces/alpha/pools/default";
    let r = h.call(Method::PUT, pool, Some(&ns_admin), json!({"size": 1})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_envelope(&r, "forbidden");
    let r = h.call(Method::PUT, pool, Some(&h.admin), json!({"size": 1})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["size"], 1);
    assert_eq!(r.body["public"], true);
    wait_pool(&h, "alpha", &dev, "default", "one ready", |ready, _| ready == 1).await;
    // The pool's sandbox is no sandbox of the namespace's: no list shows it.
    let r = h.call(Method::GET, "/v1/namespaces/alpha/sandboxes", Some(&dev), Value::Null).await;
    assert_eq!(r.body["items"], json!([]), "{}", r.body);

    // Until its claim, the pool sandbox is background work: every thread of its supervisor
    // runs at nice 10, in a cgroup of a tenth of the default CPU weight.
    let pooled: Vec<_> =
        h.state.store.active_sandboxes().await.unwrap().into_iter().filter(|s| s.pooled).map(|s| s.id).collect();
    assert_eq!(pooled.len(), 1, "{pooled:?}");
    let pid_file = h.runtime.state_dir.join("sandboxes").join(&pooled[0]).join("pid");
    let init: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    let nices = thread_nices(init);
    assert!(nices.iter().all(|n| *n == 10), "the pool sandbox's threads: nice {nices:?}");
    assert!(["102", "4"].contains(&cpu_weight_of(init).as_str()), "the pool sandbox's weight {}", cpu_weight_of(init));

    // A quota changed after the pool sandbox started applies to its claim.
    let r = h
        .call(Method::PATCH, "/v1/namespaces/alpha", Some(&h.admin), json!({"quotas": {"pids_per_sandbox": 64}}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let before = host_uptime();
    let body = json!({
        "cpu_millis": 500, "memory_bytes": 320 << 20, "disk_bytes": 48 << 20,
        "env": {"GREETING": "hello-from-the-claimant"},
        "secrets": [{"name": "tok", "env": "API_TOKEN"}, {"name": "tok", "path": "/run/secrets/tok"}],
        "filesystem": {"id": fs, "mode": "rw"},
    });
    let id = h.create_sandbox("alpha", &dev, body).await;
    // Its supervisor was running before the create was sent: the sandbox was the pool's.
    let started = init_started_at(&h, "alpha", &id, &dev).await;
    assert!(started < before, "the sandbox's init started at {started} s, after the create was sent at {before} s");
    assert_eq!(id, pooled[0], "the create claimed another sandbox than the pool's");
    // Claimed, it runs as any sandbox: nice 0 (its supervisor and its commands, seen from
    // inside) and the kernel's default weight.
    let nices = thread_nices(init);
    assert!(nices.iter().all(|n| *n == 0), "the claimed sandbox's threads: nice {nices:?}");
    assert!(["1024", "100"].contains(&cpu_weight_of(init).as_str()), "the claimed weight {}", cpu_weight_of(init));
    let (code, out, err) =
        h.sh("alpha", &id, &dev, "nice; s=$(cat /proc/1/stat); s=${s##*) }; set -- $s; echo ${17}").await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "0\n0\n", "inside the claimed sandbox, its command's and its init's nice values");
    // Everything of the claimant is there.
    let (code, out, err) = h
        .sh(
            "alpha",
            &id,
            &dev,
            "echo \"$GREETING $API_TOKEN\"; cat /run/secrets/tok; echo; head -c 4 /run/bulkhead/token; echo; \
             grep MemTotal /proc/meminfo; df -B1 --output=size / | tail -1; \
             echo written-in-the-pool-sandbox > /workspace/note.txt && cat /workspace/note.txt; \
             df -B1 --output=size /tmp | tail -1; cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max; \
             awk '$5 == \"/tmp\" {print $6}' /proc/self/mountinfo",
        )
        .await;
    assert_eq!(code, 0, "{out} {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "hello-from-the-claimant s3cr3t-value", "{out}");
    assert_eq!(lines[1], "s3cr3t-value", "{out}");
    assert_eq!(lines[2], "bhw_", "the workload token: {out}");
    // Its memory limit is the claimant's (lxcfs shows the cgroup's limit as MemTotal).
    let kib: u64 = lines[3].split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(kib * 1024, 320 << 20, "{out}");
    // Its writable root has the claimant's size.
    let size: u64 = lines[4].trim().parse().unwrap();
    assert_eq!(size, 48 << 20, "{out}");
    assert_eq!(lines[5], "written-in-the-pool-sandbox");
    // And its /tmp the size a sandbox of its memory gets (the pool's was its default's).
    let tmp: u64 = lines[6].trim().parse().unwrap();
    assert_eq!(tmp, 320 << 20, "{out}");
    assert_eq!(lines[7], "64", "the process limit: {out}");
    // The resize kept /tmp's per-mount flags.
    let flags: Vec<&str> = lines[8].split(',').collect();
    assert!(["nosuid", "nodev"].iter().all(|f| flags.contains(f)), "/tmp's mount flags: {out}");
    // The workspace is the filesystem itself: the write is there from the API.
    let r = h
        .call(
            Method::GET,
            &format!("/v1/namespaces/alpha/filesystems/{fs}/files?path=note.txt"),
            Some(&dev),
            Value::Null,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(String::from_utf8_lossy(&r.raw), "written-in-the-pool-sandbox\n");
    // The sandbox cannot take its filesystem away (the mount is locked in its namespace).
    let (code, _, _) = h.sh("alpha", &id, &dev, "umount /workspace").await;
    assert_ne!(code, 0, "umount /workspace succeeded inside the sandbox");
    // Nothing of the claimant was in what started the sandbox: its OCI spec names no variable,
    // secret or token of it.
    let spec = std::fs::read_to_string(h.runtime.state_dir.join("sandboxes").join(&id).join("config.json")).unwrap();
    for claimant in ["hello-from-the-claimant", "s3cr3t-value", "GREETING", "API_TOKEN", &fs] {
        assert!(!spec.contains(claimant), "the pool sandbox's spec holds {claimant:?}");
    }

    // The pool refills with a sandbox of its own.
    wait_pool(&h, "alpha", &dev, "default", "one ready again", |ready, _| ready == 1).await;
    let r = h.call(Method::DELETE, &format!("/v1/namespaces/alpha/sandboxes/{id}"), Some(&dev), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    // Its teardown detached the filesystem and removed nothing of it.
    let r = h
        .call(
            Method::GET,
            &format!("/v1/namespaces/alpha/filesystems/{fs}/files?path=note.txt"),
            Some(&dev),
            Value::Null,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(String::from_utf8_lossy(&r.raw), "written-in-the-pool-sandbox\n");

    // A read-only claim: the filesystem is there, and stays read-only, whatever root tries.
    let before = host_uptime();
    let id = h.create_sandbox("alpha", &dev, json!({"filesystem": {"id": fs, "mode": "ro"}})).await;
    assert!(init_started_at(&h, "alpha", &id, &dev).await < before, "the read-only create was not a claim");
    let (code, out, _) = h.sh("alpha", &id, &dev, "cat /workspace/note.txt").await;
    assert_eq!((code, out.as_str()), (0, "written-in-the-pool-sandbox\n"));
    let (code, _, err) = h.sh("alpha", &id, &dev, "echo x > /workspace/other.txt").await;
    assert_ne!(code, 0, "a write to a read-only workspace succeeded");
    assert!(err.contains("Read-only file system"), "{err}");
    let (code, _, _) =
        h.sh("alpha", &id, &dev, "mount -o remount,rw /workspace && echo x > /workspace/other.txt").await;
    assert_ne!(code, 0, "the sandbox made its read-only workspace writable");
    let r = h
        .call(
            Method::GET,
            &format!("/v1/namespaces/alpha/filesystems/{fs}/files?path=other.txt"),
            Some(&dev),
            Value::Null,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);

    // Size 0: the pool goes, and its ready sandbox with it.
    let r = h.call(Method::DELETE, pool, Some(&h.admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = h.call(Method::GET, "/v1/namespaces/alpha/pools", Some(&dev), Value::Null).await;
    assert_eq!(r.body["items"], json!([]), "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pooled: Vec<_> =
            h.state.store.active_sandboxes().await.unwrap().into_iter().filter(|s| s.pooled).map(|s| s.id).collect();
        if pooled.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "pool sandboxes outlived their pool: {pooled:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn pools_count_against_quotas_refill_within_them_and_give_sandboxes_back_under_memory_pressure() {
    let h = Harness::new().await;
    let mut body = common::namespace_body("alpha");
    body["quotas"]["max_sandboxes"] = json!(2);
    let r = h.call(Method::POST, "/v1/namespaces", Some(&h.admin), body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let (_, dev) = h.create_key("alpha", "dev", "developer").await;
    let (_, viewer) = h.create_key("alpha", "eyes", "viewer").await;
    let pool = "/v1/namespaces/alpha/pools/default";
    // Never more than the namespace may hold; a viewer sees pools but sizes none.
    let r = h.call(Method::PUT, pool, Some(&h.admin), json!({"size": 3})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_envelope(&r, "invalid_request");
    for bad in [json!({"size": -1}), json!({"size": "2"}), json!({"size": 1, "extra": true}), json!({}), json!([1])] {
        let r = h.call(Method::PUT, pool, Some(&h.admin), bad.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
    }
    let r = h.call(Method::PUT, pool, Some(&viewer), json!({"size": 1})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = h.call(Method::PUT, "/v1/namespaces/alpha/pools/no-such-image", Some(&h.admin), json!({"size": 1})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);

    let r = h.call(Method::PUT, pool, Some(&h.admin), json!({"size": 2})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    wait_pool(&h, "alpha", &viewer, "default", "two ready", |ready, _| ready == 2).await;
    // A claim larger than a pool sandbox's share (2000 millicores, the namespace's whole cpu)
    // fits once the other ready sandbox gives way: pools never take what creates need.
    let big = h.create_sandbox("alpha", &dev, json!({"cpu_millis": 2000})).await;
    let r = h.call(Method::DELETE, &format!("/v1/namespaces/alpha/sandboxes/{big}"), Some(&dev), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    wait_pool(&h, "alpha", &viewer, "default", "two ready again", |ready, _| ready == 2).await;
    // Quotas lowered under a full pool: it gives back what no longer fits.
    let patch = |max: u64| json!({"quotas": {"max_sandboxes": max}});
    let r = h.call(Method::PATCH, "/v1/namespaces/alpha", Some(&h.admin), patch(1)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.state.store.active_sandboxes().await.unwrap().into_iter().filter(|s| s.pooled).count() > 1 {
        assert!(Instant::now() < deadline, "the pool kept more sandboxes than the lowered quota allows");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = h.call(Method::PATCH, "/v1/namespaces/alpha", Some(&h.admin), patch(2)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    wait_pool(&h, "alpha", &viewer, "default", "two ready once more", |ready, _| ready == 2).await;
    // A create refused for what it can be refused without naming a sandbox costs the pool
    // nothing: a secret that does not exist, one delivered twice or to a bad place, an egress
    // list that does not parse or goes beyond the namespace's ceiling (it has none).
    let pooled = || async {
        let mut ids: Vec<String> =
            h.state.store.active_sandboxes().await.unwrap().into_iter().filter(|s| s.pooled).map(|s| s.id).collect();
        ids.sort();
        ids
    };
    let (_, ns_admin) = h.create_key("alpha", "ops", "admin").await;
    let r = h
        .call(Method::POST, "/v1/namespaces/alpha/secrets", Some(&ns_admin), json!({"name": "tok", "value": "v"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let before = pooled().await;
    for (body, status) in [
        (json!({"secrets": [{"name": "nope", "env": "X"}]}), StatusCode::BAD_REQUEST),
        (json!({"secrets": [{"name": "tok", "env": "X", "path": "/run/secrets/x"}]}), StatusCode::BAD_REQUEST),
        (json!({"secrets": [{"name": "tok", "env": "X"}, {"name": "tok", "env": "X"}]}), StatusCode::BAD_REQUEST),
        (json!({"env": {"X": "1"}, "secrets": [{"name": "tok", "env": "X"}]}), StatusCode::BAD_REQUEST),
        (json!({"secrets": [{"name": "tok", "path": "/etc/passwd"}]}), StatusCode::BAD_REQUEST),
        (
            json!({"secrets": [{"name": "tok", "path": "/run/secrets/a"}, {"name": "tok", "path": "/run/secrets/a"}]}),
            StatusCode::BAD_REQUEST,
        ),
        (json!({"egress": {"allow": ["!!bad host"]}}), StatusCode::BAD_REQUEST),
        (json!({"egress": {"allow": ["api.example.com"]}}), StatusCode::FORBIDDEN),
    ] {
        let r = h.call(Method::POST, "/v1/namespaces/alpha/sandboxes", Some(&dev), body.clone()).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
    }
    assert_eq!(pooled().await, before, "a refused create used up a pool sandbox");
    // The two pool sandboxes hold the namespace's two sandboxes.
    let a = h.create_sandbox("alpha", &dev, json!({})).await;
    let b = h.create_sandbox("alpha", &dev, json!({})).await;
    // Both creates were claims; now the quota is the claimants', and the pool stays empty.
    let r = h.call(Method::POST, "/v1/namespaces/alpha/sandboxes", Some(&dev), json!({})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_envelope(&r, "quota_exceeded");
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_pool(&h, "alpha", &viewer, "default", "empty", |ready, starting| ready == 0 && starting == 0).await;
    // A sandbox gone makes room: the pool takes it.
    let r = h.call(Method::DELETE, &format!("/v1/namespaces/alpha/sandboxes/{a}"), Some(&dev), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    wait_pool(&h, "alpha", &viewer, "default", "one ready", |ready, _| ready == 1).await;
    // A claim that the quota refuses once it is bound (b's 1000 millicores and its 1500 are
    // more than the namespace's 2000, and no other pool sandbox can give way) costs the pool its
    // sandbox: bound to a claimant, a pool sandbox is never handed out again.
    let reserved = pooled().await;
    assert_eq!(reserved.len(), 1, "{reserved:?}");
    let r = h.call(Method::POST, "/v1/namespaces/alpha/sandboxes", Some(&dev), json!({"cpu_millis": 1500})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_envelope(&r, "quota_exceeded");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = pooled().await;
        if !now.contains(&reserved[0]) && !h.runtime.state_dir.join("sandboxes").join(&reserved[0]).exists() {
            break;
        }
        assert!(Instant::now() < deadline, "the refused claim's pool sandbox was kept: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r =
        h.call(Method::GET, &format!("/v1/namespaces/alpha/sandboxes/{}", reserved[0]), Some(&dev), Value::Null).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    wait_pool(&h, "alpha", &viewer, "default", "one ready after the refused claim", |ready, _| ready == 1).await;

    // Under memory pressure (here: any amount of free memory is too little), the pool gives its
    // sandbox back and starts none.
    h.state.pools.set_min_available(u64::MAX);
    wait_pool(&h, "alpha", &viewer, "default", "empty under pressure", |ready, starting| ready == 0 && starting == 0)
        .await;
    // Its teardown follows at once.
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.state.store.active_sandboxes().await.unwrap().into_iter().any(|s| s.pooled) {
        assert!(Instant::now() < deadline, "the pool sandbox given back was never torn down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.state.pools.set_min_available(0);
    wait_pool(&h, "alpha", &viewer, "default", "refilled", |ready, _| ready == 1).await;
    let r = h.call(Method::DELETE, &format!("/v1/namespaces/alpha/sandboxes/{b}"), Some(&dev), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    // A namespace delete takes its pools' sandboxes with it.
    let r = h.call(Method::DELETE, "/v1/namespaces/alpha", Some(&h.admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let active = h.state.store.active_sandboxes().await.unwrap();
    assert!(active.is_empty(), "{active:?}");
}

#[tokio::test]
async fn a_namespace_sizes_the_pool_of_its_own_template_and_creates_start_from_it() {
    let h = Harness::with_namespaces(&["alpha", "beta"]).await;
    let (_, dev) = h.create_key("alpha", "dev", "developer").await;
    let (_, ns_admin) = h.create_key("alpha", "ops", "admin").await;
    let (_, beta_admin) = h.create_key("beta", "ops", "admin").await;
    let id = h.create_sandbox("alpha", &dev, json!({})).await;
    let (code, _, err) = h.sh("alpha", &id, &dev, "echo baked > /opt/template-file").await;
    assert_eq!(code, 0, "{err}");
    let r = h
        .call(
            Method::POST,
            &format!("/v1/namespaces/alpha/sandboxes/{id}/snapshot"),
            Some(&dev),
            json!({"name": "tmpl"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // Another tenant cannot even see the image, let alone pool it.
    let r = h.call(Method::PUT, "/v1/namespaces/beta/pools/tmpl", Some(&beta_admin), json!({"size": 1})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = h.call(Method::PUT, "/v1/namespaces/alpha/pools/tmpl", Some(&beta_admin), json!({"size": 1})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    // A developer does not size pools; the namespace's admin does, for its own image.
    let r = h.call(Method::PUT, "/v1/namespaces/alpha/pools/tmpl", Some(&dev), json!({"size": 1})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = h.call(Method::PUT, "/v1/namespaces/alpha/pools/tmpl", Some(&ns_admin), json!({"size": 1})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["public"], false);
    wait_pool(&h, "alpha", &dev, "tmpl", "one ready", |ready, _| ready == 1).await;
    let before = host_uptime();
    let claimed = h.create_sandbox("alpha", &dev, json!({"image": "tmpl"})).await;
    assert!(
        init_started_at(&h, "alpha", &claimed, &dev).await < before,
        "the create from the template was not a claim"
    );
    let (code, out, _) = h.sh("alpha", &claimed, &dev, "cat /opt/template-file").await;
    assert_eq!((code, out.as_str()), (0, "baked\n"));
    // While a sandbox of the namespace uses the image, its delete is refused and changes nothing.
    let r = h.call(Method::DELETE, "/v1/namespaces/alpha/images/tmpl", Some(&dev), Value::Null).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    let r = h.call(Method::GET, "/v1/namespaces/alpha/pools", Some(&dev), Value::Null).await;
    assert_eq!(r.body["items"][0]["image"], "tmpl", "{}", r.body);
    // Deleting the image takes its pool and the pool's sandbox.
    let r = h.call(Method::DELETE, &format!("/v1/namespaces/alpha/sandboxes/{claimed}"), Some(&dev), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = h.call(Method::DELETE, "/v1/namespaces/alpha/images/tmpl", Some(&dev), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = h.call(Method::GET, "/v1/namespaces/alpha/pools", Some(&dev), Value::Null).await;
    assert_eq!(r.body["items"], json!([]), "{}", r.body);
    let pooled = h.state.store.active_sandboxes().await.unwrap().into_iter().filter(|s| s.pooled).count();
    assert_eq!(pooled, 0);
}

#[test]
fn pools_through_the_cli_against_a_real_server() {
    use common::process::Server;
    let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"));
    server.ok(None, &["namespace", "create", "acme", "--cpu", "2", "--memory", "2GiB"]);
    let k = server.json(None, &["key", "create", "--ns", "acme", "dev", "--role", "developer"]);
    let dev = k["token"].as_str().unwrap().to_owned();
    let dev = Some(dev.as_str());
    // A developer sizes no pool; the platform admin sizes the public default image's.
    let err = server.fails(dev, &["pool", "set", "--ns", "acme", "--image", "default", "--size", "1"]);
    assert!(err.contains("forbidden") || err.contains("may not"), "{err}");
    let p = server.json(None, &["pool", "set", "--ns", "acme", "--image", "default", "--size", "1"]);
    assert_eq!((p["image"].as_str(), p["size"].as_u64()), (Some("default"), Some(1)), "{p}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = server.json(dev, &["pool", "list", "--ns", "acme"]);
        if list[0]["ready"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the pool never filled: {list}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let table = server.ok(dev, &["pool", "list", "--ns", "acme"]);
    assert!(table.starts_with("IMAGE") && table.contains("default"), "{table}");
    let before = host_uptime();
    let s = server.json(dev, &["sandbox", "create", "--ns", "acme", "--memory", "256MiB"]);
    let id = s["id"].as_str().unwrap();
    let out = server.ok(
        dev,
        &[
            "exec",
            "--ns",
            "acme",
            id,
            "--",
            "sh",
            "-c",
            "s=$(cat /proc/1/stat); s=${s##*) }; set -- $s; echo \"${20} $(getconf CLK_TCK)\"",
        ],
    );
    let mut it = out.split_whitespace().map(|v| v.parse::<f64>().unwrap());
    let started = it.next().unwrap() / it.next().unwrap();
    assert!(started < before, "the CLI's create was not a claim: init at {started} s, create at {before} s");
    server.ok(dev, &["sandbox", "delete", "--ns", "acme", id]);
    server.ok(None, &["pool", "rm", "--ns", "acme", "--image", "default"]);
    let list = server.json(dev, &["pool", "list", "--ns", "acme"]);
    assert_eq!(list, json!([]));
    server.stop();
}

#[tokio::test]
async fn a_task_claims_a_pool_sandbox_with_its_agent_code_and_workspace_attached() {
    use axum::body::Body;
    use axum::http::Request;
    let h = Harness::with_namespaces(&["acme"]).await;
    let (_, dev) = h.create_key("acme", "dev", "developer").await;
    let r = h.call(Method::POST, "/v1/namespaces/acme/agents", Some(&dev), json!({"name": "echo"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let push = Request::builder()
        .method(Method::POST)
        .uri("/v1/namespaces/acme/agents/echo/versions")
        .header("authorization", format!("Bearer {dev}"))
        .header("content-type", "application/x-tar")
        .body(Body::from(common::agents::echo_py()))
        .unwrap();
    let r = h.send(push).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let version = r.body["id"].as_str().unwrap().to_owned();
    let r =
        h.call(Method::POST, "/v1/namespaces/acme/agents/echo/deploy", Some(&dev), json!({"version": version})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = h
        .call(
            Method::POST,
            "/v1/namespaces/acme/filesystems",
            Some(&dev),
            json!({"name": "repo", "size_bytes": 32 << 20}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let fs = r.body["id"].as_str().unwrap().to_owned();
    let r = h.call(Method::PUT, "/v1/namespaces/acme/pools/default", Some(&h.admin), json!({"size": 1})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    wait_pool(&h, "acme", &dev, "default", "one ready", |ready, _| ready == 1).await;

    let before = host_uptime();
    let script = "shell s=$(cat /proc/1/stat); s=${s##*) }; set -- $s; echo \"start=${20} hz=$(getconf CLK_TCK)\"; \
                  ls /agent/agent.json; echo task=$BULKHEAD_TASK_ID; echo hi > /workspace/from-the-agent.txt; \
                  grep ' /agent ' /proc/self/mountinfo";
    let r = h
        .call(
            Method::POST,
            "/v1/namespaces/acme/tasks",
            Some(&dev),
            json!({"agent": "echo", "filesystem": {"id": fs}, "message": script}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let task = r.body["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let reply = loop {
        let r = h
            .call(
                Method::GET,
                &format!("/v1/namespaces/acme/tasks/{task}/messages?limit=1000"),
                Some(&dev),
                Value::Null,
            )
            .await;
        let items = r.body["items"].as_array().unwrap().clone();
        if items.iter().any(|m| m["type"] == "turn_end") {
            break items
                .iter()
                .filter(|m| m["type"] == "agent_message_chunk")
                .filter_map(|m| m["data"]["content"]["text"].as_str())
                .collect::<String>();
        }
        assert!(Instant::now() < deadline, "the task's first turn did not end: {}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(reply.contains("/agent/agent.json") && reply.contains(&format!("task={task}")), "{reply}");
    // Attached at claim from a view that names no host path, data dir or device.
    let data_dir = h.dir.path().display().to_string();
    assert!(reply.contains("overlay") && !reply.contains(&data_dir) && !reply.contains("/agents/"), "{reply}");
    let field = |name: &str| -> f64 {
        let at = reply.find(&format!("{name}=")).unwrap() + name.len() + 1;
        reply[at..].split_whitespace().next().unwrap().parse().unwrap()
    };
    let started = field("start") / field("hz");
    assert!(started < before, "the task's sandbox started at {started} s, after the task was created at {before} s");
    let r = h
        .call(
            Method::GET,
            &format!("/v1/namespaces/acme/filesystems/{fs}/files?path=from-the-agent.txt"),
            Some(&dev),
            Value::Null,
        )
        .await;
    assert_eq!((r.status, String::from_utf8_lossy(&r.raw).into_owned()), (StatusCode::OK, "hi\n".to_owned()));
    let r = h.call(Method::POST, &format!("/v1/namespaces/acme/tasks/{task}/cancel"), Some(&dev), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn a_namespace_deleted_while_its_pool_fills_leaves_nothing_behind() {
    let h = Harness::new().await;
    for (round, delay_ms) in [0u64, 150, 400].into_iter().enumerate() {
        let ns = format!("fill{round}");
        let r = h.call(Method::POST, "/v1/namespaces", Some(&h.admin), common::namespace_body(&ns)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let r = h
            .call(Method::PUT, &format!("/v1/namespaces/{ns}/pools/default"), Some(&h.admin), json!({"size": 4}))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let r = h.call(Method::DELETE, &format!("/v1/namespaces/{ns}"), Some(&h.admin), Value::Null).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "round {round}: {}", r.body);
        // Nothing of it stays: no active row, no bundle on the host, no cgroup (a start in
        // flight is torn down once it ends, so this waits, within a generous deadline).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let active: Vec<_> = h.state.store.active_sandboxes().await.unwrap();
            let bundles: Vec<_> = std::fs::read_dir(h.runtime.state_dir.join("sandboxes"))
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            let cgroup = std::path::Path::new("/sys/fs/cgroup/memory").join(&h.runtime.cgroup_prefix).join(&ns);
            let cgroup_v2 = std::path::Path::new("/sys/fs/cgroup").join(&h.runtime.cgroup_prefix).join(&ns);
            let cgroup_left = cgroup.exists() || cgroup_v2.exists();
            if active.is_empty() && bundles.is_empty() && !cgroup_left {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: left after a minute: active {active:?}, bundles {bundles:?}, cgroup {cgroup_left}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn the_reaper_never_ends_a_claim_for_the_expiry_of_the_pool_sandbox_it_was() {
    let h = Harness::new().await;
    let mut body = common::namespace_body("alpha");
    body["quotas"]["max_sandbox_ttl_seconds"] = json!(60);
    let r = h.call(Method::POST, "/v1/namespaces", Some(&h.admin), body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let (_, dev) = h.create_key("alpha", "dev", "developer").await;
    let r = h.call(Method::PUT, "/v1/namespaces/alpha/pools/default", Some(&h.admin), json!({"size": 1})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    wait_pool(&h, "alpha", &dev, "default", "one ready", |ready, _| ready == 1).await;
    // The reaper's snapshot, taken before the claim: the pool sandbox's row.
    let snapshot: Vec<_> = h.state.store.active_sandboxes().await.unwrap().into_iter().filter(|s| s.pooled).collect();
    assert_eq!(snapshot.len(), 1);
    let id = h.create_sandbox("alpha", &dev, json!({"ttl_seconds": 60})).await;
    assert_eq!(id, snapshot[0].id, "the create was no claim");
    // The reaper acts on that snapshot at a moment past the pool sandbox's expiry but before
    // the claim's own: the claim is left alone.
    let claimed = h.state.store.get_sandbox("alpha", &id).await.unwrap().unwrap();
    assert!(claimed.expires_at_ms > snapshot[0].expires_at_ms, "{claimed:?}");
    let now = snapshot[0].expires_at_ms + 1;
    assert!(now < claimed.expires_at_ms);
    let found = bulkhead_server::service::sandboxes::reap(&h.state, &snapshot, now).await;
    assert_eq!(found, 1, "the snapshot's row was not expired at {now}");
    let v = h.exec("alpha", &id, &dev, &["echo", "still here"]).await;
    assert_eq!(v["stdout"], "still here\n", "{v}");
    let row = h.state.store.get_sandbox("alpha", &id).await.unwrap().unwrap();
    assert_eq!(row.status.as_str(), "running", "{row:?}");
    // Past the claim's own expiry, the same call ends it.
    bulkhead_server::service::sandboxes::reap(&h.state, std::slice::from_ref(&row), row.expires_at_ms).await;
    let row = h.state.store.get_sandbox("alpha", &id).await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.reason.as_deref()), ("stopped", Some("ttl_expired")), "{row:?}");
}
