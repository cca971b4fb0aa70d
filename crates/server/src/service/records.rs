//! The records the services take and answer: the store's rows and the runtime's exec and file
//! types, named here so that the handlers depend on the service layer alone, never on the store
//! or the runtime crate.

pub use bulkhead_runtime::confined::Kind;
pub use bulkhead_runtime::files::{self, Preconditions};
pub use bulkhead_runtime::image::ImageConfig;
pub use bulkhead_runtime::{ExecEvent, ExecSpec, ExecStream, Exit, RootSpec, RunFile};
pub use bulkhead_runtime::{
    OutputStreamKind, ProcessEvent, ProcessInfo, ProcessOutput, ProcessSpec, ProcessStatus, TtySize,
};
pub use bulkhead_store::{AgentRow, StateWrite, TaskMessageRow, TaskRow, VersionRow};
pub use bulkhead_store::{
    AuditQuery, FilesystemRow, IdempotentReply, ImageRow, KeyRow, NamespaceRow, NamespaceUse, PolicyRow, ProjectRow,
    SandboxImage, SandboxRow, SandboxStatus, SecretRow, UsageDelta,
};
