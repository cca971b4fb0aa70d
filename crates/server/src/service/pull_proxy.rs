//! A pull's only way out: an HTTP proxy on loopback, one per pull, that the pull client must go
//! through for every connection it makes (the registry, the token endpoint a bearer challenge
//! names, the storage a blob download redirects to). It decides each connection as it is made:
//! the destination's name is resolved here, every address it resolves to must pass the server's
//! outbound rule ([`OutboundPolicy`], `--outbound-allow`), and the connection goes to an address
//! just checked, so a name that resolves elsewhere after an earlier check, a redirect and a token
//! URL are all held to the rule. Plain http goes only to the hosts the pull may talk plain http to
//! (a loopback registry, one listed with `--insecure-registry`); everything else must tunnel
//! (`CONNECT`, for https).
//!
//! Shapes: `CONNECT host:port` (answered `200` then relayed byte for byte), or a request in
//! absolute form `METHOD http://host[:port]/path` (relayed to the host in origin form with
//! `Connection: close`, so a connection serves one request and the next is decided anew). A
//! refusal is a `403` whose reason the pull's error names ([`PullProxy::refusal`]). A request head
//! is at most [`MAX_HEAD`] bytes and must arrive within [`HEAD_TIMEOUT`].

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead_core::outbound::OutboundPolicy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The largest request head the proxy reads.
pub const MAX_HEAD: usize = 16 * 1024;
/// How long a request head may take to arrive, and a connection to a destination to open.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// A running proxy; it stops when dropped.
pub struct PullProxy {
    addr: SocketAddr,
    refused: Arc<Mutex<Option<String>>>,
    unreachable: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PullProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PullProxy {
    /// Starts a proxy on a free loopback port that holds every connection to `policy`, and lets
    /// plain http go only to `plain_http` (`host` or `host:port`, compared without regard to
    /// case).
    pub async fn start(policy: OutboundPolicy, plain_http: Vec<String>) -> std::io::Result<PullProxy> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (refused, unreachable) = (Arc::new(Mutex::new(None)), Arc::new(Mutex::new(None)));
        let rules = Arc::new(Rules { policy, plain_http, refused: refused.clone(), unreachable: unreachable.clone() });
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let rules = rules.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(conn, &rules).await {
                        tracing::debug!(error = %e, "a pull's proxied connection ended");
                    }
                });
            }
        });
        Ok(PullProxy { addr, refused, unreachable, task })
    }

    /// The proxy's URL, for the pull client's `http_proxy` and `https_proxy`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Why the proxy refused a connection (the outbound rule, plain http where only https may
    /// go), the first time it did.
    pub fn refusal(&self) -> Option<String> {
        self.refused.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Why an allowed destination could not be reached, the first time one could not.
    pub fn unreachable(&self) -> Option<String> {
        self.unreachable.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

struct Rules {
    policy: OutboundPolicy,
    plain_http: Vec<String>,
    refused: Arc<Mutex<Option<String>>>,
    unreachable: Arc<Mutex<Option<String>>>,
}

/// Why a connection was not made.
enum NotMade {
    /// The rules refused it: `403`.
    Refused(String),
    /// An allowed destination did not answer: `502`.
    Unreachable(String),
}

impl Rules {
    fn refuse(&self, why: String) -> String {
        let mut first = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert_with(|| why.clone());
        why
    }

    /// Resolves `host` and checks every address it has; the addresses to connect to.
    async fn addresses(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((bare, port))
                .await
                .map_err(|e| self.refuse(format!("{host} does not resolve: {e}")))?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(self.refuse(format!("{host} has no address")));
        }
        for a in &addrs {
            self.policy.check(a.ip()).map_err(|e| {
                self.refuse(format!(
                    "{host}:{port} is refused by the server's outbound rule: {e} (the operator allows ranges with \
                     --outbound-allow)"
                ))
            })?;
        }
        Ok(addrs)
    }

    async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, NotMade> {
        let addrs = self.addresses(host, port).await.map_err(NotMade::Refused)?;
        let mut last = String::new();
        for a in addrs {
            match tokio::time::timeout(HEAD_TIMEOUT, TcpStream::connect(a)).await {
                Ok(Ok(s)) => return Ok(s),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".into(),
            }
        }
        let why = format!("{host}:{port} cannot be reached: {last}");
        self.unreachable.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(|| why.clone());
        Err(NotMade::Unreachable(why))
    }
}

/// Splits `host:port` (`[v6]:port` too); `default` when there is no port.
fn host_port(authority: &str, default: u16) -> Option<(String, u16)> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => (h, p.parse().ok()?),
        _ => (authority, default),
    };
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return None;
    }
    Some((host.to_owned(), port))
}

async fn not_made(conn: &mut TcpStream, why: NotMade) -> std::io::Result<()> {
    match why {
        NotMade::Refused(why) => answer(conn, "403 Forbidden", &why).await,
        NotMade::Unreachable(why) => answer(conn, "502 Bad Gateway", &why).await,
    }
}

async fn answer(conn: &mut TcpStream, status: &str, reason: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reason}",
        reason.len()
    );
    conn.write_all(head.as_bytes()).await
}

async fn serve(mut conn: TcpStream, rules: &Rules) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let end = tokio::time::timeout(HEAD_TIMEOUT, async {
        loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok::<_, std::io::Error>(Some(at + 4));
            }
            if buf.len() >= MAX_HEAD {
                return Ok(None);
            }
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or(Ok(None))?;
    let Some(end) = end else { return answer(&mut conn, "400 Bad Request", "no request head").await };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let rest = buf[end..].to_vec();
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return answer(&mut conn, "400 Bad Request", "a malformed request line").await;
    };
    if method == "CONNECT" {
        let Some((host, port)) = host_port(target, 443) else {
            return answer(&mut conn, "400 Bad Request", "a malformed CONNECT target").await;
        };
        let mut upstream = match rules.connect(&host, port).await {
            Ok(s) => s,
            Err(why) => return not_made(&mut conn, why).await,
        };
        conn.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await?;
        upstream.write_all(&rest).await?;
        tokio::io::copy_bidirectional(&mut conn, &mut upstream).await?;
        return Ok(());
    }
    // A plain http request, in absolute form.
    let Some(after) = target.strip_prefix("http://") else {
        let why = rules.refuse(format!("{target}: only https (tunnelled) and plain http to allowed registries"));
        return answer(&mut conn, "403 Forbidden", &why).await;
    };
    let (authority, path) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    let Some((host, port)) = host_port(authority, 80) else {
        return answer(&mut conn, "400 Bad Request", "a malformed request target").await;
    };
    let plain_ok = rules.plain_http.iter().any(|h| {
        h.eq_ignore_ascii_case(authority)
            || h.eq_ignore_ascii_case(&host)
            || h.eq_ignore_ascii_case(&format!("{host}:{port}"))
    });
    if !plain_ok {
        let why =
            rules.refuse(format!("{authority}: plain http only to a loopback registry or an --insecure-registry"));
        return answer(&mut conn, "403 Forbidden", &why).await;
    }
    let mut upstream = match rules.connect(&host, port).await {
        Ok(s) => s,
        Err(why) => return not_made(&mut conn, why).await,
    };
    let mut out = format!("{method} {path} {version}\r\n");
    for header in lines.filter(|l| !l.is_empty()) {
        let name = header.split(':').next().unwrap_or_default().trim().to_ascii_lowercase();
        if matches!(name.as_str(), "connection" | "proxy-connection" | "proxy-authorization" | "keep-alive") {
            continue;
        }
        out.push_str(header);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    upstream.write_all(out.as_bytes()).await?;
    upstream.write_all(&rest).await?;
    tokio::io::copy_bidirectional(&mut conn, &mut upstream).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(host_port("registry.example:5000", 443), Some(("registry.example".into(), 5000)));
        assert_eq!(host_port("registry.example", 443), Some(("registry.example".into(), 443)));
        assert_eq!(host_port("[::1]:5000", 443), Some(("[::1]".into(), 5000)));
        assert_eq!(host_port("[::1]", 80), Some(("[::1]".into(), 80)));
        assert_eq!(host_port("host:notaport", 80), None);
        assert_eq!(host_port("user@host:80", 80), None);
        assert_eq!(host_port("", 80), None);
    }
}
