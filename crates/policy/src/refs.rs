//! The principals and resources as the engine sees them, and the parsers of the short string forms
//! (`key:key_...`, `sandbox:sbx_...`) that the explain endpoint accepts.

use bulkhead_core::{ids::prefix, validate, Action, Role, Target};

/// Who is asking, with what the policies may look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalRef {
    /// The platform operator: `Bulkhead::Admin::"admin"`.
    Admin,
    /// An API key of the namespace: `Bulkhead::Key::"<id>"`, member of its role.
    Key { id: String, role: Role },
    /// A person signed in through the namespace's identity provider: `Bulkhead::User::"<sub>"`,
    /// member of its role. `email` may be empty.
    User { sub: String, role: Role, email: String, groups: Vec<String> },
    /// A sandbox's workload identity: `Bulkhead::Sandbox::"<id>"`. `creator` is `key:<id>` or
    /// `user:<sub>`; `project` is the project of the filesystem the sandbox mounts, if any, and
    /// makes the sandbox a member of that project.
    /// `task` is the task whose agent the sandbox runs, if any: `principal.task`.
    Sandbox { id: String, creator: String, project: Option<String>, task: Option<String> },
}

/// What the request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceRef {
    /// The whole platform: `Bulkhead::Platform::"platform"`.
    Platform,
    Namespace(String),
    /// A sandbox, member of the project of the filesystem it mounts, if any: it exposes that
    /// filesystem's data, so policies on the project hold for it too.
    Sandbox {
        id: String,
        project: Option<String>,
    },
    /// A filesystem, member of its project if it has one.
    Filesystem {
        id: String,
        project: Option<String>,
    },
    Project(String),
    /// A secret, by name.
    Secret(String),
    Key(String),
    Policy(String),
    /// An image as the namespace sees it, by name.
    Image(String),
    /// A destination of a sandbox's egress, `Bulkhead::Host::"<name or address>"`, with the
    /// request's context: `port` (0 for a DNS query) and `protocol` (`tcp` or `dns`).
    Host {
        name: String,
        port: u16,
        protocol: String,
    },
    /// An agent, by name.
    Agent(String),
    /// A task, member of the project of the filesystem it works on, if any.
    Task {
        id: String,
        project: Option<String>,
    },
    /// A tool call of a task: `Bulkhead::Task::"<id>"` with the context `kind` and `title`.
    ToolCall {
        task: String,
        kind: String,
        title: String,
    },
}

/// A namespace principal named by the explain endpoint, before the server has looked up its role
/// or creator to make a [`PrincipalRef`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalName {
    Key(String),
    User(String),
    Sandbox(String),
}

/// A principal, resource or action string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?}: {reason}")]
pub struct RefError {
    pub input: String,
    pub reason: String,
}

impl RefError {
    fn new(input: &str, reason: impl Into<String>) -> Self {
        // The input is echoed back; keep the echo short.
        let input = if input.len() > 80 {
            let mut end = 80;
            while !input.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}...", &input[..end])
        } else {
            input.to_owned()
        };
        RefError { input, reason: reason.into() }
    }
}

/// Longest user subject accepted: OIDC does not bound it, 255 bytes is what providers issue.
const MAX_SUB_LEN: usize = 255;
/// Longest id accepted after its prefix.
const MAX_ID_LEN: usize = 64;

/// The action named `s`, or an error naming the known ones' shape.
pub fn parse_action(s: &str) -> Result<Action, RefError> {
    Action::from_name(s)
        .ok_or_else(|| RefError::new(s, "unknown action; expected one like sandbox.exec or filesystem.file.read"))
}

/// Parses `user:<sub>`, `key:<id>` or `sandbox:<id>`.
pub fn parse_principal(s: &str) -> Result<PrincipalName, RefError> {
    let Some((kind, rest)) = s.split_once(':') else {
        return Err(RefError::new(s, "expected user:<sub>, key:<id> or sandbox:<id>"));
    };
    match kind {
        "user" => {
            check_sub(s, rest)?;
            Ok(PrincipalName::User(rest.to_owned()))
        }
        "key" => Ok(PrincipalName::Key(check_id(s, rest, prefix::KEY)?)),
        "sandbox" => Ok(PrincipalName::Sandbox(check_id(s, rest, prefix::SANDBOX)?)),
        _ => Err(RefError::new(s, format!("unknown principal kind {kind:?}; expected user, key or sandbox"))),
    }
}

/// Parses `namespace:<name>`, `sandbox:<id>`, `filesystem:<id>`, `project:<id>`, `secret:<name>`,
/// `image:<name>`, `key:<id>`, `policy:<id>`, `host:<name or address>`, `agent:<name>`, `task:<id>` or `platform` into a target in namespace
/// `ns` (a `namespace:<name>` names its own). A host is asked about as `tcp` on port 443 until
/// the caller sets its context. The scope of a filesystem or a sandbox is not part of the string: it is
/// [`Scope::Unknown`](bulkhead_core::Scope::Unknown) until the server fills it in from the store.
pub fn parse_resource(s: &str, ns: &str) -> Result<Target, RefError> {
    if s == "platform" {
        return Ok(Target::Platform);
    }
    let Some((kind, rest)) = s.split_once(':') else {
        return Err(RefError::new(
            s,
            "expected namespace:<name>, sandbox:<id>, filesystem:<id>, project:<id>, secret:<name>, key:<id> or policy:<id>",
        ));
    };
    match kind {
        "namespace" => Ok(Target::namespace(&check_name(s, rest)?)),
        "secret" => Ok(Target::secret(ns, &check_name(s, rest)?)),
        "image" => Ok(Target::image(ns, &check_name(s, rest)?)),
        "sandbox" => Ok(Target::sandbox(ns, &check_id(s, rest, prefix::SANDBOX)?)),
        "filesystem" => Ok(Target::filesystem(ns, &check_id(s, rest, prefix::FILESYSTEM)?)),
        "project" => Ok(Target::project(ns, Some(&check_id(s, rest, prefix::PROJECT)?))),
        "key" => Ok(Target::key(ns, Some(&check_id(s, rest, prefix::KEY)?), None)),
        "policy" => Ok(Target::policy(ns, &check_id(s, rest, prefix::POLICY)?)),
        "host" => Ok(Target::host(ns, &check_host(s, rest)?, 443, "tcp")),
        "agent" => Ok(Target::agent(ns, &check_name(s, rest)?)),
        "task" => Ok(Target::task(ns, &check_id(s, rest, prefix::TASK)?)),
        _ => Err(RefError::new(
            s,
            format!(
                "unknown resource kind {kind:?}; expected namespace, sandbox, filesystem, project, secret, image, key, \
                 policy, host, agent, task or platform"
            ),
        )),
    }
}

/// A host is a lower-case DNS name or a canonical IP address (IPv6 without brackets).
fn check_host(input: &str, host: &str) -> Result<String, RefError> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(bulkhead_core::outbound::canonical_ip(ip).to_string());
    }
    match bulkhead_core::outbound::parse_host(host) {
        Ok(bulkhead_core::outbound::Host::Name(n)) => Ok(n),
        _ => Err(RefError::new(input, "expected host:<lower-case DNS name or IP address>")),
    }
}

fn check_name(input: &str, name: &str) -> Result<String, RefError> {
    validate::name("name", name).map_err(|e| RefError::new(input, e.to_string()))?;
    Ok(name.to_owned())
}

/// An id is its prefix and then lowercase letters and digits. Real ids are 32 hex digits, but the
/// explain endpoint may ask about an id that does not exist (yet), so only the shape is checked.
fn check_id(input: &str, id: &str, prefix: &str) -> Result<String, RefError> {
    let Some(rest) = id.strip_prefix(prefix) else {
        return Err(RefError::new(input, format!("the id must start with {prefix:?}")));
    };
    if rest.is_empty() || rest.len() > MAX_ID_LEN {
        return Err(RefError::new(input, format!("the id must have 1 to {MAX_ID_LEN} characters after {prefix:?}")));
    }
    if !rest.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err(RefError::new(input, format!("the id may contain only a-z and 0-9 after {prefix:?}")));
    }
    Ok(id.to_owned())
}

fn check_sub(input: &str, sub: &str) -> Result<(), RefError> {
    if sub.is_empty() || sub.len() > MAX_SUB_LEN {
        return Err(RefError::new(input, format!("the subject must have 1 to {MAX_SUB_LEN} bytes")));
    }
    if sub.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(RefError::new(input, "the subject may not contain whitespace or control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_parse() {
        assert_eq!(parse_principal("user:alice@example.com"), Ok(PrincipalName::User("alice@example.com".into())));
        assert_eq!(parse_principal("key:key_0af3"), Ok(PrincipalName::Key("key_0af3".into())));
        assert_eq!(parse_principal("sandbox:sbx_1"), Ok(PrincipalName::Sandbox("sbx_1".into())));
    }

    #[test]
    fn principals_refused() {
        for (input, needle) in [
            ("alice", "expected user:<sub>"),
            ("admin:x", "unknown principal kind \"admin\""),
            ("user:", "1 to 255 bytes"),
            ("user:a b", "whitespace"),
            ("key:abc", "must start with \"key_\""),
            ("key:key_", "1 to 64 characters"),
            ("sandbox:sbx_A1", "only a-z and 0-9"),
            ("sandbox:key_1", "must start with \"sbx_\""),
        ] {
            let err = parse_principal(input).expect_err(input).to_string();
            assert!(err.contains(needle), "{input}: {err}");
        }
    }

    #[test]
    fn resources_parse() {
        let parse = |s| parse_resource(s, "acme");
        assert_eq!(parse("platform"), Ok(Target::Platform));
        assert_eq!(parse("namespace:globex"), Ok(Target::namespace("globex")));
        assert_eq!(parse("sandbox:sbx_1"), Ok(Target::sandbox("acme", "sbx_1")));
        assert_eq!(parse("filesystem:fs_9"), Ok(Target::filesystem("acme", "fs_9")));
        assert_eq!(parse("project:prj_2"), Ok(Target::project("acme", Some("prj_2"))));
        assert_eq!(parse("secret:db-password"), Ok(Target::secret("acme", "db-password")));
        assert_eq!(parse("image:python"), Ok(Target::image("acme", "python")));
        assert_eq!(parse("key:key_3"), Ok(Target::key("acme", Some("key_3"), None)));
        assert_eq!(parse("policy:pol_abc"), Ok(Target::policy("acme", "pol_abc")));
        assert_eq!(parse("agent:coder"), Ok(Target::agent("acme", "coder")));
        assert_eq!(parse("task:tsk_1"), Ok(Target::task("acme", "tsk_1")));
        assert_eq!(parse("host:pypi.org"), Ok(Target::host("acme", "pypi.org", 443, "tcp")));
        assert_eq!(parse("host:203.0.113.5"), Ok(Target::host("acme", "203.0.113.5", 443, "tcp")));
    }

    #[test]
    fn resources_refused() {
        for (input, needle) in [
            ("sbx_1", "expected namespace:<name>"),
            ("bucket:b", "unknown resource kind \"bucket\""),
            ("namespace:Acme", "lowercase"),
            ("namespace:", "must not be empty"),
            ("secret:a_b", "may contain only"),
            ("filesystem:sbx_1", "must start with \"fs_\""),
            ("policy:pol_", "1 to 64 characters"),
            ("project:prj_x-y", "only a-z and 0-9"),
            ("host:Pypi.org", "expected host:"),
            ("host:", "expected host:"),
        ] {
            let err = parse_resource(input, "acme").expect_err(input).to_string();
            assert!(err.contains(needle), "{input}: {err}");
        }
    }

    #[test]
    fn actions_parse() {
        assert_eq!(parse_action("sandbox.exec"), Ok(Action::SandboxExec));
        let err = parse_action("sandbox.execute").expect_err("unknown").to_string();
        assert!(err.contains("unknown action"), "{err}");
        let long = "x".repeat(500);
        assert!(parse_action(&long).expect_err("long").to_string().len() < 200);
    }
}
