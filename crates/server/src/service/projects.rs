//! Projects: named groups of a namespace's filesystems that keys can be limited to.

use bulkhead_store::StoreError;

use super::records::ProjectRow;
use super::{ServiceError, ServiceResult};
use crate::state::AppState;

/// Stores a new project.
pub async fn create(state: &AppState, row: &ProjectRow) -> ServiceResult<()> {
    Ok(state.store.create_project(row).await?)
}

/// Project `id` of namespace `ns`, if it exists.
pub async fn get(state: &AppState, ns: &str, id: &str) -> ServiceResult<Option<ProjectRow>> {
    Ok(state.store.get_project(ns, id).await?)
}

/// A page of namespace `ns`'s projects in id order after `after`.
pub async fn list(state: &AppState, ns: &str, after: Option<&str>, limit: u32) -> ServiceResult<Vec<ProjectRow>> {
    Ok(state.store.list_projects(ns, after, limit).await?)
}

/// Deletes project `id`; `false` when it did not exist, a conflict while filesystems are in it.
pub async fn delete(state: &AppState, ns: &str, id: &str) -> ServiceResult<bool> {
    match state.store.delete_project(ns, id).await {
        Err(StoreError::Conflict(_)) => {
            Err(ServiceError::Conflict(format!("project {id} still has filesystems; delete them first")))
        }
        other => Ok(other?),
    }
}
