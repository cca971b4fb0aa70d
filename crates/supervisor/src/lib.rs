//! The sandbox supervisor and its protocol. The supervisor is PID 1 of every sandbox: it
//! inherits a listening Unix socket from the runtime (the socket's path lives on the host, in a
//! directory the sandbox cannot see), accepts one connection per request, runs commands, reads
//! and writes files as the sandbox's own root inside the sandbox's own mounts, and reaps every
//! orphan. An exec then costs a connect and a fork, not an OCI runtime invocation.
//!
//! **Invariant:** the supervisor runs with exactly the sandbox's privileges; nothing it does can
//! reach outside the sandbox, because it is inside it. The server trusts none of its answers.

mod cgroup;
mod exec;
mod files;
mod launch;
pub mod process;
pub mod protocol;
mod reaper;
mod supervisor;
pub mod users;

pub use supervisor::{run, serve_fd, serve_fds, serve_path};
