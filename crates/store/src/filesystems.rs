//! The filesystems aggregate: projects, the permission boundaries of filesystems, and the
//! filesystems themselves with their admission against a namespace's disk quota.

use async_trait::async_trait;

use crate::Result;

/// A project: a permission boundary for filesystems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRow {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub created_at_ms: i64,
}

/// A filesystem as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesystemRow {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub project_id: Option<String>,
    pub size_bytes: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// The node whose data dir holds its image (`node_…`, see [`crate::NodeStore`]).
    pub node: String,
}

/// Projects and filesystems.
#[async_trait]
pub trait FilesystemStore: Send + Sync {
    async fn create_project(&self, project: &ProjectRow) -> Result<()>;
    async fn get_project(&self, namespace: &str, id: &str) -> Result<Option<ProjectRow>>;
    async fn list_projects(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<ProjectRow>>;
    /// Deletes a project; `Conflict` while filesystems belong to it.
    async fn delete_project(&self, namespace: &str, id: &str) -> Result<bool>;

    /// Inserts `fs` when the namespace's filesystems stay within `disk_bytes`, atomically with
    /// the check.
    async fn admit_filesystem(&self, fs: &FilesystemRow, disk_bytes: u64) -> Result<()>;
    async fn get_filesystem(&self, namespace: &str, id: &str) -> Result<Option<FilesystemRow>>;
    async fn list_filesystems(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<FilesystemRow>>;
    /// Every filesystem of every namespace (to mount them at start).
    async fn all_filesystems(&self) -> Result<Vec<FilesystemRow>>;
    /// Sets a new size when the namespace's filesystems stay within `disk_bytes`.
    async fn resize_filesystem(
        &self,
        namespace: &str,
        id: &str,
        size_bytes: u64,
        disk_bytes: u64,
        now_ms: i64,
    ) -> Result<Option<FilesystemRow>>;
    async fn delete_filesystem(&self, namespace: &str, id: &str) -> Result<bool>;
}
