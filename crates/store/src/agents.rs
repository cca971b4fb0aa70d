//! The agents aggregate: agents, their immutable versions (uploaded bundles, stored by the
//! server under its data dir and named here by digest), their tasks, each task's ordered
//! messages and its state document.

use async_trait::async_trait;

use crate::Result;

/// An agent as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRow {
    /// `agt_…`.
    pub id: String,
    pub namespace: String,
    /// `[a-z0-9-]{1,63}`, unique within its namespace.
    pub name: String,
    /// The deploy history, oldest first: version ids, the active one last (empty: never
    /// deployed).
    pub deploys: Vec<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl AgentRow {
    /// The active version: the last one deployed and not rolled back.
    pub fn active(&self) -> Option<&str> {
        self.deploys.last().map(String::as_str)
    }
}

/// A version of an agent: one uploaded bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    /// `ver_…`.
    pub id: String,
    pub namespace: String,
    pub agent_id: String,
    /// `sha256:<hex>` of the bundle as stored; unique per agent.
    pub digest: String,
    /// The validated `agent.json`, as JSON.
    pub manifest: String,
    pub size_bytes: u64,
    pub created_at_ms: i64,
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    /// `tsk_…`.
    pub id: String,
    pub namespace: String,
    pub agent_id: String,
    pub version_id: String,
    /// The filesystem at `/workspace` and its mode (`rw` or `ro`).
    pub filesystem: Option<(String, String)>,
    /// The filesystem's project.
    pub project: Option<String>,
    /// `policy` (the namespace's policies answer the agent's permission requests) or `ask`.
    pub permissions: String,
    /// `starting`, `running`, `idle`, `completed`, `failed` or `cancelled`.
    pub status: String,
    pub reason: Option<String>,
    /// Its sandbox while it has one.
    pub sandbox_id: Option<String>,
    /// The ACP session the agent opened.
    pub session_id: Option<String>,
    /// What its sandbox starts from (the server's JSON).
    pub plan: String,
    /// Who created it: `key:<id>`, `user:<sub>`, `sandbox:<id>` or `admin`.
    pub creator: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    /// Tokens the agent reported using.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The last message's sequence number (0: none yet).
    pub last_seq: u64,
}

impl TaskRow {
    /// Whether the task has ended (`completed`, `failed` or `cancelled`).
    pub fn ended(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "cancelled")
    }
}

/// A message of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMessageRow {
    /// From 1, without a gap.
    pub seq: u64,
    pub kind: String,
    /// The message as JSON.
    pub body: String,
    pub created_at_ms: i64,
}

/// A change of a task's status, with what goes with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskUpdate {
    pub status: Option<String>,
    /// Set with the status (cleared when `Some(None)`).
    pub reason: Option<Option<String>>,
    pub sandbox_id: Option<Option<String>>,
    pub session_id: Option<Option<String>>,
    pub ended_at_ms: Option<i64>,
    /// Added to the counts.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// When (the task's `updated_at_ms`).
    pub at_ms: i64,
}

/// What a conditional write of a task's state did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateWrite {
    /// Written; the new version.
    Written(u64),
    /// The version asked for is not the current one (this one).
    Stale(u64),
    NotFound,
}

/// Agents, versions, tasks and messages of every namespace. Every read is keyed by namespace.
#[async_trait]
pub trait AgentStore: Send + Sync {
    /// Records an agent; a name taken in its namespace is [`crate::StoreError::Conflict`].
    async fn insert_agent(&self, agent: &AgentRow) -> Result<()>;
    /// The agent `name_or_id` (a name or an `agt_…` id) of `namespace`.
    async fn find_agent(&self, namespace: &str, name_or_id: &str) -> Result<Option<AgentRow>>;
    /// A page of the namespace's agents by id.
    async fn list_agents(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<AgentRow>>;
    /// Deletes an agent (its versions and ended tasks with it) unless a task of it has not
    /// ended: then [`crate::StoreError::Conflict`] naming that task. Whether it existed.
    async fn delete_agent(&self, namespace: &str, id: &str) -> Result<bool>;
    /// Replaces the agent's deploy history (a deploy or a rollback), if it is still `expected`
    /// (compare and swap): whether it was.
    async fn set_deploys(&self, id: &str, expected: &[String], deploys: &[String], at_ms: i64) -> Result<bool>;
    /// Records a version, or answers the agent's existing one with the same digest.
    async fn insert_version(&self, version: &VersionRow) -> Result<VersionRow>;
    /// Version `id` of the namespace.
    async fn get_version(&self, namespace: &str, id: &str) -> Result<Option<VersionRow>>;
    /// A page of an agent's versions, newest first, before `before` (an id's creation order).
    async fn list_versions(
        &self,
        namespace: &str,
        agent_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<VersionRow>>;
    /// The bytes of the namespace's distinct bundles (each digest once).
    async fn version_bytes(&self, namespace: &str) -> Result<u64>;
    /// The digests of every version of the namespace (what its bundle store keeps).
    async fn version_digests(&self, namespace: &str) -> Result<Vec<String>>;
    /// Records a new task.
    async fn insert_task(&self, task: &TaskRow) -> Result<()>;
    /// Forgets task `id` of the namespace with its messages (a create that did not happen).
    async fn delete_task(&self, namespace: &str, id: &str) -> Result<bool>;
    /// Task `id` of the namespace.
    async fn get_task(&self, namespace: &str, id: &str) -> Result<Option<TaskRow>>;
    /// A page of the namespace's tasks by id, of one agent when `agent_id` is given.
    async fn list_tasks(
        &self,
        namespace: &str,
        agent_id: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<TaskRow>>;
    /// Every task, of any namespace, whose status is one of `statuses` (reconciliation).
    async fn tasks_in_status(&self, statuses: &[&str]) -> Result<Vec<TaskRow>>;
    /// Applies `update` to task `id` unless it has ended; answers the row after (or as it was
    /// when it had ended), `None` when there is no such task.
    async fn update_task(&self, id: &str, update: &TaskUpdate) -> Result<Option<TaskRow>>;
    /// Appends messages (kind, body) to task `id` in order, numbered after its last; answers
    /// their sequence numbers. One transaction: all or none.
    async fn append_messages(&self, id: &str, messages: &[(String, String)], at_ms: i64) -> Result<Vec<u64>>;
    /// The bytes of task `id`'s messages' bodies, together.
    async fn task_message_bytes(&self, id: &str) -> Result<u64>;
    /// Messages of task `id` with `seq > after`, at most `limit`, in order.
    async fn task_messages(&self, id: &str, after: u64, limit: u32) -> Result<Vec<TaskMessageRow>>;
    /// Milliseconds task `id`'s sandboxes ran, up to `now_ms` for one that runs.
    async fn task_sandbox_ms(&self, id: &str, now_ms: i64) -> Result<u64>;
    /// The task's state document and its version.
    async fn task_state(&self, namespace: &str, id: &str) -> Result<Option<(String, u64)>>;
    /// Writes the state document, if its version is `expected` (any version with `None`).
    async fn put_task_state(&self, namespace: &str, id: &str, state: &str, expected: Option<u64>)
        -> Result<StateWrite>;
}
