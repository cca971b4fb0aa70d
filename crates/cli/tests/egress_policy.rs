//! Egress on the server's side (PRODUCT.md, *Network egress*): the namespace's ceiling, what a
//! sandbox may ask for at create, and the decisions the gateway gets from the server's decider
//! and `authz/explain` (the same function). In process, with real sandboxes; the gateway itself
//! is tested with real networks elsewhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;

use axum::http::{Method, StatusCode};
use bulkhead_runtime::egress::{ConnectRequest, EgressDecider, Protocol, Verdict};
use bulkhead_server::service::egress::EgressPolicy;
use common::{assert_envelope, Harness};
use serde_json::{json, Value};

async fn set_ceiling(h: &Harness, ns: &str, egress: Value) -> common::Reply {
    h.call(Method::PATCH, &format!("/v1/namespaces/{ns}"), Some(&h.admin), json!({"egress": egress})).await
}

fn tcp(ns: &str, sbx: &str, name: Option<&str>, addr: &str, port: u16) -> ConnectRequest {
    ConnectRequest {
        namespace: ns.into(),
        sandbox: sbx.into(),
        name: name.map(str::to_owned),
        addr: Some(addr.parse::<IpAddr>().unwrap()),
        port: Some(port),
        protocol: Protocol::Tcp,
    }
}

fn dns(ns: &str, sbx: &str, name: &str) -> ConnectRequest {
    ConnectRequest {
        namespace: ns.into(),
        sandbox: sbx.into(),
        name: Some(name.into()),
        addr: None,
        port: None,
        protocol: Protocol::Dns,
    }
}

/// The rule or policies of a denial; panics on an allow.
fn denied_by(v: &Verdict) -> Vec<String> {
    match v {
        Verdict::Deny { policies, .. } => policies.clone(),
        Verdict::Allow { .. } => panic!("allowed, expected a denial"),
    }
}

#[tokio::test]
async fn the_ceiling_bounds_what_a_sandbox_may_ask_for() {
    let h = Harness::with_namespaces(&["acme"]).await;
    let (_, owner) = h.create_key("acme", "boss", "owner").await;
    let (_, dev) = h.create_key("acme", "dev", "developer").await;

    // The default ceiling is empty.
    let r = h.call(Method::GET, "/v1/namespaces/acme", Some(&dev), Value::Null).await;
    assert_eq!(r.body["egress"], json!({"allow": []}), "{}", r.body);
    // Only the platform admin sets it; a bad entry is a 400 naming it.
    let r =
        h.call(Method::PATCH, "/v1/namespaces/acme", Some(&owner), json!({"egress": {"allow": ["pypi.org"]}})).await;
    assert_envelope(&r, "forbidden");
    let r = set_ceiling(&h, "acme", json!({"allow": ["pypi.org", "bad entry"]})).await;
    assert_envelope(&r, "invalid_request");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("egress.allow[1]: \"bad entry\""), "{}", r.body);
    let r = set_ceiling(&h, "acme", json!({"allow": [], "max_bandwidth_bytes_per_second": 0})).await;
    assert_envelope(&r, "invalid_request");
    let ceiling = json!({"allow": ["pypi.org", "*.pythonhosted.org", "203.0.113.0/24:443", "*.test"],
        "max_bandwidth_bytes_per_second": 1000000});
    let r = set_ceiling(&h, "acme", ceiling.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["egress"], ceiling);
    let r = h.call(Method::GET, "/v1/namespaces/acme", Some(&dev), Value::Null).await;
    assert_eq!(r.body["egress"], ceiling);

    let create = |body: Value| {
        let h = &h;
        let dev = dev.clone();
        async move { h.call(Method::POST, "/v1/namespaces/acme/sandboxes", Some(&dev), body).await }
    };
    // Beyond the ceiling: 403 naming the entry. Malformed: 400 naming it.
    for (entry, beyond) in
        [("203.0.113.0/24:80", true), ("example.com", true), ("203.0.113.0/24", true), ("a..b", false)]
    {
        let r = create(json!({"egress": {"allow": ["pypi.org", entry]}})).await;
        assert_envelope(&r, if beyond { "forbidden" } else { "invalid_request" });
        let msg = r.body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(entry), "{entry}: {msg}");
    }
    // Credentials: the secret must exist, its host be within the sandbox's allow.
    let cred = |host: &str, secret: &str| {
        json!({"egress": {"allow": ["api.test"], "credentials": [
            {"host": host, "secret": secret, "header": "Authorization", "format": "Bearer {secret}"}]}})
    };
    let r = create(cred("api.test", "llm-key")).await;
    assert_envelope(&r, "invalid_request");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("no secret"), "{}", r.body);
    let r = h
        .call(Method::POST, "/v1/namespaces/acme/secrets", Some(&owner), json!({"name": "llm-key", "value": "sk-1"}))
        .await;
    assert!(r.status.is_success(), "{}", r.body);
    let r = create(cred("other.test", "llm-key")).await;
    assert_envelope(&r, "invalid_request");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("not within"), "{}", r.body);

    let id = h.create_sandbox("acme", &dev, cred("api.test", "llm-key")).await;
    let r = h.call(Method::GET, &format!("/v1/namespaces/acme/sandboxes/{id}"), Some(&dev), Value::Null).await;
    assert_eq!(r.body["egress"]["allow"], json!(["api.test"]), "{}", r.body);
    assert_eq!(r.body["egress"]["credentials"][0]["secret"], "llm-key");
    let plain = h.create_sandbox("acme", &dev, json!({})).await;
    let r = h.call(Method::GET, &format!("/v1/namespaces/acme/sandboxes/{plain}"), Some(&dev), Value::Null).await;
    assert!(r.body.get("egress").is_none(), "{}", r.body);
}

#[tokio::test]
async fn a_namespace_may_be_created_with_its_ceiling_and_a_bad_one_creates_nothing() {
    let h = Harness::with_namespaces(&[]).await;
    let with = |name: &str, egress: Value| {
        let mut body = common::namespace_body(name);
        body["egress"] = egress;
        body
    };
    // Malformed entries, a zero bandwidth, unknown fields: 400, and no namespace.
    for bad in [
        json!({"allow": ["pypi.org", "bad entry"]}),
        json!({"allow": ["a..b"]}),
        json!({"allow": [], "max_bandwidth_bytes_per_second": 0}),
        json!({"allow": [], "credentials": []}),
        json!(["pypi.org"]),
        json!({"allow": "pypi.org"}),
    ] {
        let r = h.call(Method::POST, "/v1/namespaces", Some(&h.admin), with("acme", bad.clone())).await;
        assert_envelope(&r, "invalid_request");
        let r = h.call(Method::GET, "/v1/namespaces/acme", Some(&h.admin), Value::Null).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{bad}: {}", r.body);
    }
    let ceiling = json!({"allow": ["pypi.org", "*.pythonhosted.org"], "max_bandwidth_bytes_per_second": 1000000});
    let r = h.call(Method::POST, "/v1/namespaces", Some(&h.admin), with("acme", ceiling.clone())).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["egress"], ceiling);
    let r = h.call(Method::GET, "/v1/namespaces/acme", Some(&h.admin), Value::Null).await;
    assert_eq!(r.body["egress"], ceiling);
    // It bounds the namespace's sandboxes at once.
    let (_, dev) = h.create_key("acme", "dev", "developer").await;
    let r = h
        .call(Method::POST, "/v1/namespaces/acme/sandboxes", Some(&dev), json!({"egress": {"allow": ["example.com"]}}))
        .await;
    assert_envelope(&r, "forbidden");
    // Without one, the ceiling is empty.
    let r = h.call(Method::POST, "/v1/namespaces", Some(&h.admin), common::namespace_body("plain")).await;
    assert_eq!(r.body["egress"], json!({"allow": []}), "{}", r.body);
}

#[tokio::test]
async fn decisions_follow_the_allow_the_current_ceiling_and_the_policies() {
    let h = Harness::with_namespaces(&["acme"]).await;
    let (_, owner) = h.create_key("acme", "boss", "owner").await;
    let r = set_ceiling(
        &h,
        "acme",
        json!({"allow": ["pypi.org", "*.pythonhosted.org", "203.0.113.0/24:443",
        "10.9.0.0/16", "0.0.0.0/0"], "max_bandwidth_bytes_per_second": 5000}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let id = h
        .create_sandbox(
            "acme",
            &owner,
            json!({"egress": {"allow": ["pypi.org:443", "*.pythonhosted.org", "203.0.113.0/24:443", "10.9.0.0/16"]}}),
        )
        .await;
    let decider = EgressPolicy::new(&h.state);
    let decide = |req: ConnectRequest| {
        let decider = decider.clone();
        async move { decider.decide(&req).await }
    };

    let v = decide(tcp("acme", &id, Some("pypi.org"), "198.51.100.7", 443)).await;
    assert_eq!(v, Verdict::Allow { max_bandwidth_bytes_per_second: Some(5000), broker: None });
    assert!(matches!(decide(dns("acme", &id, "files.pythonhosted.org")).await, Verdict::Allow { .. }));
    assert!(matches!(decide(tcp("acme", &id, None, "203.0.113.9", 443)).await, Verdict::Allow { .. }));
    // Not in the sandbox's allow: the wrong port, another name.
    assert_eq!(denied_by(&decide(tcp("acme", &id, Some("pypi.org"), "198.51.100.7", 80)).await), ["allow"]);
    assert_eq!(denied_by(&decide(dns("acme", &id, "evil.test")).await), ["allow"]);
    // Never reachable, whatever the entries say: metadata, loopback, link-local, the sandbox
    // network, a private range the ceiling does not name (0.0.0.0/0 names none).
    for addr in ["169.254.169.254", "127.0.0.1", "169.254.3.4", "100.64.0.2", "192.168.1.1", "10.8.0.1"] {
        let v = decide(tcp("acme", &id, None, addr, 443)).await;
        assert_eq!(denied_by(&v), ["always-denied"], "{addr}");
    }
    // A private range the admin named in the ceiling is reachable.
    assert!(matches!(decide(tcp("acme", &id, None, "10.9.1.1", 443)).await, Verdict::Allow { .. }));

    // A forbid added while the sandbox runs holds for its next connection.
    let forbid = r#"forbid (principal, action == Bulkhead::Action::"network.connect", resource == Bulkhead::Host::"pypi.org")
        when { context.protocol == "tcp" };"#;
    let r = h
        .call(Method::POST, "/v1/namespaces/acme/policies", Some(&owner), json!({"name": "no-pypi", "policy": forbid}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let policy = r.body["id"].as_str().unwrap().to_owned();
    let v = decide(tcp("acme", &id, Some("pypi.org"), "198.51.100.7", 443)).await;
    assert_eq!(denied_by(&v), vec![policy.clone()]);
    assert!(matches!(decide(dns("acme", &id, "pypi.org")).await, Verdict::Allow { .. }));

    // Explain answers the same question the same way.
    let explain = |resource: &str, context: Value| {
        let h = &h;
        let owner = owner.clone();
        let body = json!({"principal": format!("sandbox:{id}"), "action": "network.connect", "resource": resource,
            "context": context});
        async move { h.call(Method::POST, "/v1/namespaces/acme/authz/explain", Some(&owner), body).await }
    };
    let r = explain("host:pypi.org", json!({"port": 443, "protocol": "tcp"})).await;
    assert_eq!((r.body["decision"].as_str(), &r.body["policies"]), (Some("deny"), &json!([policy])), "{}", r.body);
    let r = explain("host:pypi.org", json!({"protocol": "dns"})).await;
    assert_eq!(r.body["decision"], "allow", "{}", r.body);
    assert_eq!(r.body["policies"], json!(["builtin.sandbox-egress"]));
    let r = explain("host:files.pythonhosted.org", json!({"port": 443})).await;
    assert_eq!(r.body["decision"], "allow", "{}", r.body);
    let r = explain("host:169.254.169.254", json!({"port": 80})).await;
    assert_eq!((r.body["decision"].as_str(), &r.body["policies"]), (Some("deny"), &json!(["always-denied"])));
    let r = explain("host:evil.test", json!({})).await;
    assert_eq!(r.body["policies"], json!(["allow"]), "{}", r.body);
    assert!(r.body["reason"].as_str().unwrap().contains("evil.test"), "{}", r.body);
    for context in [json!({"port": 0}), json!({"protocol": "udp"}), json!({"protocol": "dns", "port": 53})] {
        assert_envelope(&explain("host:pypi.org", context).await, "invalid_request");
    }
    assert_envelope(&explain("host:Not A Host", json!({})).await, "invalid_request");

    // A narrower ceiling holds for the running sandbox's next connection.
    let r = set_ceiling(&h, "acme", json!({"allow": ["pypi.org"]})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(denied_by(&decide(dns("acme", &id, "files.pythonhosted.org")).await), ["ceiling"]);
    assert_eq!(denied_by(&decide(tcp("acme", &id, None, "203.0.113.9", 443)).await), ["ceiling"]);
    let v = decide(dns("acme", &id, "pypi.org")).await;
    assert_eq!(v, Verdict::Allow { max_bandwidth_bytes_per_second: None, broker: None });

    // A sandbox that asked for nothing gets nothing; one that is gone, nothing either.
    let plain = h.create_sandbox("acme", &owner, json!({})).await;
    assert_eq!(denied_by(&decide(dns("acme", &plain, "pypi.org")).await), ["allow"]);
    let r = h.call(Method::DELETE, &format!("/v1/namespaces/acme/sandboxes/{id}"), Some(&owner), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(denied_by(&decide(dns("acme", &id, "pypi.org")).await), ["not-running"]);
    assert_eq!(denied_by(&decide(dns("acme", "sbx_missing", "pypi.org")).await), ["not-found"]);
    assert_eq!(denied_by(&decide(dns("nope", &id, "pypi.org")).await), ["not-found"]);
}

#[tokio::test]
async fn a_connection_by_name_is_judged_as_its_address_too() {
    let h = Harness::with_namespaces(&["acme"]).await;
    let (_, owner) = h.create_key("acme", "boss", "owner").await;
    let r = set_ceiling(&h, "acme", json!({"allow": ["api.test", "198.51.100.0/24"]})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let id = h.create_sandbox("acme", &owner, json!({"egress": {"allow": ["api.test", "198.51.100.0/24"]}})).await;
    let decider = EgressPolicy::new(&h.state);
    let decide = |req: ConnectRequest| {
        let decider = decider.clone();
        async move { decider.decide(&req).await }
    };
    let explain = |host: &str| {
        let h = &h;
        let owner = owner.clone();
        let body = json!({"principal": format!("sandbox:{id}"), "action": "network.connect",
            "resource": format!("host:{host}"), "context": {"port": 443}});
        async move { h.call(Method::POST, "/v1/namespaces/acme/authz/explain", Some(&owner), body).await }
    };
    let add = |name: &str, resource: &str| {
        let h = &h;
        let owner = owner.clone();
        let policy = format!(
            r#"forbid (principal, action == Bulkhead::Action::"network.connect", resource == Bulkhead::Host::"{resource}");"#
        );
        let name = name.to_owned();
        async move {
            let r = h
                .call(
                    Method::POST,
                    "/v1/namespaces/acme/policies",
                    Some(&owner),
                    json!({"name": name, "policy": policy}),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            r.body["id"].as_str().unwrap().to_owned()
        }
    };
    let remove = |policy: String| {
        let h = &h;
        let owner = owner.clone();
        async move {
            let r = h
                .call(Method::DELETE, &format!("/v1/namespaces/acme/policies/{policy}"), Some(&owner), Value::Null)
                .await;
            assert!(r.status.is_success(), "{}", r.body);
        }
    };
    let by_name = || tcp("acme", &id, Some("api.test"), "198.51.100.195", 443);

    // Neither forbidden: allowed, by name and by address, and explain agrees.
    assert!(matches!(decide(by_name()).await, Verdict::Allow { .. }));
    assert!(matches!(decide(tcp("acme", &id, None, "198.51.100.195", 443)).await, Verdict::Allow { .. }));
    for host in ["api.test", "198.51.100.195"] {
        let r = explain(host).await;
        assert_eq!(r.body["decision"], "allow", "{host}: {}", r.body);
    }

    // A forbid on the address holds for a connection that reaches it by a name, and explain of
    // the address says so.
    let no_addr = add("no-addr", "198.51.100.195").await;
    let v = decide(by_name()).await;
    assert_eq!(denied_by(&v), vec![no_addr.clone()]);
    let Verdict::Deny { reason, .. } = &v else { unreachable!() };
    assert!(reason.contains("198.51.100.195") && reason.contains(&no_addr), "{reason}");
    assert_eq!(denied_by(&decide(tcp("acme", &id, None, "198.51.100.195", 443)).await), vec![no_addr.clone()]);
    // Another address of the same name is not forbidden.
    assert!(matches!(decide(tcp("acme", &id, Some("api.test"), "198.51.100.7", 443)).await, Verdict::Allow { .. }));
    let r = explain("198.51.100.195").await;
    assert_eq!((r.body["decision"].as_str(), &r.body["policies"]), (Some("deny"), &json!([no_addr])), "{}", r.body);
    let reason = r.body["reason"].as_str().unwrap();
    assert!(reason.contains("a name that resolves to 198.51.100.195 is judged as 198.51.100.195"), "{reason}");
    // The name alone (a DNS query, or explain of the name) is not forbidden.
    assert!(matches!(decide(dns("acme", &id, "api.test")).await, Verdict::Allow { .. }));
    assert_eq!(explain("api.test").await.body["decision"], "allow");
    remove(no_addr).await;
    assert!(matches!(decide(by_name()).await, Verdict::Allow { .. }));

    // A forbid on the name holds whatever address it resolves to.
    let no_name = add("no-name", "api.test").await;
    assert_eq!(denied_by(&decide(by_name()).await), vec![no_name.clone()]);
    assert_eq!(
        denied_by(&decide(tcp("acme", &id, Some("api.test"), "198.51.100.7", 443)).await),
        vec![no_name.clone()]
    );
    assert!(matches!(decide(tcp("acme", &id, None, "198.51.100.195", 443)).await, Verdict::Allow { .. }));
    let r = explain("api.test").await;
    assert_eq!((r.body["decision"].as_str(), &r.body["policies"]), (Some("deny"), &json!([no_name])), "{}", r.body);
    assert_eq!(explain("198.51.100.195").await.body["decision"], "allow");

    // Both: the denial names both forbids.
    let no_addr = add("no-addr", "198.51.100.195").await;
    let mut both = vec![no_name, no_addr];
    both.sort();
    assert_eq!(denied_by(&decide(by_name()).await), both);
}
