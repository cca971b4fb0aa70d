//! Conversions between wire types and domain or store types.

use bulkhead_api as api;
use bulkhead_core::{QuotaPatch, Quotas, Role};
use bulkhead_store::{KeyRow, NamespaceRow};

use crate::time::rfc3339;

pub fn quotas_in(q: &api::Quotas) -> Quotas {
    Quotas {
        cpu_millis: q.cpu_millis,
        memory_bytes: q.memory_bytes,
        disk_bytes: q.disk_bytes,
        max_sandboxes: q.max_sandboxes,
        pids_per_sandbox: q.pids_per_sandbox,
        max_sandbox_ttl_seconds: q.max_sandbox_ttl_seconds,
        api_requests_per_second: q.api_requests_per_second,
        max_concurrent_execs: q.max_concurrent_execs,
    }
}

pub fn quotas_out(q: &Quotas) -> api::Quotas {
    api::Quotas {
        cpu_millis: q.cpu_millis,
        memory_bytes: q.memory_bytes,
        disk_bytes: q.disk_bytes,
        max_sandboxes: q.max_sandboxes,
        pids_per_sandbox: q.pids_per_sandbox,
        max_sandbox_ttl_seconds: q.max_sandbox_ttl_seconds,
        api_requests_per_second: q.api_requests_per_second,
        max_concurrent_execs: q.max_concurrent_execs,
    }
}

pub fn quota_patch_in(q: &api::QuotasPatch) -> QuotaPatch {
    QuotaPatch {
        cpu_millis: q.cpu_millis,
        memory_bytes: q.memory_bytes,
        disk_bytes: q.disk_bytes,
        max_sandboxes: q.max_sandboxes,
        pids_per_sandbox: q.pids_per_sandbox,
        max_sandbox_ttl_seconds: q.max_sandbox_ttl_seconds,
        api_requests_per_second: q.api_requests_per_second,
        max_concurrent_execs: q.max_concurrent_execs,
    }
}

pub fn namespace_out(row: &NamespaceRow) -> api::Namespace {
    api::Namespace {
        name: row.name.clone(),
        isolation: row.isolation.clone(),
        quotas: quotas_out(&row.quotas),
        created_at: rfc3339(row.created_at_ms),
        updated_at: rfc3339(row.updated_at_ms),
        usage: None,
        egress: ceiling_out(row.egress.as_ref()),
        placement: placement_out(&row.placement),
    }
}

/// A namespace's placement on the wire.
pub fn placement_out(p: &bulkhead_core::placement::Placement) -> api::Placement {
    match p.dedicated() {
        None => api::Placement { mode: api::PlacementMode::Shared, cpus: None, memory_bytes: None, cpuset: None },
        Some(d) => api::Placement {
            mode: api::PlacementMode::Dedicated,
            cpus: Some(d.cpus),
            memory_bytes: Some(d.memory_bytes),
            cpuset: Some(d.cpuset.to_string()),
        },
    }
}

/// A placement request from the wire; `cpus` and `memory_bytes` belong to `dedicated` alone.
pub fn placement_in(p: &api::PlacementSpec) -> Result<crate::service::placement::Request, bulkhead_core::FieldError> {
    use crate::service::placement::Request;
    match p.mode {
        api::PlacementMode::Dedicated => Ok(Request::Dedicated { cpus: p.cpus, memory_bytes: p.memory_bytes }),
        api::PlacementMode::Shared if p.cpus.is_some() => {
            Err(bulkhead_core::FieldError::new("placement.cpus", "only with mode dedicated"))
        }
        api::PlacementMode::Shared if p.memory_bytes.is_some() => {
            Err(bulkhead_core::FieldError::new("placement.memory_bytes", "only with mode dedicated"))
        }
        api::PlacementMode::Shared => Ok(Request::Shared),
    }
}

/// A namespace's egress ceiling on the wire; `None` is the default, empty one.
pub fn ceiling_out(c: Option<&bulkhead_core::egress::Ceiling>) -> api::EgressCeiling {
    c.map(|c| api::EgressCeiling {
        allow: c.allow.iter().map(ToString::to_string).collect(),
        max_bandwidth_bytes_per_second: c.max_bandwidth_bytes_per_second,
    })
    .unwrap_or_default()
}

/// A ceiling from the wire: every entry parsed (a 400 names the first bad one), the cap at
/// least 1 byte a second.
pub fn ceiling_in(c: &api::EgressCeiling) -> Result<bulkhead_core::egress::Ceiling, bulkhead_core::FieldError> {
    let allow = bulkhead_core::egress::parse_list("egress.allow", &c.allow)?;
    if c.max_bandwidth_bytes_per_second == Some(0) {
        return Err(bulkhead_core::FieldError::new("egress.max_bandwidth_bytes_per_second", "at least 1"));
    }
    Ok(bulkhead_core::egress::Ceiling { allow, max_bandwidth_bytes_per_second: c.max_bandwidth_bytes_per_second })
}

/// A sandbox's egress on the wire.
pub fn sandbox_egress_out(e: &bulkhead_core::egress::SandboxEgress) -> api::SandboxEgress {
    api::SandboxEgress {
        allow: e.allow.iter().map(ToString::to_string).collect(),
        credentials: e
            .credentials
            .iter()
            .map(|c| api::EgressCredential {
                host: c.host.clone(),
                secret: c.secret.clone(),
                header: c.header.clone(),
                format: c.format.clone(),
            })
            .collect(),
    }
}

pub fn role_in(r: api::Role) -> Role {
    match r {
        api::Role::Owner => Role::Owner,
        api::Role::Admin => Role::Admin,
        api::Role::Developer => Role::Developer,
        api::Role::Viewer => Role::Viewer,
    }
}

pub fn role_out(r: Role) -> api::Role {
    match r {
        Role::Owner => api::Role::Owner,
        Role::Admin => api::Role::Admin,
        Role::Developer => api::Role::Developer,
        Role::Viewer => api::Role::Viewer,
    }
}

pub fn key_out(row: &KeyRow) -> api::Key {
    api::Key {
        id: row.id.clone(),
        namespace: row.namespace.clone(),
        name: row.name.clone(),
        role: role_out(row.role),
        created_at: rfc3339(row.created_at_ms),
        expires_at: row.expires_at_ms.map(rfc3339),
        projects: row.projects.clone(),
    }
}

pub fn audit_out(r: &bulkhead_core::audit::AuditRecord) -> api::AuditRecord {
    api::AuditRecord {
        seq: r.seq,
        time: rfc3339(r.event.time_ms),
        time_ms: r.event.time_ms,
        principal: r.event.principal.clone(),
        action: r.event.action.clone(),
        resource: r.event.resource.clone(),
        decision: r.event.decision.clone(),
        status: r.event.status,
        request_id: r.event.request_id.clone(),
        detail: r.event.detail.clone(),
        prev_hash: r.prev_hash.clone(),
        hash: r.hash.clone(),
    }
}
