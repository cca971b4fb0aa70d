//! The store's behaviour, the same for every implementation of [`Store`]: each test here is
//! run against SQLite (`sqlite::tests`) and a real PostgreSQL (`postgres::tests`), on a store
//! that keeps 4 audit records a chain.

use async_trait::async_trait;
use bulkhead_core::audit::AuditEvent;
use bulkhead_core::{Quotas, Role};

use crate::prelude::*;
use crate::{
    AuditQuery, FilesystemRow, IdempotencyClaim, IdempotentReply, ImageDeletion, ImageRow, KeyRow, MeterMark,
    NamespaceRow, PolicyRow, ProjectRow, SandboxImage, SandboxRow, SandboxStatus, SecretRow, StoreError, UsageBucket,
    UsageDelta,
};

/// A statement run on the store's database behind its back (as the platform, where there is
/// row-level security): what a test tampers with.
#[async_trait]
pub(crate) trait RawSql {
    async fn raw(&self, sql: &str);
}

pub(crate) fn ns(name: &str) -> NamespaceRow {
    NamespaceRow {
        name: name.into(),
        isolation: "container".into(),
        quotas: Quotas::DEFAULT,
        created_at_ms: 1,
        updated_at_ms: 1,
        id_start: 1_000_000 + 65_536 * NEXT_RANGE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        id_count: 65_536,
        incarnation: bulkhead_core::ids::new_incarnation(),
        egress: None,
        placement: Default::default(),
    }
}

static NEXT_RANGE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

pub(crate) fn key(ns: &str, name: &str) -> KeyRow {
    KeyRow {
        id: bulkhead_core::ids::new_id("key_"),
        namespace: ns.into(),
        name: name.into(),
        role: Role::Developer,
        token_hash: bulkhead_core::ids::new_id("h"),
        created_at_ms: 1,
        expires_at_ms: None,
        projects: None,
    }
}

pub(crate) fn event(n: i64) -> AuditEvent {
    AuditEvent {
        time_ms: n,
        principal: "admin".into(),
        action: "key.create".into(),
        resource: "key:x".into(),
        decision: "allow".into(),
        status: 201,
        request_id: "req_1".into(),
        detail: "{}".into(),
    }
}

pub(crate) async fn retention_prunes_behind_a_checkpoint_that_verifies<S: Store + RawSql>(s: &S) {
    let mut last = None;
    for i in 1..=3 {
        last = Some(s.append_audit("acme", event(i)).await.unwrap());
    }
    assert_eq!(s.audit_checkpoint("acme").await.unwrap(), None);
    for i in 4..=11 {
        last = Some(s.append_audit("acme", event(i)).await.unwrap());
    }
    let all = s.list_audit("acme", &AuditQuery { limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![8, 9, 10, 11]);
    let cp = s.audit_checkpoint("acme").await.unwrap().unwrap();
    assert_eq!((cp.seq, cp.time_ms), (7, 11));
    assert_eq!(cp.hash, all[0].prev_hash);
    let v = s.verify_audit("acme").await.unwrap();
    assert!(v.ok && v.records == 4 && v.pruned == 7 && v.pruned_at_ms == Some(11), "{v:?}");
    assert_eq!(last.unwrap().seq, 11);
    // Another chain keeps its own records.
    s.append_audit("other", event(1)).await.unwrap();
    assert!(s.verify_audit("other").await.unwrap().ok);
    // Editing a kept record is caught.
    s.raw("UPDATE audit_records SET principal = 'key:forged' WHERE chain = 'acme' AND seq = 9").await;
    let v = s.verify_audit("acme").await.unwrap();
    assert_eq!((v.ok, v.first_bad_seq), (false, Some(9)));
    // The namespace's checkpoint goes with it.
    s.create_namespace(&ns("acme")).await.unwrap();
    s.delete_namespace("acme").await.unwrap();
    assert_eq!(s.audit_checkpoint("acme").await.unwrap(), None);
    let id = s.store_id().await.unwrap();
    assert!(id.starts_with("sto_"));
    assert_eq!(s.store_id().await.unwrap(), id);
}

pub(crate) async fn namespace_delete_cascades_keys_and_chain<S: Store + RawSql>(s: &S) {
    s.create_namespace(&ns("acme")).await.unwrap();
    assert!(matches!(s.create_namespace(&ns("acme")).await, Err(StoreError::Conflict(_))));
    let k = key("acme", "ci");
    s.create_key(&k).await.unwrap();
    assert!(matches!(s.create_key(&key("acme", "ci")).await, Err(StoreError::Conflict(_))));
    assert!(matches!(s.create_key(&key("nope", "ci")).await, Err(StoreError::NotFound(_))));
    s.append_audit("acme", event(1)).await.unwrap();
    let r2 = s.append_audit("acme", event(2)).await.unwrap();
    assert_eq!(r2.seq, 2);
    assert_eq!(s.audit_head("acme").await.unwrap(), Some((2, r2.hash.clone())));
    assert_eq!(s.key_by_token_hash(&k.token_hash).await.unwrap(), Some(k.clone()));

    assert!(s.delete_namespace("acme").await.unwrap());
    assert!(!s.delete_namespace("acme").await.unwrap());
    assert_eq!(s.key_by_token_hash(&k.token_hash).await.unwrap(), None);
    assert_eq!(s.audit_head("acme").await.unwrap(), None);
    assert!(s.list_audit("acme", &AuditQuery { limit: 10, ..Default::default() }).await.unwrap().is_empty());
}

pub(crate) fn sandbox(ns: &str, cpu: u64) -> SandboxRow {
    SandboxRow {
        id: bulkhead_core::ids::new_id("sbx_"),
        namespace: ns.into(),
        status: SandboxStatus::Creating,
        reason: None,
        isolation: "container".into(),
        cpu_millis: cpu,
        memory_bytes: 1 << 20,
        pids: 10,
        ttl_seconds: 60,
        created_at_ms: 1,
        expires_at_ms: 60_001,
        ended_at_ms: None,
        filesystem: None,
        metered: MeterMark::default(),
        creator: "key:k".into(),
        workload_token_hash: None,
        secrets: Vec::new(),
        metered_at_ms: None,
        project: None,
        egress: None,
        image: None,
        disk_bytes: None,
        task: None,
        pooled: false,
        node: "node_a".into(),
    }
}

pub(crate) async fn a_claim_replaces_the_pool_sandboxs_share_of_the_quota_and_only_once<S: Store + RawSql>(s: &S) {
    s.create_namespace(&ns("acme")).await.unwrap();
    let quotas = Quotas { max_sandboxes: 2, cpu_millis: 1000, ..Quotas::DEFAULT };
    let pooled = SandboxRow { pooled: true, status: SandboxStatus::Running, ..sandbox("acme", 400) };
    s.admit_sandbox(&pooled, &quotas).await.unwrap();
    s.set_sandbox_status(&pooled.id, SandboxStatus::Running, None, None).await.unwrap();
    let other = sandbox("acme", 300);
    s.admit_sandbox(&other, &quotas).await.unwrap();
    // Lists never show a pool's sandbox; a lookup by id does (the service hides it).
    let listed: Vec<String> = s.list_sandboxes("acme", None, 10).await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(listed, vec![other.id.clone()]);
    // 300 used by the other sandbox: a claim of 800 does not fit, and leaves the pool's row.
    let too_big = SandboxRow { id: pooled.id.clone(), creator: "key:k".into(), ..sandbox("acme", 800) };
    assert!(matches!(s.claim_sandbox(&too_big, &quotas).await, Err(StoreError::Quota(_))));
    assert!(s.get_sandbox("acme", &pooled.id).await.unwrap().unwrap().pooled);
    // 700 fits once the pool's 400 is not counted.
    let claim = SandboxRow { id: pooled.id.clone(), creator: "key:k".into(), ..sandbox("acme", 700) };
    s.claim_sandbox(&claim, &quotas).await.unwrap();
    let row = s.get_sandbox("acme", &pooled.id).await.unwrap().unwrap();
    assert!(!row.pooled);
    assert_eq!((row.cpu_millis, row.creator.as_str(), row.status), (700, "key:k", SandboxStatus::Creating));
    // Claimed once: a second claim, or a claim of a sandbox that never was a pool's, finds none.
    assert!(matches!(s.claim_sandbox(&claim, &quotas).await, Err(StoreError::NotFound(_))));
    let not_pooled = SandboxRow { id: other.id.clone(), ..sandbox("acme", 10) };
    assert!(matches!(s.claim_sandbox(&not_pooled, &quotas).await, Err(StoreError::NotFound(_))));
    // Of another namespace: not found either.
    let foreign = SandboxRow { namespace: "other".into(), ..claim.clone() };
    assert!(matches!(s.claim_sandbox(&foreign, &quotas).await, Err(StoreError::NotFound(_))));
}

pub(crate) async fn warm_pool_sizes_are_set_listed_and_removed_and_name_existing_images_only<S: Store + RawSql>(s: &S) {
    s.create_namespace(&ns("acme")).await.unwrap();
    assert!(matches!(s.set_warm_pool("acme", "img_missing", 2, 1).await, Err(StoreError::NotFound(_))));
    assert!(s.warm_pools(None).await.unwrap().is_empty());
    // Removing a pool that does not exist is no error.
    s.set_warm_pool("acme", "img_missing", 0, 1).await.unwrap();
}

pub(crate) async fn admission_is_checked_against_active_sandboxes_and_slots_are_unique<S: Store + RawSql>(s: &S) {
    s.create_namespace(&ns("acme")).await.unwrap();
    s.create_namespace(&ns("globex")).await.unwrap();
    let a = s.get_namespace("acme").await.unwrap().unwrap();
    let g = s.get_namespace("globex").await.unwrap().unwrap();
    assert_ne!(a.id_start, g.id_start);
    let quotas = Quotas { max_sandboxes: 2, cpu_millis: 1000, ..Quotas::DEFAULT };
    let first = sandbox("acme", 600);
    s.admit_sandbox(&first, &quotas).await.unwrap();
    match s.admit_sandbox(&sandbox("acme", 600), &quotas).await {
        Err(StoreError::Quota(b)) => assert_eq!((b.quota, b.limit, b.used), ("cpu_millis", 1000, 600)),
        other => panic!("{other:?}"),
    }
    s.admit_sandbox(&sandbox("acme", 100), &quotas).await.unwrap();
    match s.admit_sandbox(&sandbox("acme", 100), &quotas).await {
        Err(StoreError::Quota(b)) => assert_eq!(b.quota, "max_sandboxes"),
        other => panic!("{other:?}"),
    }
    // Another namespace's quota is its own.
    s.admit_sandbox(&sandbox("globex", 900), &quotas).await.unwrap();
    // An ended sandbox frees its share.
    s.set_sandbox_status(&first.id, SandboxStatus::Stopped, Some("ttl_expired"), Some(5)).await.unwrap();
    s.admit_sandbox(&sandbox("acme", 600), &quotas).await.unwrap();
    assert_eq!(s.active_sandboxes().await.unwrap().len(), 3);
    let got = s.get_sandbox("acme", &first.id).await.unwrap().unwrap();
    assert_eq!(got.reason.as_deref(), Some("ttl_expired"));
    assert!(s.get_sandbox("globex", &first.id).await.unwrap().is_none());
    // A namespace keeps the range it was created with.
    s.delete_namespace("acme").await.unwrap();
    let fresh = ns("acme");
    s.create_namespace(&fresh).await.unwrap();
    let again = s.get_namespace("acme").await.unwrap().unwrap();
    assert_eq!((again.id_start, again.id_count), (fresh.id_start, 65_536));
    assert!(s.get_sandbox("acme", &first.id).await.unwrap().is_none());
}

pub(crate) async fn idempotency_claims_are_exclusive_answered_released_and_expire<S: Store + RawSql>(s: &S) {
    let claim = |fp: &'static str, now: i64| {
        let s = &s;
        async move { s.claim_idempotent("ns:a:key:k:x", "k1", fp, now, now - 100).await.unwrap() }
    };
    assert_eq!(claim("f1", 1000).await, IdempotencyClaim::Claimed);
    assert_eq!(claim("f1", 1001).await, IdempotencyClaim::InProgress { fingerprint: "f1".into() });
    s.release_idempotent("ns:a:key:k:x", "k1").await.unwrap();
    assert_eq!(claim("f2", 1002).await, IdempotencyClaim::Claimed);
    let reply = IdempotentReply { fingerprint: "f2".into(), status: 201, body: "{}".into() };
    s.finish_idempotent("ns:a:key:k:x", "k1", &reply).await.unwrap();
    // An answered key is not released by a late release.
    s.release_idempotent("ns:a:key:k:x", "k1").await.unwrap();
    assert_eq!(claim("f2", 1050).await, IdempotencyClaim::Done(reply));
    // Past its lifetime the answer no longer counts.
    assert_eq!(claim("f3", 5000).await, IdempotencyClaim::Claimed);
    assert_eq!(s.release_pending_idempotency().await.unwrap(), 1);
    assert_eq!(claim("f4", 5001).await, IdempotencyClaim::Claimed);
}

pub(crate) async fn every_row_type_reads_back_what_it_wrote<S: Store + RawSql>(s: &S) {
    let acme = ns("acme");
    s.create_namespace(&acme).await.unwrap();
    assert_eq!(s.get_namespace("acme").await.unwrap(), Some(acme));
    let key = KeyRow { projects: Some(vec!["prj_a".into()]), expires_at_ms: Some(9), ..key("acme", "ci") };
    s.create_key(&key).await.unwrap();
    assert_eq!(s.get_key("acme", &key.id).await.unwrap(), Some(key));
    let project = ProjectRow { id: "prj_a".into(), namespace: "acme".into(), name: "web".into(), created_at_ms: 2 };
    s.create_project(&project).await.unwrap();
    let fs = FilesystemRow {
        id: "fs_a".into(),
        namespace: "acme".into(),
        name: "data".into(),
        project_id: Some("prj_a".into()),
        size_bytes: 1 << 30,
        created_at_ms: 3,
        updated_at_ms: 4,
        node: "node_a".into(),
    };
    s.admit_filesystem(&fs, 2 << 30).await.unwrap();
    assert_eq!(s.get_filesystem("acme", "fs_a").await.unwrap(), Some(fs.clone()));
    let sbx = SandboxRow {
        filesystem: Some(("fs_a".into(), "rw".into())),
        secrets: vec!["token".into()],
        project: Some("prj_a".into()),
        egress: Some(bulkhead_core::egress::SandboxEgress {
            allow: vec!["pypi.org".parse().unwrap(), "203.0.113.0/24:443".parse().unwrap()],
            credentials: vec![bulkhead_core::egress::Credential {
                host: "pypi.org".into(),
                secret: "token".into(),
                header: "Authorization".into(),
                format: "Bearer {secret}".into(),
            }],
        }),
        workload_token_hash: Some("wh".into()),
        metered: MeterMark { cpu_ns: 5, io_read_bytes: 6, io_write_bytes: 7 },
        metered_at_ms: Some(8),
        reason: Some("why".into()),
        ..sandbox("acme", 100)
    };
    s.admit_sandbox(&sbx, &Quotas::DEFAULT).await.unwrap();
    assert_eq!(s.get_sandbox("acme", &sbx.id).await.unwrap(), Some(sbx.clone()));
    let ceiling = bulkhead_core::egress::Ceiling {
        allow: vec!["*.org".parse().unwrap()],
        max_bandwidth_bytes_per_second: Some(1000),
    };
    let updated = s.update_namespace_egress("acme", &ceiling, 9).await.unwrap().expect("exists");
    assert_eq!((updated.egress.as_ref(), updated.updated_at_ms), (Some(&ceiling), 9));
    assert_eq!(s.get_namespace("acme").await.unwrap().and_then(|n| n.egress), Some(ceiling.clone()));
    assert_eq!(s.update_namespace_egress("nope", &ceiling, 9).await.unwrap(), None);
    assert_eq!(s.sandboxes_using("fs_a").await.unwrap(), [sbx]);
    let policy = PolicyRow {
        id: "pol_a".into(),
        namespace: "acme".into(),
        name: "p".into(),
        text: "permit(principal, action, resource);".into(),
        created_at_ms: 5,
    };
    s.create_policy(&policy, 10).await.unwrap();
    assert_eq!(s.all_policies("acme").await.unwrap(), [policy]);
    let secret = SecretRow {
        id: "sec_a".into(),
        namespace: "acme".into(),
        name: "token".into(),
        sealed: vec![1, 2, 3],
        created_at_ms: 6,
        updated_at_ms: 6,
    };
    assert!(s.put_secret(&secret).await.unwrap());
    assert_eq!(s.get_secret("acme", "token").await.unwrap(), Some(secret.clone()));
    // Listing leaves the sealed value in the database.
    assert_eq!(s.list_secrets("acme", None, 10).await.unwrap(), [SecretRow { sealed: Vec::new(), ..secret }]);
    let usage = UsageDelta {
        cpu_ns: 1,
        memory_byte_ms: 2,
        sandbox_ms: 3,
        memory_peak_bytes: 4,
        exec_count: 5,
        quota_rejections: 6,
        io_read_bytes: 7,
        io_write_bytes: 8,
        egress_bytes_out: 9,
        egress_bytes_in: 10,
        egress_connections: 11,
        egress_denied: 12,
    };
    s.add_usage("acme", 60_000, &usage).await.unwrap();
    assert_eq!(s.usage("acme", 0, 120_000).await.unwrap(), [UsageBucket { bucket_ms: 60_000, usage }]);
    // A second delta in the same bucket adds to every counter and keeps the larger peak.
    s.add_usage("acme", 60_000, &usage).await.unwrap();
    let doubled = UsageDelta {
        cpu_ns: 2,
        memory_byte_ms: 4,
        sandbox_ms: 6,
        memory_peak_bytes: 4,
        exec_count: 10,
        quota_rejections: 12,
        io_read_bytes: 14,
        io_write_bytes: 16,
        egress_bytes_out: 18,
        egress_bytes_in: 20,
        egress_connections: 22,
        egress_denied: 24,
    };
    assert_eq!(s.usage("acme", 0, 120_000).await.unwrap(), [UsageBucket { bucket_ms: 60_000, usage: doubled }]);
    let record = s.append_audit("acme", event(7)).await.unwrap();
    assert_eq!(s.list_audit("acme", &AuditQuery { limit: 10, ..Default::default() }).await.unwrap(), [record]);
}

pub(crate) fn image(ns: Option<&str>, name: &str, layers: &[&str]) -> ImageRow {
    ImageRow {
        id: bulkhead_core::ids::new_id("img_"),
        namespace: ns.map(str::to_owned),
        name: name.into(),
        digest: format!("sha256:{}", "a".repeat(64)),
        config: "{}".into(),
        layers: layers.iter().map(|l| (*l).to_owned()).collect(),
        size_bytes: 10,
        source: "archive".into(),
        created_at_ms: 1,
        status: "ready".into(),
    }
}

pub(crate) async fn images_are_private_first_then_public_and_busy_while_a_sandbox_lives<S: Store + RawSql>(s: &S) {
    s.create_namespace(&ns("acme")).await.unwrap();
    s.create_namespace(&ns("globex")).await.unwrap();
    let public = image(None, "python", &["sha256:l1", "sha256:l2"]);
    s.insert_image(&public).await.unwrap();
    // One public image per name; a namespace may shadow it with its own.
    assert!(matches!(s.insert_image(&image(None, "python", &[])).await, Err(StoreError::Conflict(_))));
    let own = image(Some("acme"), "python", &["sha256:l3"]);
    s.insert_image(&own).await.unwrap();
    assert!(matches!(s.insert_image(&image(Some("acme"), "python", &[])).await, Err(StoreError::Conflict(_))));
    assert!(matches!(s.insert_image(&image(Some("nobody"), "x", &[])).await, Err(StoreError::NotFound(_))));

    assert_eq!(s.find_image(Some("acme"), "python").await.unwrap(), Some(own.clone()));
    assert_eq!(s.find_image(Some("globex"), "python").await.unwrap(), Some(public.clone()));
    assert_eq!(s.find_image(None, "python").await.unwrap(), Some(public.clone()));
    // Another namespace's image is not there, by name or by id.
    assert_eq!(s.find_image(Some("globex"), &own.id).await.unwrap(), None);
    assert_eq!(s.find_image(None, &own.id).await.unwrap(), None);
    assert_eq!(s.find_image(Some("acme"), &own.id).await.unwrap(), Some(own.clone()));

    let acme: Vec<String> = s.list_images(Some("acme"), None, 10).await.unwrap().into_iter().map(|i| i.id).collect();
    let mut both = vec![own.id.clone(), public.id.clone()];
    both.sort();
    assert_eq!(acme, both);
    let first = s.list_images(Some("acme"), None, 1).await.unwrap();
    let rest = s.list_images(Some("acme"), Some(&first[0].id), 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(s.list_images(None, None, 10).await.unwrap(), vec![public.clone()]);
    assert_eq!(s.image_layers(None).await.unwrap(), vec!["sha256:l1".to_owned(), "sha256:l2".to_owned()]);
    assert_eq!(s.image_layers(Some("acme")).await.unwrap(), vec!["sha256:l3".to_owned()]);

    // A live sandbox of the image holds it; an ended one does not.
    let sbx = SandboxRow {
        image: Some(SandboxImage {
            id: own.id.clone(),
            name: own.name.clone(),
            digest: own.digest.clone(),
            user: Some("app".into()),
            working_dir: Some("/srv".into()),
        }),
        disk_bytes: Some(1 << 30),
        ..sandbox("acme", 100)
    };
    s.admit_sandbox(&sbx, &Quotas::DEFAULT).await.unwrap();
    assert_eq!(s.get_sandbox("acme", &sbx.id).await.unwrap(), Some(sbx.clone()));
    assert_eq!(s.delete_image(&own.id).await.unwrap(), ImageDeletion::InUse(sbx.id.clone()));
    s.set_sandbox_status(&sbx.id, SandboxStatus::Deleted, Some("deleted"), Some(5)).await.unwrap();
    assert_eq!(s.delete_image(&own.id).await.unwrap(), ImageDeletion::Deleted);
    assert_eq!(s.delete_image(&own.id).await.unwrap(), ImageDeletion::NotFound);
    // A sandbox of an image deleted meanwhile is not admitted.
    let late = SandboxRow { image: sbx.image.clone(), ..sandbox("acme", 100) };
    assert!(matches!(s.admit_sandbox(&late, &Quotas::DEFAULT).await, Err(StoreError::NotFound(_))));
    // A namespace's images go with it.
    let theirs = image(Some("globex"), "tool", &[]);
    s.insert_image(&theirs).await.unwrap();
    s.delete_namespace("globex").await.unwrap();
    assert_eq!(s.find_image(Some("globex"), "tool").await.unwrap(), None);
}

pub(crate) async fn agents_versions_tasks_messages_and_state<S: Store + RawSql>(s: &S) {
    use crate::{AgentRow, StateWrite, TaskRow, TaskUpdate, VersionRow};
    s.create_namespace(&ns("acme")).await.unwrap();
    s.create_namespace(&ns("globex")).await.unwrap();
    let agent = AgentRow {
        id: "agt_1".into(),
        namespace: "acme".into(),
        name: "coder".into(),
        deploys: vec![],
        created_at_ms: 1,
        updated_at_ms: 1,
    };
    s.insert_agent(&agent).await.unwrap();
    assert!(matches!(
        s.insert_agent(&AgentRow { id: "agt_2".into(), ..agent.clone() }).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.find_agent("acme", "coder").await.unwrap(), Some(agent.clone()));
    assert_eq!(s.find_agent("globex", "coder").await.unwrap(), None);
    assert_eq!(s.find_agent("globex", "agt_1").await.unwrap(), None);
    // The same digest twice is one version.
    let v = |id: &str, digest: &str| VersionRow {
        id: id.into(),
        namespace: "acme".into(),
        agent_id: "agt_1".into(),
        digest: digest.into(),
        manifest: "{}".into(),
        size_bytes: 3,
        created_at_ms: 2,
    };
    assert_eq!(s.insert_version(&v("ver_1", "sha256:a")).await.unwrap().id, "ver_1");
    assert_eq!(s.insert_version(&v("ver_2", "sha256:a")).await.unwrap().id, "ver_1");
    assert_eq!(s.insert_version(&v("ver_3", "sha256:b")).await.unwrap().id, "ver_3");
    assert_eq!(s.version_digests("acme").await.unwrap(), ["sha256:a", "sha256:b"]);
    assert_eq!(s.get_version("globex", "ver_1").await.unwrap(), None);
    // Deploys are a compare and swap.
    assert!(s.set_deploys("agt_1", &[], &["ver_1".into()], 3).await.unwrap());
    assert!(!s.set_deploys("agt_1", &[], &["ver_3".into()], 3).await.unwrap());
    assert_eq!(s.find_agent("acme", "agt_1").await.unwrap().unwrap().active(), Some("ver_1"));
    // A task's messages are numbered from 1, in order, all or none.
    let task = TaskRow {
        id: "tsk_1".into(),
        namespace: "acme".into(),
        agent_id: "agt_1".into(),
        version_id: "ver_1".into(),
        filesystem: None,
        project: None,
        permissions: "policy".into(),
        status: "starting".into(),
        reason: None,
        sandbox_id: None,
        session_id: None,
        plan: "{}".into(),
        creator: "key:key_1".into(),
        created_at_ms: 4,
        updated_at_ms: 4,
        ended_at_ms: None,
        input_tokens: 0,
        output_tokens: 0,
        last_seq: 0,
    };
    s.insert_task(&task).await.unwrap();
    let two = vec![("a".to_owned(), "1".to_owned()), ("b".to_owned(), "2".to_owned())];
    assert_eq!(s.append_messages("tsk_1", &two, 5).await.unwrap(), [1, 2]);
    assert_eq!(s.append_messages("tsk_1", &two[..1], 5).await.unwrap(), [3]);
    let after_one: Vec<u64> = s.task_messages("tsk_1", 1, 10).await.unwrap().iter().map(|m| m.seq).collect();
    assert_eq!(after_one, [2, 3]);
    assert!(matches!(s.append_messages("tsk_none", &two, 5).await, Err(StoreError::NotFound(_))));
    // Status changes stop at an end; tokens add up.
    let u = TaskUpdate { status: Some("running".into()), input_tokens: 5, at_ms: 6, ..TaskUpdate::default() };
    let row = s.update_task("tsk_1", &u).await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.input_tokens, row.last_seq), ("running", 5, 3));
    assert!(matches!(s.delete_agent("acme", "agt_1").await, Err(StoreError::Conflict(_))));
    let done = TaskUpdate { status: Some("completed".into()), ended_at_ms: Some(7), at_ms: 7, ..TaskUpdate::default() };
    s.update_task("tsk_1", &done).await.unwrap();
    let row = s.update_task("tsk_1", &u).await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.input_tokens), ("completed", 5));
    // State: conditional on its version.
    assert_eq!(s.task_state("acme", "tsk_1").await.unwrap(), Some(("{}".to_owned(), 0)));
    assert_eq!(s.put_task_state("acme", "tsk_1", "{\"a\":1}", Some(0)).await.unwrap(), StateWrite::Written(1));
    assert_eq!(s.put_task_state("acme", "tsk_1", "{\"a\":2}", Some(0)).await.unwrap(), StateWrite::Stale(1));
    assert_eq!(s.put_task_state("acme", "tsk_1", "{\"a\":3}", None).await.unwrap(), StateWrite::Written(2));
    assert_eq!(s.put_task_state("globex", "tsk_1", "{}", None).await.unwrap(), StateWrite::NotFound);
    assert_eq!(s.task_state("globex", "tsk_1").await.unwrap(), None);
    // An agent whose task has not ended is not deleted; then it is, with its versions.
    s.update_task("tsk_1", &TaskUpdate { at_ms: 8, ..TaskUpdate::default() }).await.unwrap();
    assert!(s.delete_agent("acme", "agt_1").await.unwrap());
    assert_eq!(s.version_digests("acme").await.unwrap(), Vec::<String>::new());
    assert_eq!(s.get_task("acme", "tsk_1").await.unwrap(), None);
}

pub(crate) async fn nodes_hold_leases_and_a_lost_nodes_sandboxes_and_claims_end_once<S: Store + RawSql>(s: &S) {
    s.create_namespace(&ns("acme")).await.unwrap();
    s.register_node("node_a", "http://192.0.2.1:7070", 1_000, 10_000).await.unwrap();
    s.register_node("node_b", "http://192.0.2.2:7070", 1_000, 10_000).await.unwrap();
    let on_a = sandbox("acme", 100);
    let on_b = SandboxRow { node: "node_b".into(), workload_token_hash: Some("wb".into()), ..sandbox("acme", 100) };
    s.admit_sandbox(&on_a, &Quotas::DEFAULT).await.unwrap();
    s.admit_sandbox(&on_b, &Quotas::DEFAULT).await.unwrap();
    s.raw(
        "INSERT INTO idempotency (scope, key, fingerprint, status, body, created_at_ms, node) \
           VALUES ('ns:acme:k', 'on-b', 'f', 0, '', 1, 'node_b')",
    )
    .await;
    // Live leases: nobody is lost.
    assert!(s.expire_nodes("node_a", 9_999, "lost").await.unwrap().is_empty());
    assert!(s.renew_node("node_a", 20_000).await.unwrap());
    // node_b's lease lapsed: node_a declares it lost, once.
    let declared = s.expire_nodes("node_a", 15_000, "lost: its node stopped").await.unwrap();
    assert_eq!(declared, vec![("node_b".to_owned(), vec![on_b.id.clone()])]);
    assert!(s.expire_nodes("node_a", 15_001, "lost").await.unwrap().is_empty());
    let ended = s.get_sandbox("acme", &on_b.id).await.unwrap().unwrap();
    assert_eq!((ended.status, ended.reason.as_deref()), (SandboxStatus::Failed, Some("lost: its node stopped")));
    assert_eq!((ended.ended_at_ms, ended.workload_token_hash), (Some(15_000), None));
    assert_eq!(s.get_sandbox("acme", &on_a.id).await.unwrap().unwrap().status, SandboxStatus::Creating);
    // Its claim in flight is free again.
    assert_eq!(s.claim_idempotent("ns:acme:k", "on-b", "f", 15_002, 0).await.unwrap(), IdempotencyClaim::Claimed);
    // A node never declares itself lost; a lost node learns it at its next renewal.
    assert!(s.expire_nodes("node_b", 30_000, "lost").await.unwrap().iter().all(|(n, _)| n != "node_b"));
    assert!(!s.renew_node("node_b", 40_000).await.unwrap());
    let nodes = s.nodes().await.unwrap();
    let b = nodes.iter().find(|n| n.id == "node_b").unwrap();
    assert_eq!(b.lost_at_ms, Some(15_000));
    assert!(!b.is_live(15_000));
    // Registering again (a restart) makes it live.
    s.register_node("node_b", "http://192.0.2.2:7071", 41_000, 50_000).await.unwrap();
    assert!(s.renew_node("node_b", 60_000).await.unwrap());
    let b = s.nodes().await.unwrap().into_iter().find(|n| n.id == "node_b").unwrap();
    assert!(b.is_live(59_999) && b.url == "http://192.0.2.2:7071");
    s.remove_node("node_b").await.unwrap();
    assert!(s.nodes().await.unwrap().iter().all(|n| n.id != "node_b"));
    // One token key per store: the first one stored wins.
    assert_eq!(s.token_key("sealed-1", 1).await.unwrap(), "sealed-1");
    assert_eq!(s.token_key("sealed-2", 2).await.unwrap(), "sealed-1");
}
