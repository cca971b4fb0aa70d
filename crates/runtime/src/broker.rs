//! Brokered credentials (PRODUCT.md, *Network egress*, *Brokered credentials*): for a host that
//! a namespace brokers a credential for, the gateway terminates the sandbox's TLS with a leaf
//! certificate signed by the namespace's CA (which the sandbox trusts, see
//! [`crate::SandboxSpec::extra_ca_pem`]), and forwards each HTTP/1.1 request to the real host
//! over TLS that it verifies itself (the public web PKI roots, plus the operator's
//! `--egress-ca-file`), with the credential's header added. The value never enters the
//! sandbox: a header of that name that the sandbox sends is replaced, and the broker never
//! answers with it.
//!
//! This module owns the [`Broker`] (the TLS terminator and the HTTP/1.1 relay) and the making of
//! a [`NamespaceCa`] ([`NamespaceCa::generate`]). It decides nothing: the gateway hands it a
//! connection the server allowed and said to broker ([`crate::egress::Verdict::Allow`]).
//!
//! What the broker does not do: HTTP/2 (the sandbox is offered `http/1.1` only by ALPN, and a
//! client that insists on `h2` fails its handshake), protocol upgrades (`Upgrade` is dropped,
//! so WebSockets to a brokered host do not work), and trailers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue, HOST};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::egress::{BrokeredHeader, NamespaceCa};
use crate::{Result, RuntimeError};

/// The subject of every namespace CA (`CN=Bulkhead egress CA, O=Bulkhead`). It is fixed so that
/// a leaf's issuer can be written from the CA's key alone; each namespace's CA has a key of its
/// own, and a sandbox trusts only its own namespace's CA.
const CA_COMMON_NAME: &str = "Bulkhead egress CA";
const CA_ORGANIZATION: &str = "Bulkhead";
/// How long a namespace CA is valid: 20 years (it is the namespace's, kept sealed, and a
/// rotation is a new CA that running sandboxes do not trust).
const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// How long a leaf is valid, and how long the broker reuses one it made.
const LEAF_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
const LEAF_REUSE: Duration = Duration::from_secs(24 * 3600);
/// A leaf's validity starts this long before it is made, for sandboxes whose clock is behind.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);
/// Leaves kept at most (per (CA, host)); past it the cache starts again.
const LEAF_CACHE_MAX: usize = 1024;
/// Bounds on the upstream: connecting (TCP and TLS) and reading a request's head from the sandbox.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Headers of one hop (RFC 9110 section 7.6.1) that the broker does not pass on.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

impl NamespaceCa {
    /// A new CA for one namespace: an ECDSA P-256 key and a self-signed certificate
    /// (`CN=Bulkhead egress CA, O=Bulkhead`, basic constraints CA with path length 0, key
    /// usages keyCertSign and cRLSign, valid for 20 years from an hour ago). The key PEM is
    /// PKCS#8; the caller seals it before storing it.
    ///
    /// # Errors
    /// [`RuntimeError::Invalid`] if the key cannot be made or signed with (no randomness).
    pub fn generate() -> Result<NamespaceCa> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(cert_err("make a CA key"))?;
        let cert = ca_params(now().checked_sub(CLOCK_SKEW).unwrap_or_default(), CA_VALIDITY)
            .self_signed(&key)
            .map_err(cert_err("sign the CA"))?;
        Ok(NamespaceCa { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// The parameters of a namespace CA valid from `not_before` for `validity`; also the issuer
/// that signs leaves (its subject and key identifier method are what a leaf names).
fn ca_params(not_before: Duration, validity: Duration) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, CA_COMMON_NAME);
    dn.push(rcgen::DnType::OrganizationName, CA_ORGANIZATION);
    params.distinguished_name = dn;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    set_validity(&mut params, not_before, validity);
    params
}

/// Sets `params` valid from `not_before` (since the Unix epoch) for `validity`.
fn set_validity(params: &mut rcgen::CertificateParams, not_before: Duration, validity: Duration) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + not_before;
    params.not_after = epoch + not_before + validity;
}

/// Since the Unix epoch.
fn now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

fn cert_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> RuntimeError {
    move |e| RuntimeError::Invalid(format!("brokered TLS: {what}: {e}"))
}

/// The brokered-credentials relay: TLS terminator towards the sandbox, verified TLS client
/// towards the real host. One per server; [`Broker::serve`] is called once per brokered
/// connection and may be called concurrently.
pub struct Broker {
    /// Verifies upstream hosts: the web PKI roots plus the operator's extra anchors.
    upstream: Arc<rustls::ClientConfig>,
    /// Server configs with a leaf for (SHA-256 of the CA certificate, host), and when made.
    leaves: Mutex<HashMap<LeafKey, (Arc<rustls::ServerConfig>, Instant)>>,
}

/// SHA-256 of a CA certificate's PEM, and a host.
type LeafKey = ([u8; 32], String);

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Broker(..)")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Broker {
    /// A broker that trusts, for upstream hosts, the web PKI roots (the `webpki-roots` bundle)
    /// and every certificate in `extra_roots_pem` (PEM, `--egress-ca-file`).
    ///
    /// # Errors
    /// [`RuntimeError::Invalid`] when `extra_roots_pem` is not PEM, holds no certificate, or
    /// holds a certificate that is not a usable trust anchor.
    pub fn new(extra_roots_pem: Option<&[u8]>) -> Result<Broker> {
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        if let Some(pem) = extra_roots_pem {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| RuntimeError::Invalid(format!("the egress CA file is not PEM certificates: {e}")))?;
            if certs.is_empty() {
                return Err(RuntimeError::Invalid("the egress CA file holds no certificate".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    RuntimeError::Invalid(format!("the egress CA file has an unusable certificate: {e}"))
                })?;
            }
        }
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| RuntimeError::Invalid(format!("brokered TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Broker { upstream: Arc::new(config), leaves: Mutex::new(HashMap::new()) })
    }

    /// Terminates TLS from the sandbox for `host` with a leaf signed by `ca`, forwards each
    /// HTTP/1.1 request to `upstream` over verified TLS for `host`, adding `header` (replacing any
    /// the sandbox sent). `inside` is the sandbox's stream (already counted/throttled by the
    /// gateway).
    ///
    /// Each request goes to the upstream with `Host: host` (and the port when it is not 443),
    /// in origin form, without hop-by-hop headers. One upstream connection serves the
    /// requests of one sandbox connection in turn, and is made again if the upstream closes
    /// it. An upstream that cannot be reached or fails verification is answered with
    /// `502 Bad Gateway` (empty body) and logged.
    ///
    /// # Errors
    /// The sandbox's TLS handshake or HTTP/1.1 failing (including a request head not read
    /// within 30 s), or `ca` not being a usable CA. Nothing the sandbox sends panics.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        inside: S,
        host: &str,
        upstream: SocketAddr,
        header: &BrokeredHeader,
        ca: &NamespaceCa,
    ) -> io::Result<()> {
        let server_config = self.leaf(host, ca).map_err(io::Error::other)?;
        let (name, value) = header_of(header).map_err(io::Error::other)?;
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("brokered host {host:?}: {e}")))?;
        let tls = tokio_rustls::TlsAcceptor::from(server_config).accept(inside).await?;
        let relay = Relay {
            connector: tokio_rustls::TlsConnector::from(self.upstream.clone()),
            server_name,
            upstream,
            host: if upstream.port() == 443 { host.to_owned() } else { format!("{host}:{}", upstream.port()) },
            name,
            value,
            sender: tokio::sync::Mutex::new(None),
        };
        let relay = &relay;
        let service = hyper::service::service_fn(move |req| relay.forward(req));
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(tls), service)
            .await
            .map_err(io::Error::other)
    }

    /// The server config with a leaf for `host` signed by `ca`, made or reused.
    fn leaf(&self, host: &str, ca: &NamespaceCa) -> Result<Arc<rustls::ServerConfig>> {
        let key = (Sha256::digest(ca.cert_pem.as_bytes()).into(), host.to_owned());
        let mut leaves = self.leaves.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((config, made)) = leaves.get(&key) {
            if made.elapsed() < LEAF_REUSE {
                return Ok(config.clone());
            }
        }
        let config = Arc::new(make_leaf(host, ca)?);
        if leaves.len() >= LEAF_CACHE_MAX {
            leaves.retain(|_, (_, made)| made.elapsed() < LEAF_REUSE);
            if leaves.len() >= LEAF_CACHE_MAX {
                leaves.clear();
            }
        }
        leaves.insert(key, (config.clone(), Instant::now()));
        Ok(config)
    }
}

/// A rustls server config presenting a new leaf for `host` (a DNS name or an IP address),
/// signed by `ca`, with the CA certificate after it; ALPN `http/1.1` only.
fn make_leaf(host: &str, ca: &NamespaceCa) -> Result<rustls::ServerConfig> {
    let ca_key = rcgen::KeyPair::from_pem(&ca.key_pem).map_err(cert_err("read the namespace CA's key"))?;
    let ca_der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes())
        .map_err(|e| RuntimeError::Invalid(format!("brokered TLS: the namespace CA certificate: {e}")))?;
    // The issuer as rcgen needs it: the CA's subject and key (what a leaf names and is signed
    // with); its dates do not matter.
    let issuer = ca_params(now(), CA_VALIDITY).self_signed(&ca_key).map_err(cert_err("load the namespace CA"))?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_owned()]).map_err(cert_err("name the leaf"))?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, host);
    params.distinguished_name = dn;
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let start = now().checked_sub(CLOCK_SKEW).unwrap_or_default();
    set_validity(&mut params, start, LEAF_VALIDITY + CLOCK_SKEW);
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(cert_err("make a leaf key"))?;
    let leaf = params.signed_by(&leaf_key, &issuer, &ca_key).map_err(cert_err("sign a leaf"))?;
    let key = PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| RuntimeError::Invalid(format!("brokered TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca_der], key)
        .map_err(|e| RuntimeError::Invalid(format!("brokered TLS: the leaf: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The header as hyper types.
fn header_of(header: &BrokeredHeader) -> Result<(HeaderName, HeaderValue)> {
    let name = HeaderName::from_bytes(header.name.as_bytes())
        .map_err(|_| RuntimeError::Invalid(format!("brokered header name {:?} is not a header name", header.name)))?;
    let mut value = HeaderValue::from_str(&header.value)
        .map_err(|_| RuntimeError::Invalid(format!("the value of brokered header {name} is not a header value")))?;
    value.set_sensitive(true);
    Ok((name, value))
}

type Body = BoxBody<Bytes, hyper::Error>;
type Sender = hyper::client::conn::http1::SendRequest<Incoming>;

/// One sandbox connection's relay.
struct Relay {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    upstream: SocketAddr,
    /// The `Host` of every request upstream.
    host: String,
    name: HeaderName,
    value: HeaderValue,
    /// The upstream connection, made at the first request.
    sender: tokio::sync::Mutex<Option<Sender>>,
}

impl Relay {
    async fn forward(&self, req: Request<Incoming>) -> std::result::Result<Response<Body>, Infallible> {
        match self.send(req).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Ok(Response::from_parts(parts, body.boxed()))
            }
            Err(e) => {
                tracing::warn!(host = %self.server_name.to_str(), upstream = %self.upstream, error = %e, "brokered request failed");
                let mut resp = Response::new(Empty::<Bytes>::new().map_err(|never| match never {}).boxed());
                *resp.status_mut() = StatusCode::BAD_GATEWAY;
                Ok(resp)
            }
        }
    }

    async fn send(&self, req: Request<Incoming>) -> io::Result<Response<Incoming>> {
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // The credential replaces whatever the sandbox sent under that name.
        parts.headers.remove(&self.name);
        parts.headers.insert(self.name.clone(), self.value.clone());
        parts.headers.insert(
            HOST,
            HeaderValue::from_str(&self.host).map_err(|_| io::Error::other("the brokered host is not a Host value"))?,
        );
        let origin = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        parts.uri = origin.parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad request target"))?;
        parts.version = hyper::Version::HTTP_11;
        let req = Request::from_parts(parts, body);

        let mut slot = self.sender.lock().await;
        let reusable = match slot.as_mut() {
            Some(sender) => sender.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            *slot = Some(self.connect().await?);
        }
        let sender = slot.as_mut().ok_or_else(|| io::Error::other("no upstream connection"))?;
        sender.ready().await.map_err(io::Error::other)?;
        sender.send_request(req).await.map_err(io::Error::other)
    }

    /// A new verified TLS connection to the upstream, its HTTP/1.1 driven by a task of its own
    /// that ends when the connection does (or when the relay drops its sender).
    async fn connect(&self) -> io::Result<Sender> {
        let connect = async {
            let tcp = TcpStream::connect(self.upstream).await?;
            tcp.set_nodelay(true)?;
            self.connector.connect(self.server_name.clone(), tcp).await
        };
        let tls = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting upstream timed out"))??;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "brokered upstream connection ended");
            }
        });
        Ok(sender)
    }
}

/// Removes from `headers` what belongs to one connection: the hop-by-hop headers of RFC 9110,
/// section 7.6.1 (and `proxy-connection`), and every header that `Connection` names. The
/// broker's and the replicas' forwarding both pass requests on through it.
pub fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

#[cfg(test)]
mod tests {
    //! The broker against a real HTTPS upstream (python3's `http.server` with a certificate of
    //! a test CA made by `openssl`) and a real client (`curl`) that trusts only the namespace
    //! CA, all on loopback. The upstream records every request's headers; the client's whole
    //! output is checked for the credential.

    use std::io::BufRead;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};

    use super::*;

    const HOST: &str = "api.example.test";
    const SECRET: &str = "Bearer sk-live-a1b2c3d4e5";

    const UPSTREAM: &str = r#"
import http.server, json, ssl, sys
log = open(sys.argv[3], "a")
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        log.write(json.dumps({"method": self.command, "path": self.path, "headers": self.headers.items(),
                              "body": body.decode()}) + "\n")
        log.flush()
        out = b"upstream read %d bytes" % len(body)
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = answer
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

    /// Runs a tool the test needs; a missing one fails the test, saying which.
    fn run(cmd: &mut Command) {
        let out = cmd.output().unwrap_or_else(|e| panic!("this test needs {:?}: {e}", cmd.get_program()));
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The upstream's own CA and its certificate for [`HOST`], made by openssl.
    fn upstream_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let (ca, ca_key, cert, key) =
            (dir.join("up-ca.pem"), dir.join("up-ca.key"), dir.join("up.pem"), dir.join("up.key"));
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        run(Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args(["-days", "2", "-subj", "/CN=upstream test CA", "-keyout"])
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca));
        let csr = dir.join("up.csr");
        run(Command::new("openssl")
            .arg("req")
            .args(ec)
            .args(["-subj", &format!("/CN={HOST}"), "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&csr));
        let ext = dir.join("up.ext");
        std::fs::write(
            &ext,
            format!("subjectAltName=DNS:{HOST}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
        )
        .unwrap();
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&ca)
            .arg("-CAkey")
            .arg(&ca_key)
            .arg("-set_serial")
            .arg("2")
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&cert));
        (ca, cert, key)
    }

    /// The python upstream; killed and reaped on drop.
    struct Upstream {
        child: Child,
        port: u16,
        log: PathBuf,
    }

    impl Upstream {
        fn start(dir: &Path, cert: &Path, key: &Path) -> Upstream {
            let log = dir.join("upstream.log");
            std::fs::write(&log, "").unwrap();
            let mut child = Command::new("python3")
                .arg("-c")
                .arg(UPSTREAM)
                .arg(cert)
                .arg(key)
                .arg(&log)
                .stdout(Stdio::piped())
                .spawn()
                .expect("this test needs python3");
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
            let port = line.trim().parse().unwrap_or_else(|_| panic!("the upstream did not start: {line:?}"));
            Upstream { child, port, log }
        }

        /// Each request the upstream got: (method, path, headers, body).
        fn requests(&self) -> Vec<serde_json::Value> {
            std::fs::read_to_string(&self.log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
        }
    }

    impl Drop for Upstream {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The values of header `name` in a recorded request.
    fn header_values(request: &serde_json::Value, name: &str) -> Vec<String> {
        request["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|kv| kv[0].as_str().unwrap().eq_ignore_ascii_case(name))
            .map(|kv| kv[1].as_str().unwrap().to_owned())
            .collect()
    }

    /// A listener on loopback that hands every connection to `broker` for [`HOST`] at
    /// `upstream`; the task ends with the test's runtime.
    async fn broker_listener(broker: Broker, upstream: u16, ca: NamespaceCa) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let broker = Arc::new(broker);
        let header = BrokeredHeader { name: "Authorization".into(), value: SECRET.into() };
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (broker, header, ca) = (broker.clone(), header.clone(), ca.clone());
                tokio::spawn(async move {
                    let upstream = SocketAddr::from(([127, 0, 0, 1], upstream));
                    let _ = broker.serve(stream, HOST, upstream, &header, &ca).await;
                });
            }
        });
        port
    }

    /// curl, trusting only `ca_file`, with `HOST` at the broker; returns (exit ok, stdout, stderr).
    async fn curl(ca_file: &Path, broker_port: u16, args: &[&str]) -> (bool, String, String) {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "-v", "--max-time", "60", "--cacert"])
            .arg(ca_file)
            .arg("--resolve")
            .arg(format!("{HOST}:{broker_port}:127.0.0.1"))
            .args(args)
            .output()
            .await
            .expect("this test needs curl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_upstream_gets_the_credential_and_the_client_never_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        let (up_ca, up_cert, up_key) = upstream_certificates(dir.path());
        let upstream = Upstream::start(dir.path(), &up_cert, &up_key);
        let ca = NamespaceCa::generate().unwrap();
        let ns_ca_file = dir.path().join("ns-ca.pem");
        std::fs::write(&ns_ca_file, &ca.cert_pem).unwrap();

        let broker = Broker::new(Some(&std::fs::read(&up_ca).unwrap())).unwrap();
        let port = broker_listener(broker, upstream.port, ca.clone()).await;
        let base = format!("https://{HOST}:{port}");
        // Two requests on one connection (the second reuses it), the sandbox sending its own
        // Authorization and another header; then a POST with a body.
        let (ok, stdout, stderr) = curl(
            &ns_ca_file,
            port,
            &[
                "-H",
                "Authorization: Bearer from-the-sandbox",
                "-H",
                "X-Kept: yes",
                "-H",
                "Connection: keep-alive, X-Dropped",
                "-H",
                "X-Dropped: 1",
                &format!("{base}/first?q=1"),
                &format!("{base}/second"),
            ],
        )
        .await;
        assert!(ok, "curl failed: {stderr}");
        assert_eq!(stdout, "upstream read 0 bytesupstream read 0 bytes");
        assert!(stderr.contains("Re-using existing connection"), "{stderr}");
        assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET) && !stderr.contains("sk-live"));
        let (ok, stdout, stderr) =
            curl(&ns_ca_file, port, &["--data-binary", "hello upstream", &format!("{base}/post")]).await;
        assert!(ok, "curl failed: {stderr}");
        assert_eq!(stdout, "upstream read 14 bytes");
        assert!(!stdout.contains("sk-live") && !stderr.contains("sk-live"));
        // curl checked the leaf against the namespace CA: the subject is the host.
        assert!(stderr.contains(&format!("subject: CN={HOST}")), "{stderr}");

        let requests = upstream.requests();
        assert_eq!(requests.len(), 3, "{requests:?}");
        let paths: Vec<&str> = requests.iter().map(|r| r["path"].as_str().unwrap()).collect();
        assert_eq!(paths, ["/first?q=1", "/second", "/post"]);
        for r in &requests {
            assert_eq!(header_values(r, "authorization"), [SECRET], "{r}");
            assert_eq!(header_values(r, "host"), [format!("{HOST}:{}", upstream.port)]);
        }
        assert_eq!(header_values(&requests[0], "x-kept"), ["yes"]);
        assert!(header_values(&requests[0], "x-dropped").is_empty());
        assert_eq!(requests[2]["method"], "POST");
        assert_eq!(requests[2]["body"], "hello upstream");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upstream_the_broker_does_not_trust_gets_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (_, up_cert, up_key) = upstream_certificates(dir.path());
        let upstream = Upstream::start(dir.path(), &up_cert, &up_key);
        let ca = NamespaceCa::generate().unwrap();
        let ns_ca_file = dir.path().join("ns-ca.pem");
        std::fs::write(&ns_ca_file, &ca.cert_pem).unwrap();
        // No --egress-ca-file: the upstream's test CA is not among the web PKI roots.
        let port = broker_listener(Broker::new(None).unwrap(), upstream.port, ca).await;
        let (ok, stdout, stderr) =
            curl(&ns_ca_file, port, &["-w", "%{http_code}", &format!("https://{HOST}:{port}/x")]).await;
        assert!(ok, "{stderr}");
        assert_eq!(stdout, "502");
        assert!(upstream.requests().is_empty());
    }

    #[tokio::test]
    async fn hostile_input_is_an_error_not_a_panic() {
        let ca = NamespaceCa::generate().unwrap();
        let broker = Broker::new(None).unwrap();
        let header = BrokeredHeader { name: "Authorization".into(), value: SECRET.into() };
        let upstream = SocketAddr::from(([127, 0, 0, 1], 9));
        // Not TLS at all.
        let (mut client, server) = tokio::io::duplex(4096);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert!(broker.serve(server, HOST, upstream, &header, &ca).await.is_err());
        // A CA that is not one, a header that is not one, a host that is not a name.
        let bad_ca = NamespaceCa { cert_pem: "junk".into(), key_pem: ca.key_pem.clone() };
        let (_c, server) = tokio::io::duplex(64);
        assert!(broker.serve(server, HOST, upstream, &header, &bad_ca).await.is_err());
        let bad_header = BrokeredHeader { name: "Bad Name".into(), value: "x".into() };
        let (_c, server) = tokio::io::duplex(64);
        assert!(broker.serve(server, HOST, upstream, &bad_header, &ca).await.is_err());
        let (_c, server) = tokio::io::duplex(64);
        assert!(broker.serve(server, "not a host!", upstream, &header, &ca).await.is_err());
        // An egress CA file that holds no certificate.
        assert!(Broker::new(Some(b"not pem")).is_err());
        assert!(Broker::new(Some(ca.key_pem.as_bytes())).is_err());
    }

    #[test]
    fn leaves_are_cached_per_ca_and_host() {
        let broker = Broker::new(None).unwrap();
        let (a, b) = (NamespaceCa::generate().unwrap(), NamespaceCa::generate().unwrap());
        assert_ne!(a.cert_pem, b.cert_pem);
        assert_ne!(a.key_pem, b.key_pem);
        let first = broker.leaf(HOST, &a).unwrap();
        assert!(Arc::ptr_eq(&first, &broker.leaf(HOST, &a).unwrap()));
        assert!(!Arc::ptr_eq(&first, &broker.leaf(HOST, &b).unwrap()));
        assert!(!Arc::ptr_eq(&first, &broker.leaf("other.example.test", &a).unwrap()));
        // An address as the host gets an IP subject alternative name.
        broker.leaf("203.0.113.7", &a).unwrap();
        assert_eq!(format!("{a:?}"), "NamespaceCa(<sealed>)");
    }
}
