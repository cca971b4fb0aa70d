//! What the first bytes of a sandbox's connection name: the server name of a TLS ClientHello
//! (parsed by rustls's [`rustls::server::Acceptor`], no handshake), or the `Host` of an HTTP/1
//! request (parsed by `httparse`). Nothing is decrypted and nothing is trusted: the name found
//! is only a claim, which the forwarder checks by resolving it itself.

/// The most bytes the forwarder holds back before it decides (a ClientHello with many
/// extensions fits; an HTTP request's headers should).
pub const MAX_PEEK: usize = 16 * 1024;

/// What the bytes seen so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// A TLS ClientHello or an HTTP request that is not complete yet: read more (up to
    /// [`MAX_PEEK`]).
    More,
    /// The destination's name, normalized by [`normalize`].
    Name(String),
    /// No name: another protocol, a malformed or nameless hello, an IP literal as `Host`.
    NoName,
}

/// Looks at the first bytes of a connection (all of them so far).
pub fn sniff(buf: &[u8]) -> Sniffed {
    match buf.first() {
        None => Sniffed::More,
        // A TLS handshake record.
        Some(0x16) => tls(buf),
        // An HTTP method is an upper-case token.
        Some(b) if b.is_ascii_uppercase() => http(buf),
        Some(_) => Sniffed::NoName,
    }
}

fn tls(buf: &[u8]) -> Sniffed {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = buf;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return Sniffed::NoName,
        }
    }
    match acceptor.accept() {
        Ok(None) if buf.len() < MAX_PEEK => Sniffed::More,
        Ok(None) => Sniffed::NoName,
        Ok(Some(accepted)) => {
            accepted.client_hello().server_name().and_then(normalize).map_or(Sniffed::NoName, Sniffed::Name)
        }
        Err(_) => Sniffed::NoName,
    }
}

fn http(buf: &[u8]) -> Sniffed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() < MAX_PEEK => Sniffed::More,
        Ok(httparse::Status::Partial) | Err(_) => Sniffed::NoName,
        Ok(httparse::Status::Complete(_)) => request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("host"))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .and_then(host_name)
            .map_or(Sniffed::NoName, Sniffed::Name),
    }
}

/// The name of an HTTP `Host` value (`name` or `name:port`); none for an IP literal.
fn host_name(value: &str) -> Option<String> {
    let value = value.trim();
    if value.starts_with('[') {
        return None;
    }
    let host = match value.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        Some(_) => return None,
        None => value,
    };
    normalize(host)
}

/// A DNS name as the gateway and the decider compare it: lower-case ASCII, no trailing dot,
/// labels of 1 to 63 letters, digits, `-` or `_`, at most 253 bytes; none for anything else
/// (an IP literal included).
pub fn normalize(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 || name.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    };
    name.split('.').all(label_ok).then_some(name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A real ClientHello for `server`, made by a rustls client (ring is there for the test).
    fn client_hello(server: &str) -> Vec<u8> {
        use std::sync::Arc;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(server.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn a_client_hello_names_its_server() {
        let hello = client_hello("Pypi.Org");
        assert_eq!(sniff(&hello), Sniffed::Name("pypi.org".into()));
        // Byte by byte: more until the record is whole.
        for cut in [1, 5, hello.len() / 2, hello.len() - 1] {
            assert_eq!(sniff(&hello[..cut]), Sniffed::More, "{cut}");
        }
        // A hello for an IP address carries no name.
        assert_eq!(sniff(&client_hello("203.0.113.7")), Sniffed::NoName);
        // Garbage after a handshake byte never panics.
        for junk in [&[0x16, 3, 1, 0, 4, 1, 0, 0, 0][..], &[0x16, 0xff, 0xff, 0xff, 0xff], &[0x16; 600]] {
            assert_ne!(sniff(junk), Sniffed::Name(String::new()));
        }
    }

    #[test]
    fn an_http_request_names_its_host() {
        assert_eq!(sniff(b"GET / HTTP/1.1\r\nHost: Allowed.Test:8080\r\n\r\n"), Sniffed::Name("allowed.test".into()));
        assert_eq!(sniff(b"GET / HTTP/1.1\r\nhost: allowed.test.\r\n\r\n"), Sniffed::Name("allowed.test".into()));
        assert_eq!(sniff(b"GET / HTTP/1.1\r\nHost: allowed.te"), Sniffed::More);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\nHost: 203.0.113.9\r\n\r\n"), Sniffed::NoName);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"), Sniffed::NoName);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n\r\n"), Sniffed::NoName);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), Sniffed::NoName);
        assert_eq!(sniff(b"SSH-2.0-OpenSSH\r\n"), Sniffed::NoName);
        assert_eq!(sniff(b"\x00\x01binary"), Sniffed::NoName);
        let huge = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; MAX_PEEK]].concat();
        assert_eq!(sniff(&huge), Sniffed::NoName);
    }

    #[test]
    fn names_are_normalized_or_refused() {
        assert_eq!(normalize("Allowed.TEST."), Some("allowed.test".into()));
        assert_eq!(normalize("_srv.x-y.test"), Some("_srv.x-y.test".into()));
        for bad in ["", ".", "a..b", "1.2.3.4", "a b.test", "ä.test", &"a".repeat(64), &"ab.".repeat(85)] {
            assert_eq!(normalize(bad), None, "{bad}");
        }
    }
}
