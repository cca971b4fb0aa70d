//! The TCP forwarder at each sandbox's gateway, port [`super::egress::FORWARD_PORT`]: the
//! nftables `nat` chain redirects every TCP connection of a sandbox here (but those to its own
//! gateway's API and DNS ports), and the kernel keeps the address the sandbox asked for
//! (`SO_ORIGINAL_DST`).
//!
//! For each connection:
//! 1. An address that is never reachable (loopback, link-local, the host's own, a sandbox
//!    network's; see `Shared::never_reachable`) is refused at once.
//! 2. The first bytes are read and held (at most [`super::sniff::MAX_PEEK`], waiting at most
//!    [`FIRST_BYTES_WAIT`] for the first of them and [`PEEK_WAIT`] in all): a TLS ClientHello's
//!    server name or an HTTP request's `Host` names the destination. A name found there is
//!    resolved again by the gateway, and counts only when the address the connection goes to
//!    is among the answers; otherwise (a spoofed server name, or a name pinned to another
//!    address) the connection is judged by its address alone, as one by an IP literal.
//!    A name the gateway's resolver answered this sandbox with this address needs no new
//!    lookup; for any other, the decider is first asked whether the sandbox may resolve it
//!    (`Protocol::Dns`), so that a denied name is never looked up upstream (and does not
//!    count). With no name in the bytes, the name the gateway's resolver answered this sandbox
//!    for the address (if any) is used.
//! 3. The decider is asked (`Protocol::Tcp`, name, address, port).
//! 4. Denied: the connection is reset at once, and counted. Allowed: the gateway connects to
//!    the original address and port, sends the held bytes, and copies both ways, counting
//!    bytes into the sandbox's counters and, with a namespace bandwidth cap, taking them from
//!    the namespace's bucket first.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::egress::{Bucket, Sandbox, Shared, MAX_CONNECTIONS};
use super::sniff::{sniff, Sniffed, MAX_PEEK};
use crate::egress::{Protocol, Verdict};

/// How long the forwarder waits for a connection's first bytes before it judges it by its
/// address (a protocol where the server speaks first).
pub const FIRST_BYTES_WAIT: Duration = Duration::from_millis(500);
/// How long the forwarder waits for a whole ClientHello or request head once it began.
pub const PEEK_WAIT: Duration = Duration::from_secs(5);
/// How long connecting upstream may take.
pub const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// The address a redirected connection was meant for.
fn original_destination(stream: &TcpStream) -> std::io::Result<SocketAddrV4> {
    // SAFETY: sockaddr_in is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: the descriptor is open for the call; `addr` and `len` are valid for writes of
    // the size given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(SocketAddrV4::new(Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)), u16::from_be(addr.sin_port)))
}

/// Forwards the connections a sandbox makes, until aborted (which ends them all).
pub(super) async fn serve(shared: Arc<Shared>, sandbox: Arc<Sandbox>, listener: TcpListener) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((inside, _)) = listener.accept().await else {
            // Out of descriptors, most likely: let some go.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_CONNECTIONS {
            sandbox.denied("(any)", "too many connections at once");
            reset(inside);
            continue;
        }
        connections.spawn(handle(shared.clone(), sandbox.clone(), inside));
    }
}

/// Closes with a reset: the sandbox's connect or first read fails at once.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Reads what the sandbox sends first, until it names a destination or cannot.
async fn peek(inside: &mut TcpStream, held: &mut Vec<u8>) -> std::io::Result<Option<String>> {
    let mut chunk = vec![0u8; 4096];
    let n = match tokio::time::timeout(FIRST_BYTES_WAIT, inside.read(&mut chunk)).await {
        Err(_) => return Ok(None),
        Ok(n) => n?,
    };
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    held.extend_from_slice(&chunk[..n]);
    let deadline = tokio::time::Instant::now() + PEEK_WAIT;
    loop {
        match sniff(held) {
            Sniffed::Name(name) => return Ok(Some(name)),
            Sniffed::NoName => return Ok(None),
            Sniffed::More => {}
        }
        let room = MAX_PEEK.saturating_sub(held.len()).min(chunk.len());
        if room == 0 {
            return Ok(None);
        }
        let n = match tokio::time::timeout_at(deadline, inside.read(&mut chunk[..room])).await {
            Err(_) => return Ok(None),
            Ok(n) => n?,
        };
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        held.extend_from_slice(&chunk[..n]);
    }
}

/// Whether `name` resolves (upstream, by the gateway) to `addr`.
async fn resolves_to(shared: &Shared, name: &str, addr: Ipv4Addr) -> bool {
    let Ok(resolver) = shared.resolver() else { return false };
    let Ok(fqdn) = hickory_resolver::Name::from_ascii(format!("{name}.")) else { return false };
    match resolver.ipv4_lookup(fqdn).await {
        Ok(found) => found.iter().any(|a| a.0 == addr),
        Err(_) => false,
    }
}

async fn handle(shared: Arc<Shared>, sandbox: Arc<Sandbox>, mut inside: TcpStream) {
    let Ok(dest) = original_destination(&inside) else {
        // Not a redirected connection (someone dialled the forwarder port itself).
        reset(inside);
        return;
    };
    let addr = *dest.ip();
    let port = dest.port();
    let shown = dest.to_string();
    if let Some(why) = shared.never_reachable(IpAddr::V4(addr)) {
        sandbox.denied(&shown, why);
        reset(inside);
        return;
    }
    let mut held = Vec::new();
    let claimed = match peek(&mut inside, &mut held).await {
        Ok(name) => name,
        Err(_) => return,
    };
    let name = match claimed {
        // The gateway's resolver answered this very name with this address to the sandbox.
        Some(name) if sandbox.name_of(addr).as_deref() == Some(name.as_str()) => Some(name),
        Some(name) => {
            // A name the sandbox may not even resolve is not resolved for it here either, and a
            // name that does not resolve to the address connected to (a spoofed server name, a
            // name pinned to another address) does not count: the connection is judged by the
            // address it really reaches, as one by an IP literal.
            let may_resolve = matches!(
                shared.decide(&sandbox.request(Protocol::Dns, Some(name.clone()), None, None)).await,
                Verdict::Allow { .. }
            );
            if may_resolve && resolves_to(&shared, &name, addr).await {
                Some(name)
            } else {
                None
            }
        }
        None => sandbox.name_of(addr),
    };
    let verdict =
        shared.decide(&sandbox.request(Protocol::Tcp, name.clone(), Some(IpAddr::V4(addr)), Some(port))).await;
    let shown = match &name {
        Some(n) => format!("{n} ({shown})"),
        None => shown,
    };
    let rate = match verdict {
        Verdict::Deny { reason, .. } => {
            sandbox.denied(&shown, &reason);
            reset(inside);
            return;
        }
        Verdict::Allow { broker: Some((header, ca)), max_bandwidth_bytes_per_second } => {
            // The decider brokers only a connection it knows the name of.
            let Some(name) = name else {
                sandbox.denied(&shown, "a brokered host is reached by its name only");
                reset(inside);
                return;
            };
            brokered(&shared, &sandbox, inside, held, &name, dest, &header, &ca, max_bandwidth_bytes_per_second).await;
            return;
        }
        Verdict::Allow { max_bandwidth_bytes_per_second, broker: None } => max_bandwidth_bytes_per_second,
    };
    let outside = match tokio::time::timeout(CONNECT_WAIT, TcpStream::connect(SocketAddr::V4(dest))).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(sandbox = %sandbox.id, destination = %shown, error = %e, "egress connect failed");
            reset(inside);
            return;
        }
        Err(_) => {
            reset(inside);
            return;
        }
    };
    sandbox.counters.connections.fetch_add(1, Ordering::Relaxed);
    let bucket = rate.map(|r| (shared.bucket(&sandbox.namespace), r));
    let (in_read, in_write) = inside.into_split();
    let (out_read, mut out_write) = outside.into_split();
    // What the sandbox sent while the gateway looked goes first.
    if let Some((b, r)) = &bucket {
        b.take(held.len(), *r).await;
    }
    if out_write.write_all(&held).await.is_err() {
        return;
    }
    sandbox.counters.bytes_out.fetch_add(held.len() as u64, Ordering::Relaxed);
    let counters = sandbox.counters.clone();
    let up = pump(in_read, out_write, &counters.bytes_out, bucket.clone());
    let down = pump(out_read, in_write, &counters.bytes_in, bucket);
    tokio::pin!(up, down);
    // Both directions run until each ends (half-closes pass through); an error on one ends both.
    tokio::select! {
        r = &mut up => if r.is_ok() { let _ = down.await; },
        r = &mut down => if r.is_ok() { let _ = up.await; },
    }
}

/// A brokered host's connection: the broker ([`crate::broker::Broker::serve`]) terminates the
/// sandbox's TLS with a certificate from the namespace's CA and forwards its requests to `dest`
/// with the credential's header. The sandbox's side is counted and throttled like any other
/// connection (through a pipe to the broker), the held bytes (its ClientHello) first.
#[allow(clippy::too_many_arguments)]
async fn brokered(
    shared: &Shared,
    sandbox: &Sandbox,
    inside: TcpStream,
    held: Vec<u8>,
    name: &str,
    dest: SocketAddrV4,
    header: &crate::egress::BrokeredHeader,
    ca: &crate::egress::NamespaceCa,
    rate: Option<u64>,
) {
    sandbox.counters.connections.fetch_add(1, Ordering::Relaxed);
    let bucket = rate.map(|r| (shared.bucket(&sandbox.namespace), r));
    let (near, far) = tokio::io::duplex(64 * 1024);
    let (near_read, mut near_write) = tokio::io::split(near);
    let (in_read, in_write) = inside.into_split();
    let relay = async {
        if let Some((b, r)) = &bucket {
            b.take(held.len(), *r).await;
        }
        if near_write.write_all(&held).await.is_err() {
            return;
        }
        sandbox.counters.bytes_out.fetch_add(held.len() as u64, Ordering::Relaxed);
        let up = pump(in_read, near_write, &sandbox.counters.bytes_out, bucket.clone());
        let down = pump(near_read, in_write, &sandbox.counters.bytes_in, bucket.clone());
        tokio::pin!(up, down);
        tokio::select! {
            r = &mut up => if r.is_ok() { let _ = down.await; },
            r = &mut down => if r.is_ok() { let _ = up.await; },
        }
    };
    let serve = async {
        if let Err(e) = shared.broker.serve(far, name, SocketAddr::V4(dest), header, ca).await {
            tracing::debug!(sandbox = %sandbox.id, destination = %name, error = %e, "a brokered connection ended");
        }
    };
    tokio::join!(relay, serve);
}

/// Copies `from` to `to` until `from` ends (then half-closes `to`), counting into `counter`
/// and taking from the bandwidth bucket first when there is one.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    counter: &AtomicU64,
    bucket: Option<(Arc<Bucket>, u64)>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        if let Some((b, rate)) = &bucket {
            b.take(n, *rate).await;
        }
        to.write_all(&buf[..n]).await?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}
