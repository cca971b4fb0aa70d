//! `bulkhead egress`: how a sandbox's egress would be decided.

use std::process::ExitCode;

use anyhow::bail;
use bulkhead_api::{ExplainContext, ExplainRequest};
use clap::Subcommand;

use crate::commands::client;
use crate::Global;

#[derive(Subcommand)]
pub enum EgressCmd {
    /// How a connection of a sandbox would be decided, without making it: its `egress.allow`,
    /// the namespace's ceiling, the addresses no policy opens, then the namespace's policies
    /// (`network.connect`). Prints `allow` or `deny` and what decided; exits 0 either way.
    Explain {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// The sandbox's id.
        sandbox: String,
        /// A DNS name or an IPv4 address, with an optional `:PORT` (default 443).
        #[arg(value_name = "HOST[:PORT]")]
        host: String,
        /// Explain the DNS query for the name instead of a TCP connection.
        #[arg(long)]
        dns: bool,
    },
}

/// Splits `HOST[:PORT]`; a bare IPv6 address is a host with no port.
fn split_host(s: &str) -> anyhow::Result<(String, Option<u16>)> {
    if s.matches(':').count() == 1 {
        let (host, port) = s.split_once(':').unwrap_or((s, ""));
        let Ok(port) = port.parse::<u16>() else { bail!("{s:?}: the port must be 1 to 65535") };
        if port == 0 {
            bail!("{s:?}: the port must be 1 to 65535");
        }
        return Ok((host.to_owned(), Some(port)));
    }
    Ok((s.to_owned(), None))
}

pub async fn egress(cmd: EgressCmd, global: &Global) -> anyhow::Result<ExitCode> {
    let c = client(global)?;
    match cmd {
        EgressCmd::Explain { ns, sandbox, host, dns } => {
            let (host, port) = split_host(&host)?;
            if dns && port.is_some() {
                bail!("--dns: a DNS query names no port");
            }
            let context = ExplainContext { port, protocol: Some(if dns { "dns" } else { "tcp" }.to_owned()) };
            let req = ExplainRequest {
                principal: format!("sandbox:{sandbox}"),
                action: "network.connect".to_owned(),
                resource: format!("host:{host}"),
                context: Some(context),
            };
            let r = c.explain(&ns, &req).await?;
            crate::identity::show_explained(&r, global)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_split() {
        assert_eq!(split_host("pypi.org").unwrap(), ("pypi.org".into(), None));
        assert_eq!(split_host("pypi.org:80").unwrap(), ("pypi.org".into(), Some(80)));
        assert_eq!(split_host("2001:db8::1").unwrap(), ("2001:db8::1".into(), None));
        assert!(split_host("pypi.org:0").is_err());
        assert!(split_host("pypi.org:x").is_err());
    }
}
