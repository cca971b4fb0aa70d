//! Who may do what in a namespace, and what its sandboxes may know: `identity` (single sign-on
//! through an OpenID Connect provider), `policy` (Cedar policies, `explain`, the schema) and
//! `secret` (write-only values handed to sandboxes).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use bulkhead_api::{
    CreatePolicy, CreateSecret, ExplainRequest, IdentityConfig, OidcConfig, Policy, Role, SandboxSecret, Secret,
};
use bulkhead_client::Client;
use clap::{Args, Subcommand};

use crate::commands::{all_pages, client, role_name};
use crate::output;
use crate::Global;

/// Where a sandbox finds a secret handed to it as a file.
const SECRETS_DIR: &str = "/run/secrets/";

#[derive(Subcommand)]
pub enum IdentityCmd {
    /// Show the namespace's single sign-on settings.
    Get {
        /// The namespace.
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
    },
    /// Sign users in with tokens of an OpenID Connect provider, replacing any previous settings.
    /// A user gets the strongest role any of its groups maps to; a user with no mapped group is
    /// refused.
    Set {
        /// The namespace.
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// The provider's issuer URL (https, or http to an address the server's --outbound-allow
        /// ranges cover).
        #[arg(long)]
        issuer: String,
        /// The `aud` the tokens must carry.
        #[arg(long)]
        audience: String,
        /// The token claim that holds the user's groups.
        #[arg(long, default_value = "groups")]
        groups_claim: String,
        /// A group and the role its members get (owner, admin, developer or viewer); repeatable.
        #[arg(long = "map", value_name = "GROUP=ROLE", required = true)]
        map: Vec<String>,
        /// The console's OAuth client id at the provider (a public client, with
        /// `<public URL>/console/oidc/callback` as its redirect URI); enables the console's
        /// "Sign in with your organisation".
        #[arg(long)]
        client_id: Option<String>,
    },
    /// Turn single sign-on off; API keys keep working.
    Clear {
        /// The namespace.
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
    },
}

/// Parses `GROUP=ROLE`. The role is split off at the last `=`, so a group may contain one.
fn parse_mapping(s: &str) -> Result<(String, Role), String> {
    let Some((group, role)) = s.rsplit_once('=') else {
        return Err(format!("--map {s:?} is not GROUP=ROLE"));
    };
    if group.is_empty() {
        return Err(format!("--map {s:?} names no group"));
    }
    let role = match role {
        "owner" => Role::Owner,
        "admin" => Role::Admin,
        "developer" => Role::Developer,
        "viewer" => Role::Viewer,
        _ => return Err(format!("--map {s:?}: {role:?} is not a role; use owner, admin, developer or viewer")),
    };
    Ok((group.to_owned(), role))
}

/// The group → role table of `--map` arguments; a group mapped twice is an error.
fn role_mappings(args: &[String]) -> Result<BTreeMap<String, Role>, String> {
    let mut map = BTreeMap::new();
    for arg in args {
        let (group, role) = parse_mapping(arg)?;
        if map.insert(group.clone(), role).is_some() {
            return Err(format!("--map: group {group:?} is mapped twice"));
        }
    }
    Ok(map)
}

fn show_identity(ns: &str, config: &IdentityConfig, global: &Global) -> anyhow::Result<()> {
    if global.json {
        return output::json(config);
    }
    let Some(oidc) = &config.oidc else {
        println!("single sign-on is off for namespace {ns}");
        return Ok(());
    };
    let mut pairs = vec![
        ("issuer", oidc.issuer.clone()),
        ("audience", oidc.audience.clone()),
        ("groups claim", oidc.groups_claim.clone()),
    ];
    if let Some(client_id) = &oidc.client_id {
        pairs.push(("console client", client_id.clone()));
    }
    for (group, role) in &oidc.role_mappings {
        pairs.push(("map", format!("{group}={}", role_name(*role))));
    }
    output::fields(&pairs);
    Ok(())
}

pub async fn identity(cmd: IdentityCmd, global: &Global) -> anyhow::Result<ExitCode> {
    match cmd {
        IdentityCmd::Get { ns } => {
            let c = client(global)?;
            show_identity(&ns, &c.get_identity(&ns).await?, global)?;
        }
        IdentityCmd::Set { ns, issuer, audience, groups_claim, map, client_id } => {
            // Checked before anything is sent, so a typo never reaches the server.
            let role_mappings = role_mappings(&map).map_err(|e| anyhow!(e))?;
            let c = client(global)?;
            let config =
                IdentityConfig { oidc: Some(OidcConfig { issuer, audience, groups_claim, role_mappings, client_id }) };
            show_identity(&ns, &c.set_identity(&ns, &config).await?, global)?;
        }
        IdentityCmd::Clear { ns } => {
            let c = client(global)?;
            show_identity(&ns, &c.set_identity(&ns, &IdentityConfig { oidc: None }).await?, global)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The text of a new policy: exactly one of a file and the command line.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct PolicySource {
    /// Read the policy from this file (`-` for standard input).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// The policy itself, such as `forbid(principal, action == Bulkhead::Action::"sandbox.exec", resource);`.
    #[arg(long, value_name = "TEXT")]
    policy: Option<String>,
}

impl PolicySource {
    fn text(self) -> anyhow::Result<String> {
        match (self.policy, self.file) {
            (Some(text), _) => Ok(text),
            (None, Some(path)) if path == Path::new("-") => {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text).context("cannot read the policy from standard input")?;
                Ok(text)
            }
            (None, Some(path)) => {
                std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
            }
            (None, None) => bail!("give the policy with --file or --policy"),
        }
    }
}

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Add a Cedar policy to the namespace; prints its id. The server checks it against the
    /// schema (`bulkhead policy schema`) and refuses it with Cedar's message if it does not fit.
    Add {
        /// The namespace.
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// A name for people.
        name: String,
        #[command(flatten)]
        source: PolicySource,
    },
    /// List the namespace's policies (the built-in role policies are not listed).
    List {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
    },
    /// Remove a policy at once.
    Rm {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        id: String,
    },
    /// How the namespace's policies would decide a request, without making it: prints `allow`
    /// or `deny` and the policies that decided. Exits 0 either way; the decision is the output.
    Explain {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// `key:<id>`, `user:<sub>` or `sandbox:<id>`.
        #[arg(long)]
        principal: String,
        /// An action such as `sandbox.exec`, `filesystem.mount_rw` or `secret.read`.
        #[arg(long)]
        action: String,
        /// `namespace:<name>`, `sandbox:<id>`, `filesystem:<id>`, `project:<id>`, `secret:<name>`,
        /// `key:<id>` or `policy:<id>`.
        #[arg(long)]
        resource: String,
    },
    /// Print Bulkhead's Cedar schema, to write and check policies offline.
    Schema,
}

/// Prints an explained decision: `allow` or `deny`, then what decided it.
pub fn show_explained(r: &bulkhead_api::ExplainResult, global: &Global) -> anyhow::Result<()> {
    if global.json {
        return output::json(r);
    }
    println!("{}", r.decision);
    let by = if r.policies.is_empty() { "none: no policy permits it".to_owned() } else { r.policies.join(", ") };
    let mut pairs = vec![("policies", by)];
    if let Some(reason) = &r.reason {
        pairs.push(("reason", reason.clone()));
    }
    if let Some(role) = r.role {
        pairs.push(("role", role_name(role).to_owned()));
    }
    for e in &r.errors {
        pairs.push(("error", e.clone()));
    }
    output::fields(&pairs);
    Ok(())
}

/// The first line of a policy that is not blank, marked when more follow.
fn first_line(text: &str) -> String {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    match (lines.next(), lines.next()) {
        (Some(first), Some(_)) => format!("{first} …"),
        (Some(first), None) => first.to_owned(),
        (None, _) => String::new(),
    }
}

/// Every policy of a namespace.
async fn all_policies(c: &Client, ns: &str) -> anyhow::Result<Vec<Policy>> {
    Ok(all_pages(|cursor| async move { c.list_policies(ns, Some(1000), cursor.as_deref()).await }).await?)
}

pub async fn policy(cmd: PolicyCmd, global: &Global) -> anyhow::Result<ExitCode> {
    let c = client(global)?;
    match cmd {
        PolicyCmd::Add { ns, name, source } => {
            let policy = source.text()?;
            if policy.trim().is_empty() {
                bail!("the policy is empty");
            }
            let p = c.create_policy(&ns, &CreatePolicy { name, policy }).await?;
            if global.json {
                output::json(&p)?;
            } else {
                println!("{}", p.id);
            }
        }
        PolicyCmd::List { ns } => {
            let all = all_policies(&c, &ns).await?;
            output::list(global.json, &all, &["ID", "NAME", "CREATED", "POLICY"], |p| {
                vec![p.id.clone(), p.name.clone(), p.created_at.clone(), first_line(&p.policy)]
            })?;
        }
        PolicyCmd::Rm { ns, id } => {
            c.delete_policy(&ns, &id).await?;
            output::note(global.json, format_args!("removed policy {id}"));
        }
        PolicyCmd::Explain { ns, principal, action, resource } => {
            let r = c.explain(&ns, &ExplainRequest { principal, action, resource, context: None }).await?;
            show_explained(&r, global)?;
        }
        PolicyCmd::Schema => {
            let schema = c.policy_schema().await?;
            if global.json {
                output::json(&schema)?;
            } else {
                print!("{schema}");
                if !schema.ends_with('\n') {
                    println!();
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
pub enum SecretCmd {
    /// Create a secret or replace its value. The value is read from standard input (one
    /// trailing newline removed), so it never lands in shell history or the process list, or
    /// from a file byte for byte with `--from-file`. It is never printed back.
    Set {
        /// The namespace.
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        name: String,
        /// Read the value from this file instead of standard input.
        #[arg(long, value_name = "PATH")]
        from_file: Option<PathBuf>,
    },
    /// List the namespace's secrets: names and times, never values.
    List {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
    },
    /// Delete a secret; sandboxes that already have it keep their copy until they end.
    Rm {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        name: String,
    },
}

/// The value of `secret set`: a file's bytes, or standard input without one trailing newline
/// (what `echo` and typing add). Refuses an empty value and one that is not UTF-8.
fn secret_value(from_file: Option<&Path>) -> anyhow::Result<String> {
    let bytes = match from_file {
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("Enter the value, then press Ctrl-D:");
            }
            let mut data = Vec::new();
            stdin.lock().read_to_end(&mut data).context("cannot read the value from standard input")?;
            if data.ends_with(b"\n") {
                data.pop();
                if data.ends_with(b"\r") {
                    data.pop();
                }
            }
            data
        }
    };
    let from = || match from_file {
        Some(path) => path.display().to_string(),
        None => "standard input".to_owned(),
    };
    if bytes.is_empty() {
        bail!("the value from {} is empty; a secret needs one", from());
    }
    String::from_utf8(bytes)
        .map_err(|_| anyhow!("the value from {} is not UTF-8 text, which is all a secret holds", from()))
}

/// Every secret of a namespace.
async fn all_secrets(c: &Client, ns: &str) -> anyhow::Result<Vec<Secret>> {
    Ok(all_pages(|cursor| async move { c.list_secrets(ns, Some(1000), cursor.as_deref()).await }).await?)
}

pub async fn secret(cmd: SecretCmd, global: &Global) -> anyhow::Result<ExitCode> {
    match cmd {
        SecretCmd::Set { ns, name, from_file } => {
            // The token is checked before the value is asked for.
            let c = client(global)?;
            let value = secret_value(from_file.as_deref())?;
            let set = c.set_secret(&ns, &CreateSecret { name, value }).await?;
            if global.json {
                output::json(&set)?;
            } else {
                let what = if set.created { "created" } else { "updated" };
                println!("{what} secret {}", set.secret.name);
            }
        }
        SecretCmd::List { ns } => {
            let all = all_secrets(&client(global)?, &ns).await?;
            output::list(global.json, &all, &["NAME", "ID", "CREATED", "UPDATED"], |s| {
                vec![s.name.clone(), s.id.clone(), s.created_at.clone(), s.updated_at.clone()]
            })?;
        }
        SecretCmd::Rm { ns, name } => {
            client(global)?.delete_secret(&ns, &name).await?;
            output::note(global.json, format_args!("deleted secret {name}"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses a `--secret` of `sandbox create`: `NAME=env:VAR` (an environment variable of every
/// command) or `NAME=path:/run/secrets/FILE` (a read-only file).
pub fn parse_sandbox_secret(s: &str) -> Result<SandboxSecret, String> {
    let usage = || format!("--secret {s:?} is not NAME=env:VAR or NAME=path:{SECRETS_DIR}FILE");
    let Some((name, target)) = s.split_once('=') else {
        return Err(usage());
    };
    if name.is_empty() {
        return Err(format!("--secret {s:?} names no secret"));
    }
    let name = name.to_owned();
    if let Some(var) = target.strip_prefix("env:") {
        if var.is_empty() || var.contains(['=', '\0']) {
            return Err(format!("--secret {s:?}: {var:?} is not an environment variable name"));
        }
        return Ok(SandboxSecret { name, env: Some(var.to_owned()), path: None });
    }
    if let Some(path) = target.strip_prefix("path:") {
        let file = path.strip_prefix(SECRETS_DIR).unwrap_or_default();
        if file.is_empty() || file.contains(['/', '\0']) || file == "." || file == ".." {
            return Err(format!(
                "--secret {s:?}: the path must be a file directly in {SECRETS_DIR}, such as {SECRETS_DIR}{name}"
            ));
        }
        return Ok(SandboxSecret { name, env: None, path: Some(path.to_owned()) });
    }
    Err(usage())
}

/// The `--secret` arguments of `sandbox create`; `None` when there are none.
pub fn sandbox_secrets(args: &[String]) -> anyhow::Result<Option<Vec<SandboxSecret>>> {
    if args.is_empty() {
        return Ok(None);
    }
    let secrets =
        args.iter().map(|a| parse_sandbox_secret(a)).collect::<Result<Vec<_>, _>>().map_err(|e| anyhow!(e))?;
    Ok(Some(secrets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings() {
        assert_eq!(parse_mapping("eng=developer").unwrap(), ("eng".to_owned(), Role::Developer));
        assert_eq!(parse_mapping("a=b=viewer").unwrap(), ("a=b".to_owned(), Role::Viewer));
        let err = parse_mapping("eng=root").unwrap_err();
        assert!(err.contains("\"root\" is not a role") && err.contains("owner, admin, developer or viewer"), "{err}");
        assert!(parse_mapping("eng").unwrap_err().contains("GROUP=ROLE"));
        assert!(parse_mapping("=admin").unwrap_err().contains("no group"));
        let twice = role_mappings(&["eng=viewer".into(), "ops=admin".into(), "eng=admin".into()]).unwrap_err();
        assert!(twice.contains("mapped twice"), "{twice}");
        let ok = role_mappings(&["eng=viewer".into(), "ops=owner".into()]).unwrap();
        assert_eq!(ok.len(), 2);
    }

    #[test]
    fn sandbox_secrets_parse() {
        let s = parse_sandbox_secret("db=env:DB_PASSWORD").unwrap();
        assert_eq!((s.name.as_str(), s.env.as_deref(), s.path), ("db", Some("DB_PASSWORD"), None));
        let s = parse_sandbox_secret("tls=path:/run/secrets/tls.pem").unwrap();
        assert_eq!((s.name.as_str(), s.env, s.path.as_deref()), ("tls", None, Some("/run/secrets/tls.pem")));
        for bad in ["db", "=env:X", "db=X", "db=env:", "db=env:A=B", "db=file:/run/secrets/x"] {
            assert!(parse_sandbox_secret(bad).is_err(), "{bad}");
        }
        for bad in [
            "db=path:",
            "db=path:/etc/x",
            "db=path:/run/secrets/",
            "db=path:/run/secrets/a/b",
            "db=path:/run/secrets/..",
        ] {
            let err = parse_sandbox_secret(bad).unwrap_err();
            assert!(err.contains("directly in /run/secrets/"), "{bad}: {err}");
        }
        assert!(sandbox_secrets(&[]).unwrap().is_none());
        assert_eq!(sandbox_secrets(&["a=env:A".into(), "b=path:/run/secrets/b".into()]).unwrap().unwrap().len(), 2);
    }

    #[test]
    fn first_lines() {
        assert_eq!(first_line("\n  forbid(principal, action, resource);\n"), "forbid(principal, action, resource);");
        assert_eq!(first_line("permit(\n  principal,\n  action,\n  resource\n);"), "permit( …");
        assert_eq!(first_line(""), "");
    }
}
