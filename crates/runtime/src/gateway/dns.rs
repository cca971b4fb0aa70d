//! The DNS resolver at each sandbox's gateway address, port 53 (UDP, and TCP with the 2-byte
//! length prefix of RFC 1035 §4.2.2); the nftables `nat` chain redirects every DNS query of a
//! sandbox here, whatever server it names.
//!
//! Each query (one question, class IN) asks the decider with `Protocol::Dns` and the queried
//! name. Denied: REFUSED, and nothing goes upstream. Allowed: an `A` query is resolved by the
//! upstream resolver (`--egress-dns`, or the host's) and answered with its addresses (at most
//! [`MAX_ANSWERS`], TTLs at most [`MAX_TTL`]), each remembered as that name's for the forwarder;
//! any other type is answered empty (NOERROR: IPv6 is off, and nothing else is resolved for a
//! sandbox). Over the sandbox's rate ([`super::egress::DNS_QUERIES_PER_SECOND`]): REFUSED,
//! counted as a denial. Unparseable queries get no answer.

use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;

use super::egress::{Sandbox, Shared, MAX_CONNECTIONS};
use crate::egress::{Protocol, Verdict};

/// The most addresses in one answer (keeps a UDP answer under 512 bytes).
pub const MAX_ANSWERS: usize = 16;
/// The longest TTL given to a sandbox, in seconds.
pub const MAX_TTL: u32 = 300;
/// How long a DNS-over-TCP connection may stay idle.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// UDP queries answered at the same time per sandbox; more are dropped (the client retries).
const UDP_IN_FLIGHT: usize = 32;

/// Answers one query from sandbox `sandbox`; `None` for bytes that are not a DNS query.
pub(super) async fn respond(shared: &Shared, sandbox: &Sandbox, query: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    if query.message_type() != MessageType::Query {
        return None;
    }
    let mut answer = Message::new();
    answer
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true);
    let code = 'code: {
        let [question] = query.queries() else { break 'code ResponseCode::FormErr };
        answer.add_query(question.clone());
        if query.op_code() != OpCode::Query || question.query_class() != DNSClass::IN {
            break 'code ResponseCode::NotImp;
        }
        let Some(name) = super::sniff::normalize(&question.name().to_ascii()) else {
            sandbox.denied(&question.name().to_ascii(), "not a host name");
            break 'code ResponseCode::Refused;
        };
        if !sandbox.dns_query_allowed() {
            sandbox.denied(&name, "too many DNS queries");
            break 'code ResponseCode::Refused;
        }
        if let Verdict::Deny { reason, .. } =
            shared.decide(&sandbox.request(Protocol::Dns, Some(name.clone()), None, None)).await
        {
            sandbox.denied(&name, &reason);
            break 'code ResponseCode::Refused;
        }
        if question.query_type() != RecordType::A {
            break 'code ResponseCode::NoError;
        }
        let resolver = match shared.resolver() {
            Ok(r) => r,
            Err(_) => break 'code ResponseCode::ServFail,
        };
        let Ok(fqdn) = Name::from_ascii(format!("{name}.")) else { break 'code ResponseCode::FormErr };
        match resolver.ipv4_lookup(fqdn).await {
            Ok(found) => {
                for record in found.as_lookup().records().iter().take(MAX_ANSWERS) {
                    if let RData::A(a) = record.data() {
                        let ttl = record.ttl().min(MAX_TTL);
                        sandbox.remember(a.0, &name, Duration::from_secs(u64::from(ttl)));
                        answer.add_answer(Record::from_rdata(question.name().clone(), ttl, RData::A(*a)));
                    }
                }
                ResponseCode::NoError
            }
            Err(e) if e.is_nx_domain() => ResponseCode::NXDomain,
            Err(e) if e.is_no_records_found() => ResponseCode::NoError,
            Err(e) => {
                tracing::debug!(sandbox = %sandbox.id, name, error = %e, "upstream DNS failed");
                ResponseCode::ServFail
            }
        }
    };
    answer.set_response_code(code);
    answer.to_vec().ok()
}

/// Answers the queries a sandbox sends to its gateway over UDP, until aborted.
pub(super) async fn serve_udp(shared: Arc<Shared>, sandbox: Arc<Sandbox>, socket: UdpSocket) {
    let socket = Arc::new(socket);
    let mut in_flight = JoinSet::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else { continue };
        while in_flight.try_join_next().is_some() {}
        if in_flight.len() >= UDP_IN_FLIGHT {
            continue;
        }
        let query = buf[..n].to_vec();
        let (shared, sandbox, socket) = (shared.clone(), sandbox.clone(), socket.clone());
        in_flight.spawn(async move {
            if let Some(answer) = respond(&shared, &sandbox, &query).await {
                let _ = socket.send_to(&answer, from).await;
            }
        });
    }
}

/// Answers the queries a sandbox sends to its gateway over TCP, until aborted.
pub(super) async fn serve_tcp(shared: Arc<Shared>, sandbox: Arc<Sandbox>, listener: TcpListener) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // Out of descriptors, most likely: let some go.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_CONNECTIONS {
            continue;
        }
        let (shared, sandbox) = (shared.clone(), sandbox.clone());
        connections.spawn(async move {
            loop {
                let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else { return };
                let mut query = vec![0u8; usize::from(len)];
                let Ok(Ok(_)) = tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query)).await else { return };
                let Some(answer) = respond(&shared, &sandbox, &query).await else { return };
                let Ok(len) = u16::try_from(answer.len()) else { return };
                let framed = [&len.to_be_bytes()[..], &answer].concat();
                if stream.write_all(&framed).await.is_err() {
                    return;
                }
            }
        });
    }
}
