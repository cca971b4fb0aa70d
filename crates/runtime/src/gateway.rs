//! The gateway of sandboxes with a network of their own (`--network isolated`): everything a
//! sandbox reaches goes through its own gateway address (the host side of its veth).
//! - The server's API at `$BULKHEAD_URL` = `http://<the sandbox's gateway>:15002` ([`ApiRelays`],
//!   below).
//! - Egress ([`egress::EgressGateway`]): a DNS resolver on port 53 ([`dns`]) and a TCP
//!   forwarder on port 15001 ([`forward`]) that judge every query and connection by what it
//!   really reaches ([`sniff`]) and ask the server's [`crate::egress::EgressDecider`].
//!
//! The API relay:
//! Each such sandbox gets a listener on its own gateway address (the host side of its veth), so
//! the API is reachable from inside the sandbox and from nowhere else: nothing listens on the
//! host's other addresses for it, and the nftables rules (see [`crate::net`]) let a sandbox
//! reach only its own gateway. Every connection is relayed byte for byte to the address the
//! server listens on; the API authenticates it like any other (a sandbox uses its workload
//! token). A listener lives as long as its sandbox's network.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::task::JoinHandle;

use crate::{Result, RuntimeError};

pub mod dns;
pub mod egress;
pub mod forward;
pub mod sniff;

pub use egress::{EgressConfig, EgressGateway};

/// The gateway port that serves the API (one of [`crate::net::GATEWAY_TCP_PORTS`]).
pub const API_PORT: u16 = 15002;

/// Connections to the API one sandbox may have relayed at once; one more is reset. Each costs
/// the server three descriptors (the sandbox's side, the relay's and the API's), and the API's
/// own timeouts (a request head within 30 s, 60 s idle) end those that hold still.
pub const MAX_API_CONNECTIONS: usize = 64;

/// The API relays of the sandboxes, by sandbox id.
#[derive(Default)]
pub struct ApiRelays {
    /// Where the server's API listens (a wildcard address is reached through loopback); unset
    /// until the server listens, and for servers that serve no socket (in-process tests).
    api: Arc<OnceLock<SocketAddr>>,
    relays: Mutex<HashMap<String, JoinHandle<()>>>,
}

impl ApiRelays {
    /// Sets where the API listens; the first address set stays.
    pub fn set_api(&self, addr: SocketAddr) {
        let addr = match addr {
            SocketAddr::V4(a) if a.ip().is_unspecified() => SocketAddr::from((Ipv4Addr::LOCALHOST, a.port())),
            SocketAddr::V6(a) if a.ip().is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port())),
            other => other,
        };
        let _ = self.api.set(addr);
    }

    /// The URL a sandbox whose gateway is `gateway` reaches the API at.
    pub fn url(gateway: Ipv4Addr) -> String {
        format!("http://{gateway}:{API_PORT}")
    }

    /// Listens on `gateway`:[`API_PORT`] for sandbox `id` (once; a second call keeps the first
    /// listener) and relays every connection to the API.
    pub fn start(&self, id: &str, gateway: Ipv4Addr) -> Result<()> {
        let mut relays = self.relays.lock().unwrap_or_else(|e| e.into_inner());
        if relays.contains_key(id) {
            return Ok(());
        }
        let std_listener = std::net::TcpListener::bind((gateway, API_PORT))
            .map_err(RuntimeError::io(format!("listen on the sandbox's gateway {gateway}:{API_PORT}")))?;
        std_listener.set_nonblocking(true).map_err(RuntimeError::io("make the gateway listener non-blocking"))?;
        let listener = tokio::net::TcpListener::from_std(std_listener)
            .map_err(RuntimeError::io("register the gateway listener"))?;
        let sandbox = id.to_owned();
        let api = self.api.clone();
        let task = tokio::spawn(async move {
            // The relayed connections: aborted with this task, when the sandbox's network goes.
            let mut relayed = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inside, _)) = listener.accept().await else {
                    // Out of descriptors, most likely: let some go.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                while relayed.try_join_next().is_some() {}
                let Some(api) = api.get().copied() else {
                    // No API to reach yet: the connection closes.
                    continue;
                };
                if relayed.len() >= MAX_API_CONNECTIONS {
                    let _ = inside.set_zero_linger();
                    continue;
                }
                let sandbox = sandbox.clone();
                relayed.spawn(async move {
                    match tokio::net::TcpStream::connect(api).await {
                        Ok(mut server) => {
                            let _ = tokio::io::copy_bidirectional(&mut inside, &mut server).await;
                        }
                        Err(e) => {
                            tracing::warn!(sandbox = %sandbox, error = %e, "the API did not take a relayed connection")
                        }
                    }
                });
            }
        });
        relays.insert(id.to_owned(), task);
        Ok(())
    }

    /// Stops listening for sandbox `id`, and ends the connections it relays.
    pub fn stop(&self, id: &str) {
        if let Some(task) = self.relays.lock().unwrap_or_else(|e| e.into_inner()).remove(id) {
            task.abort();
        }
    }
}
