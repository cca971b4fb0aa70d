//! Brokered credentials, the server's side, against a real sandbox: a sandbox with a
//! credential trusts its namespace's CA (the bundle at the usual path, and the variables TLS
//! clients read), the decider brokers that host only, with the secret in the header, and the
//! namespace's CA is one, sealed, for good.

#![allow(clippy::unwrap_used)]

mod common;

use axum::http::{Method, StatusCode};
use bulkhead_runtime::egress::{ConnectRequest, EgressDecider, Protocol, Verdict};
use bulkhead_server::service::egress::EgressPolicy;
use bulkhead_server::service::egress_broker;
use common::Harness;
use serde_json::json;

#[tokio::test]
async fn a_sandbox_with_a_credential_trusts_the_namespace_ca_and_its_host_is_brokered() {
    let h = Harness::with_namespaces(&["acme"]).await;
    let (_, owner) = h.create_key("acme", "boss", "owner").await;
    let r = h
        .call(
            Method::PATCH,
            "/v1/namespaces/acme",
            Some(&h.admin),
            json!({"egress": {"allow": ["api.example.test:443", "other.example.test"]}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = h
        .call(
            Method::POST,
            "/v1/namespaces/acme/secrets",
            Some(&owner),
            json!({"name": "llm-key", "value": "sk-9f8e7d"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let credential = json!({"host": "api.example.test", "secret": "llm-key", "header": "Authorization", "format": "Bearer {secret}"});
    let id = h
        .create_sandbox(
            "acme",
            &owner,
            json!({"egress": {"allow": ["api.example.test:443", "other.example.test"], "credentials": [credential]}}),
        )
        .await;
    let plain = h.create_sandbox("acme", &owner, json!({"egress": {"allow": ["other.example.test"]}})).await;

    // The namespace's CA: one, stored sealed (no PEM in the clear), the same on every use.
    let ca = egress_broker::namespace_ca(&h.state, "acme").await.unwrap();
    assert_eq!(egress_broker::namespace_ca(&h.state, "acme").await.unwrap(), ca);
    let stored = h.state.store.get_egress_ca("acme").await.unwrap().unwrap();
    assert!(!stored.windows(10).any(|w| w == b"-----BEGIN"));

    // The image's own bundle, as a sandbox without credentials has it.
    let (code, image_bundle, err) = h.sh("acme", &plain, &owner, "cat /etc/ssl/certs/ca-certificates.crt").await;
    assert_eq!(code, 0, "{err}");
    assert!(image_bundle.matches("BEGIN CERTIFICATE").count() > 50, "the image has the public roots");
    // Inside: the bundle is the image's and the CA, where OpenSSL looks and where the variables say.
    let script = "echo $SSL_CERT_FILE $REQUESTS_CA_BUNDLE $NODE_EXTRA_CA_CERTS $CURL_CA_BUNDLE $GIT_SSL_CAINFO; \
                  cat /etc/ssl/certs/ca-certificates.crt";
    let (code, out, err) = h.sh("acme", &id, &owner, script).await;
    assert_eq!(code, 0, "{err}");
    let (vars, bundle) = out.split_once('\n').unwrap();
    assert_eq!(vars, ["/etc/ssl/certs/ca-certificates.crt"; 5].join(" "));
    assert!(bundle.ends_with(&ca.cert_pem), "the bundle ends with the namespace CA");
    assert!(bundle.starts_with(image_bundle.trim_end()), "the bundle starts with the image's");
    assert!(!bundle.contains("PRIVATE KEY") && !out.contains("sk-9f8e7d"));
    // A sandbox without credentials keeps the image's bundle and gets no variables.
    let (_, out, _) =
        h.sh("acme", &plain, &owner, "echo \"[$SSL_CERT_FILE]\"; cat /etc/ssl/certs/ca-certificates.crt").await;
    assert!(out.starts_with("[]\n") && !out.contains(ca.cert_pem.trim_end()));

    // The decider: the credential's host is brokered with the secret in its format; another
    // allowed host is not; a DNS query is not.
    let decider = EgressPolicy::new(&h.state);
    let ask = |sandbox: &str, name: &str, protocol| ConnectRequest {
        namespace: "acme".into(),
        sandbox: sandbox.into(),
        name: Some(name.into()),
        addr: (protocol == Protocol::Tcp).then(|| "203.0.113.9".parse().unwrap()),
        port: (protocol == Protocol::Tcp).then_some(443),
        protocol,
    };
    match decider.decide(&ask(&id, "api.example.test", Protocol::Tcp)).await {
        Verdict::Allow { broker: Some((header, broker_ca)), .. } => {
            assert_eq!(header.name, "Authorization");
            assert_eq!(header.value, "Bearer sk-9f8e7d");
            assert_eq!(broker_ca, ca);
        }
        other => panic!("not brokered: {other:?}"),
    }
    for (sandbox, name, protocol) in [
        (&id, "other.example.test", Protocol::Tcp),
        (&id, "api.example.test", Protocol::Dns),
        (&plain, "other.example.test", Protocol::Tcp),
    ] {
        match decider.decide(&ask(sandbox, name, protocol)).await {
            Verdict::Allow { broker: None, .. } => {}
            other => panic!("{name} {protocol:?}: {other:?}"),
        }
    }
    // The secret deleted: the host is no longer brokered (and nothing panics).
    let r = h.call(Method::DELETE, "/v1/namespaces/acme/secrets/llm-key", Some(&owner), serde_json::Value::Null).await;
    assert!(r.status.is_success(), "{}", r.body);
    assert!(matches!(
        decider.decide(&ask(&id, "api.example.test", Protocol::Tcp)).await,
        Verdict::Allow { broker: None, .. }
    ));
}
