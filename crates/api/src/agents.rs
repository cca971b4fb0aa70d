//! Agents, their versions and tasks: the wire types of PRODUCT.md's *Agents and tasks*.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{SandboxEgress, SandboxSecret};

/// `POST /v1/namespaces/{ns}/agents`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgent {
    /// `[a-z0-9-]{1,63}`, starting with a letter; unique in the namespace.
    pub name: String,
}

/// An agent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Agent {
    /// `agt_…`.
    pub id: String,
    pub namespace: String,
    pub name: String,
    /// The version new tasks run (`ver_…`); absent until a version is deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_version: Option<String>,
    /// The version a rollback returns to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// What an agent needs, as its bundle's `agent.json` says. Unknown fields are refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentManifest {
    /// The agent's argv, run in its sandbox with the bundle at `/agent` (such as
    /// `["node", "/agent/agent.mjs"]`): 1 to 64 arguments.
    pub command: Vec<String>,
    /// `acp`: the Agent Client Protocol over the command's stdin and stdout.
    pub protocol: String,
    /// The image its sandbox starts from (a name or `img_…`); default: the platform's default image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Its sandbox's size; each within the namespace's quotas at task create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<AgentResources>,
    /// What it may reach (within the namespace's ceiling), with brokered credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<SandboxEgress>,
    /// Secrets handed to its sandbox, as a sandbox create takes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<SandboxSecret>>,
    /// Environment of the agent's command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// What it needs of the task's filesystem: `rw` (default: read-write when the task's principal
    /// may write it, else read-only) or `ro` (always read-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem_mode: Option<String>,
    /// Seconds without a prompt in flight after which the task's sandbox stops (the task is
    /// `idle`, and resumes on its next event); 1 to 86400, default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<u64>,
    /// Free text, at most 1024 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// An agent's sandbox size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    /// The longest a task's sandbox lives in one go, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

/// A version of an agent: one uploaded bundle, immutable.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentVersion {
    /// `ver_…`.
    pub id: String,
    /// The agent's name.
    pub agent: String,
    /// `sha256:<hex>` of the bundle: the same bundle pushed again is the same version.
    pub digest: String,
    pub size_bytes: u64,
    pub manifest: AgentManifest,
    /// Whether new tasks run it.
    pub active: bool,
    /// RFC 3339.
    pub created_at: String,
}

/// `POST .../agents/{name}/deploy`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    /// A `ver_…` of the agent.
    pub version: String,
}

/// `POST /v1/namespaces/{ns}/tasks`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    /// The agent's name or `agt_…`.
    pub agent: String,
    /// A `ver_…` of the agent; default its active version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The filesystem at `/workspace`. `mode` defaults to what the agent needs; read-write is
    /// asked only when the principal may mount the filesystem read-write, else it is read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<TaskFilesystem>,
    /// A first message (as an event's `content`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<serde_json::Value>,
    /// `policy` (default: the namespace's policies answer the agent's permission requests) or
    /// `ask` (each is a pending `permission_request` message a person answers with an event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
    /// How long a pending permission request waits for its answer before it is rejected, in
    /// seconds: 1 to 86400, default 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission_timeout_seconds: Option<u64>,
}

/// The filesystem of a task.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskFilesystem {
    pub id: String,
    /// `rw` or `ro`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// A task.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Task {
    /// `tsk_…`.
    pub id: String,
    pub namespace: String,
    /// The agent's name.
    pub agent: String,
    /// The version it runs.
    pub version: String,
    /// `starting`, `running`, `idle`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// Why it failed or ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its sandbox while it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// The filesystem at `/workspace` and the mode it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<crate::SandboxFilesystem>,
    /// `policy` or `ask`.
    pub permissions: String,
    /// Tokens the agent reported.
    pub usage: TaskUsage,
    /// The sequence number of its last message (0: none).
    pub last_message: u64,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
}

/// Tokens a task's agent reported using (in the `usage` of its prompt answers), and the time
/// its sandboxes ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct TaskUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Seconds its sandboxes ran (an idle task's time without one is not counted).
    pub sandbox_seconds: f64,
}

/// `POST .../tasks/{id}/events`: `{"type": "message", "content"}` (a string, or an array of ACP
/// content blocks) becomes a prompt; `{"type": "permission", "request", "outcome"}` answers a
/// pending permission request (`allow_once`, `allow_always` or `reject`); `{"type": "cancel"}`
/// cancels the prompt in flight.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskEvent {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// The answer to an event: the message it was recorded as.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventAccepted {
    /// The task's message that records the event.
    pub seq: u64,
    /// The task's status after it.
    pub status: String,
}

/// A message of a task, in order (`seq` from 1 without a gap). `type` is what it is: the ACP
/// session update kinds (`agent_message_chunk`, `agent_thought_chunk`, `user_message_chunk`,
/// `tool_call`, `tool_call_update`, `plan`, `available_commands_update`,
/// `current_mode_update`, …) with the update's fields in `data`; `user_message` (an event sent
/// in); `permission_request` and `permission_decision`; `turn_end` (`stop_reason`, `usage`);
/// `status` (`status`, `reason`); `log` (the agent's stderr, a line).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskMessage {
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: String,
    /// RFC 3339.
    pub created_at: String,
    pub data: serde_json::Value,
}
