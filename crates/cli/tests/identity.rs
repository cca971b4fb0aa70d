//! Identity and permissions, end to end with real parts: a real OpenID Connect provider on
//! loopback (oauth2-mock-server under node: real discovery, JWKS and signatures), the Cedar
//! policies of each namespace, sandboxes' workload tokens, and secrets sealed in the real SQLite
//! file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../oidc/tests/support/provider.rs"]
mod oidc_provider;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bulkhead_core::outbound::OutboundPolicy;
use common::{assert_envelope, Harness};
use hmac::{Hmac, Mac};
use oidc_provider::TestProvider;
use serde_json::{json, Value};
use sha2::Digest;

async fn sso_harness() -> Harness {
    Harness::with_config("runc", |c| {
        // Key rotation is seen on the next token, not 30 s later.
        c.oidc.min_refetch_interval = Duration::from_millis(1);
        // The test providers are on loopback: `--outbound-allow 127.0.0.0/8`.
        c.outbound.policy = OutboundPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
    })
    .await
}

async fn get_as(h: &Harness, path: &str, token: &str) -> common::Reply {
    let req =
        Request::builder().uri(path).header("authorization", format!("Bearer {token}")).body(Body::empty()).unwrap();
    h.send(req).await
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}

async fn set_identity(h: &Harness, ns: &str, issuer: &str) {
    let body = json!({"oidc": {"issuer": issuer, "audience": "bulkhead",
        "role_mappings": {"eng": "developer", "ops": "owner", "look": "viewer"}}});
    let r = h.call(Method::PUT, &format!("/v1/namespaces/{ns}/identity"), Some(&h.admin), body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn sso_users_sign_in_through_their_namespaces_provider_and_forged_tokens_are_refused() {
    let a = TestProvider::start();
    let b = TestProvider::start();
    let h = sso_harness().await;
    h.create_namespace("alpha").await;
    h.create_namespace("beta").await;
    set_identity(&h, "alpha", a.issuer()).await;
    set_identity(&h, "beta", b.issuer()).await;
    let r = h.call(Method::GET, "/v1/namespaces/alpha/identity", Some(&h.admin), Value::Null).await;
    assert_eq!(r.body["oidc"]["issuer"], a.issuer());

    // Role mapping from groups.
    let dev = a.mint(json!({"sub": "alice", "email": "alice@alpha.test", "groups": ["eng"]}), None);
    assert_eq!(get_as(&h, "/v1/namespaces/alpha", &dev).await.status, StatusCode::OK);
    assert_eq!(get_as(&h, "/v1/namespaces/alpha/keys", &dev).await.status, StatusCode::FORBIDDEN);
    let owner = a.mint(json!({"sub": "olga", "groups": ["look", "ops"]}), None);
    assert_eq!(get_as(&h, "/v1/namespaces/alpha/keys", &owner).await.status, StatusCode::OK, "the strongest role wins");
    let viewer = a.mint(json!({"sub": "vic", "groups": ["look"]}), None);
    let r = h.call(Method::POST, "/v1/namespaces/alpha/projects", Some(&viewer), json!({"name": "p"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let stranger = a.mint(json!({"sub": "sam", "groups": ["sales"]}), None);
    let r = get_as(&h, "/v1/namespaces/alpha", &stranger).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_envelope(&r, "forbidden");
    // An email longer than the policies' `like` bound counts on is refused like a bad token.
    let long = format!("{}@alpha.test", "a".repeat(bulkhead_policy::bounds::MAX_ATTRIBUTE_BYTES));
    let bloated = a.mint(json!({"sub": "bea", "email": long, "groups": ["eng"]}), None);
    let r = get_as(&h, "/v1/namespaces/alpha", &bloated).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert_envelope(&r, "unauthenticated");

    // SSO users show in the audit log with subject and email.
    let r = h.call(Method::POST, "/v1/namespaces/alpha/projects", Some(&dev), json!({"name": "alices"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let audit =
        h.call(Method::GET, "/v1/namespaces/alpha/audit?action=project.create", Some(&h.admin), Value::Null).await;
    let items = audit.body["items"].as_array().unwrap();
    let rec = items.iter().find(|r| r["status"] == 201).expect("the create is audited");
    assert_eq!(rec["principal"], "user:alice", "{rec}");
    assert!(items.iter().any(|r| r["principal"] == "user:vic" && r["decision"] == "deny"), "{items:?}");
    assert!(rec["detail"].to_string().contains("alice@alpha.test"), "{rec}");

    // Key rotation: a token of a new ES256 key is accepted once the JWKS is refetched.
    a.rotate("ES256", false);
    let es = a.mint(json!({"sub": "alice", "groups": ["eng"]}), None);
    assert_eq!(get_as(&h, "/v1/namespaces/alpha", &es).await.status, StatusCode::OK);

    // The attack corpus: each one 401, none a 5xx, none echoing the token.
    let jwks = a.jwks();
    let rsa = jwks["keys"].as_array().unwrap().iter().find(|k| k["kty"] == "RSA").unwrap().clone();
    let modulus = URL_SAFE_NO_PAD.decode(rsa["n"].as_str().unwrap()).unwrap();
    let claims = json!({"iss": a.issuer(), "aud": "bulkhead", "sub": "mallory", "groups": ["ops"],
        "exp": now() + 600, "iat": now()});
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"}).to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let hs_header = json!({"alg": "HS256", "typ": "JWT", "kid": rsa["kid"]});
    let mut tampered: Vec<String> = dev.split('.').map(str::to_owned).collect();
    let mut payload: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&tampered[1]).unwrap()).unwrap();
    payload["groups"] = json!(["ops"]);
    tampered[1] = b64(payload.to_string().as_bytes());
    let corpus = [
        ("alg none", none),
        ("HS256 keyed with the public key's text", hs256(rsa["n"].as_str().unwrap().as_bytes(), &hs_header, &claims)),
        ("HS256 keyed with the public modulus", hs256(&modulus, &hs_header, &claims)),
        ("wrong issuer", a.mint(json!({"iss": "http://127.0.0.1:1", "groups": ["ops"]}), None)),
        ("wrong audience", a.mint(json!({"aud": "someone-else", "groups": ["ops"]}), None)),
        ("expired", a.mint(json!({"exp": now() - 600, "groups": ["ops"]}), None)),
        ("not yet valid", a.mint(json!({"nbf": now() + 600, "groups": ["ops"]}), None)),
        ("unknown kid", a.mint_with(json!({"claims": {"groups": ["ops"]}, "header": {"kid": "no-such-key"}}))),
        ("another namespace's provider", b.mint(json!({"sub": "bob", "groups": ["ops"]}), None)),
        ("tampered payload", tampered.join(".")),
        ("garbage", "a.b.c".to_owned()),
    ];
    for (what, token) in &corpus {
        let r = get_as(&h, "/v1/namespaces/alpha/keys", token).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.body);
        assert_envelope(&r, "unauthenticated");
        assert!(!String::from_utf8_lossy(&r.raw).contains(token.as_str()), "{what}: the token was echoed");
    }
    // A valid token of alpha's provider is worth nothing in beta, and beta's nothing in alpha.
    assert_eq!(get_as(&h, "/v1/namespaces/beta", &owner).await.status, StatusCode::UNAUTHORIZED);
    let bob = b.mint(json!({"sub": "bob", "groups": ["eng"]}), None);
    assert_eq!(get_as(&h, "/v1/namespaces/beta", &bob).await.status, StatusCode::OK);
    assert_eq!(get_as(&h, "/v1/namespaces/alpha", &bob).await.status, StatusCode::UNAUTHORIZED);
    // Outside a namespace's path a user token means nothing.
    assert_eq!(get_as(&h, "/v1/namespaces", &dev).await.status, StatusCode::UNAUTHORIZED);

    // Bad identity settings are 400s naming the field.
    for body in [
        json!({"oidc": {"issuer": "http://example.com", "audience": "x", "role_mappings": {"g": "viewer"}}}),
        json!({"oidc": {"issuer": "ftp://127.0.0.1", "audience": "x", "role_mappings": {"g": "viewer"}}}),
        // Allowed range, non-canonical form.
        json!({"oidc": {"issuer": "http://0x7f000001", "audience": "x", "role_mappings": {"g": "viewer"}}}),
        json!({"oidc": {"issuer": "http://127.1", "audience": "x", "role_mappings": {"g": "viewer"}}}),
        // Outside the allowed range.
        json!({"oidc": {"issuer": "https://10.0.0.1", "audience": "x", "role_mappings": {"g": "viewer"}}}),
        json!({"oidc": {"issuer": "https://idp.test", "audience": "x", "role_mappings": {"g": "root"}}}),
        json!({"oidc": {"issuer": "https://idp.test", "audience": "", "role_mappings": {"g": "viewer"}}}),
        json!({"oidc": {"issuer": "https://idp.test", "audience": "x", "role_mappings": {}}}),
        json!({"oidc": {"issuer": "https://idp.test", "audience": "x", "role_mappings": {"g": "viewer"}, "extra": 1}}),
    ] {
        let r = h.call(Method::PUT, "/v1/namespaces/alpha/identity", Some(&h.admin), body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.body);
    }
    // Turning SSO off refuses the users at once.
    let r = h.call(Method::PUT, "/v1/namespaces/alpha/identity", Some(&h.admin), json!({"oidc": null})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(get_as(&h, "/v1/namespaces/alpha", &dev).await.status, StatusCode::UNAUTHORIZED);
}

async fn exec_as(h: &Harness, ns: &str, id: &str, token: &str, cmd: &[&str]) -> common::Reply {
    h.call(Method::POST, &format!("/v1/namespaces/{ns}/sandboxes/{id}/exec"), Some(token), json!({"cmd": cmd})).await
}

async fn add_policy(h: &Harness, ns: &str, token: &str, name: &str, policy: &str) -> common::Reply {
    h.call(Method::POST, &format!("/v1/namespaces/{ns}/policies"), Some(token), json!({"name": name, "policy": policy}))
        .await
}

#[tokio::test]
async fn a_forbid_policy_beats_the_role_and_explain_names_it() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let (_, owner) = h.create_key("alpha", "boss", "owner").await;
    let (_, admin) = h.create_key("alpha", "ops", "admin").await;
    let (dev_id, dev) = h.create_key("alpha", "dev", "developer").await;
    let s1 = h.create_sandbox("alpha", &dev, json!({})).await;
    let s2 = h.create_sandbox("alpha", &dev, json!({})).await;
    assert_eq!(exec_as(&h, "alpha", &s1, &dev, &["true"]).await.status, StatusCode::OK);

    let text = format!(
        "forbid(principal, action == Bulkhead::Action::\"sandbox.exec\", resource == Bulkhead::Sandbox::\"{s1}\");"
    );
    // Only the owner writes policies.
    assert_eq!(add_policy(&h, "alpha", &admin, "no-exec", &text).await.status, StatusCode::FORBIDDEN);
    let r = add_policy(&h, "alpha", &owner, "no-exec", &text).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let pol = r.body["id"].as_str().unwrap().to_owned();

    let r = exec_as(&h, "alpha", &s1, &dev, &["true"]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(r.body["error"]["message"].as_str().unwrap().contains(&pol), "{}", r.body);
    assert_eq!(exec_as(&h, "alpha", &s1, &owner, &["true"]).await.status, StatusCode::FORBIDDEN, "forbid wins");
    assert_eq!(exec_as(&h, "alpha", &s2, &dev, &["true"]).await.status, StatusCode::OK);

    let explain = |resource: String| {
        let h = &h;
        let admin = admin.clone();
        let principal = format!("key:{dev_id}");
        async move {
            let body = json!({"principal": principal, "action": "sandbox.exec", "resource": resource});
            let r = h.call(Method::POST, "/v1/namespaces/alpha/authz/explain", Some(&admin), body).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            r.body
        }
    };
    let e = explain(format!("sandbox:{s1}")).await;
    assert_eq!(e["decision"], "deny", "{e}");
    assert_eq!(e["policies"], json!([pol]), "{e}");
    let e = explain(format!("sandbox:{s2}")).await;
    assert_eq!(e["decision"], "allow", "{e}");
    assert!(e["policies"].as_array().unwrap().iter().any(|p| p.as_str().unwrap().starts_with("builtin.")), "{e}");

    // Bad policies are 400s carrying Cedar's message, and change nothing.
    for (bad, needle) in [
        ("permit(principal, action == Bulkhead::Action::\"sandbox.fly\", resource);", "sandbox.fly"),
        ("permit(principal, action, resource) when { principal.colour == \"red\" };", "colour"),
        ("permit(principal, action", "unexpected"),
        ("permit(principal == ?principal, action, resource);", "template"),
        ("forbid(principal == Bulkhead::Admin::\"admin\", action, resource);", "Admin"),
    ] {
        let r = add_policy(&h, "alpha", &owner, "bad", bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
        let msg = r.body["error"]["message"].as_str().unwrap().to_lowercase();
        assert!(msg.contains(&needle.to_lowercase()), "{bad}: {msg}");
    }
    let r = h.call(Method::GET, "/v1/namespaces/alpha/policies", Some(&owner), Value::Null).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1, "{}", r.body);
    assert_eq!(add_policy(&h, "alpha", &owner, "no-exec", &text).await.status, StatusCode::CONFLICT);

    // Removing the policy restores the role's permission at once.
    let r = h.call(Method::DELETE, &format!("/v1/namespaces/alpha/policies/{pol}"), Some(&owner), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(exec_as(&h, "alpha", &s1, &dev, &["true"]).await.status, StatusCode::OK);
    let r = h.call(Method::DELETE, "/v1/namespaces/alpha", Some(&h.admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_sandbox_acts_with_its_workload_token_and_only_what_policies_grant() {
    let h = Harness::with_namespaces(&["alpha", "beta"]).await;
    let (_, owner) = h.create_key("alpha", "boss", "owner").await;
    let (_, dev) = h.create_key("alpha", "dev", "developer").await;
    let s = h.create_sandbox("alpha", &dev, json!({})).await;
    let other = h.create_sandbox("alpha", &dev, json!({})).await;
    let (code, out, err) =
        h.sh("alpha", &s, &dev, "stat -c '%a %u' /run/bulkhead/token && cat /run/bulkhead/token").await;
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("400 0"), "the token is the sandbox root's alone");
    let token = lines.next().unwrap().to_owned();
    assert!(token.starts_with("bhw_"), "{token}");
    // The file cannot be changed from inside.
    let (code, _, _) = h.sh("alpha", &s, &dev, "echo x > /run/bulkhead/token").await;
    assert_ne!(code, 0);
    let (code, out, _) = h.sh("alpha", &other, &dev, "cat /run/bulkhead/token").await;
    assert_eq!(code, 0);
    assert_ne!(out.trim(), token, "each sandbox has its own token");

    // The sandbox principal: itself, nothing else, unless a policy grants it.
    let r = get_as(&h, &format!("/v1/namespaces/alpha/sandboxes/{s}"), &token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["creator"].as_str().unwrap().split(':').next(), Some("key"));
    assert_eq!(
        get_as(&h, &format!("/v1/namespaces/alpha/sandboxes/{other}"), &token).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(get_as(&h, "/v1/namespaces/alpha/keys", &token).await.status, StatusCode::FORBIDDEN);
    assert_eq!(get_as(&h, "/v1/namespaces/alpha/sandboxes", &token).await.status, StatusCode::FORBIDDEN);
    assert_eq!(exec_as(&h, "alpha", &s, &token, &["true"]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(get_as(&h, "/v1/namespaces/beta", &token).await.status, StatusCode::NOT_FOUND);
    let grant = format!(
        "permit(principal == Bulkhead::Sandbox::\"{s}\", action == Bulkhead::Action::\"sandbox.list\", resource);"
    );
    assert_eq!(add_policy(&h, "alpha", &owner, "agents-list", &grant).await.status, StatusCode::CREATED);
    assert_eq!(get_as(&h, "/v1/namespaces/alpha/sandboxes", &token).await.status, StatusCode::OK);

    // The token dies with the sandbox.
    let r = h.call(Method::DELETE, &format!("/v1/namespaces/alpha/sandboxes/{s}"), Some(&dev), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = get_as(&h, "/v1/namespaces/alpha/sandboxes", &token).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    for ns in ["alpha", "beta"] {
        let r = h.call(Method::DELETE, &format!("/v1/namespaces/{ns}"), Some(&h.admin), Value::Null).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
    }
}

/// A writer that keeps everything the server logs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn secret_values_reach_only_allowed_sandboxes_and_nothing_else() {
    // Every log line of the server, at debug, goes to a buffer searched at the end.
    let logs = Captured::default();
    let sink = logs.clone();
    let _ = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_env_filter("debug,sqlx=warn,hyper=warn,reqwest=warn")
        .try_init();
    let h = Harness::with_namespaces(&["alpha"]).await;
    let (_, owner) = h.create_key("alpha", "boss", "owner").await;
    let (_, dev) = h.create_key("alpha", "dev", "developer").await;
    let value = format!("s3cret-{}", bulkhead_core::ids::new_id("v"));
    let mut answers = Vec::new();

    let r =
        h.call(Method::POST, "/v1/namespaces/alpha/secrets", Some(&dev), json!({"name": "db", "value": value})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "a developer does not manage secrets");
    answers.push(r.raw);
    let r =
        h.call(Method::POST, "/v1/namespaces/alpha/secrets", Some(&owner), json!({"name": "db", "value": "old"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    answers.push(r.raw);
    let r =
        h.call(Method::POST, "/v1/namespaces/alpha/secrets", Some(&owner), json!({"name": "db", "value": value})).await;
    assert_eq!(r.status, StatusCode::OK, "replaced: {}", r.body);
    answers.push(r.raw);
    let r = h.call(Method::GET, "/v1/namespaces/alpha/secrets", Some(&dev), Value::Null).await;
    assert_eq!(r.body["items"][0]["name"], "db");
    answers.push(r.raw);
    for bad in [json!({"name": "../db", "value": "x"}), json!({"name": "db", "value": ""}), json!({"name": "db"})] {
        let r = h.call(Method::POST, "/v1/namespaces/alpha/secrets", Some(&owner), bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        answers.push(r.raw);
    }

    // A sandbox allowed the secret gets it, as an environment variable and as a file.
    let body = json!({"secrets": [{"name": "db", "env": "DB_PASSWORD"}, {"name": "db", "path": "/run/secrets/db"}]});
    let r = h.call(Method::POST, "/v1/namespaces/alpha/sandboxes", Some(&dev), body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["secrets"], json!(["db", "db"]));
    answers.push(r.raw.clone());
    let s = r.body["id"].as_str().unwrap().to_owned();
    // Compared by digest, so the value itself never travels in an argv (which is audited).
    let check = "printf %s \"$DB_PASSWORD\" | sha256sum; sha256sum < /run/secrets/db; stat -c %a /run/secrets/db";
    let r = exec_as(&h, "alpha", &s, &dev, &["sh", "-c", check]).await;
    assert_eq!(r.body["exit_code"], 0, "{}", r.body);
    let digest: String = sha2::Sha256::digest(value.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(r.body["stdout"], format!("{digest}  -\n{digest}  -\n400\n"));
    answers.push(r.raw);
    // A sandbox that asked for nothing has nothing.
    let plain = h.create_sandbox("alpha", &dev, json!({})).await;
    let (code, _, _) = h.sh("alpha", &plain, &dev, "test -e /run/secrets || env | grep -q DB_PASSWORD").await;
    assert_ne!(code, 0);

    // A sandbox the policy does not allow the secret does not get it.
    let forbid = "forbid(principal is Bulkhead::Sandbox, action == Bulkhead::Action::\"secret.read\", \
                  resource == Bulkhead::Secret::\"db\") unless { principal has creator && principal.creator == \"user:ci\" };";
    let r = add_policy(&h, "alpha", &owner, "db-for-ci-only", forbid).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let body = json!({"secrets": [{"name": "db", "env": "DB_PASSWORD"}]});
    let r = h.call(Method::POST, "/v1/namespaces/alpha/sandboxes", Some(&dev), body).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_envelope(&r, "forbidden");
    answers.push(r.raw);
    let r = h.call(Method::GET, "/v1/namespaces/alpha/sandboxes", Some(&dev), Value::Null).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 2, "the refused create left nothing: {}", r.body);
    answers.push(r.raw);
    // Unknown secrets and bad deliveries are 400s.
    for body in [
        json!({"secrets": [{"name": "nope", "env": "X"}]}),
        json!({"secrets": [{"name": "db", "env": "X", "path": "/run/secrets/x"}]}),
        json!({"secrets": [{"name": "db", "path": "/etc/passwd"}]}),
        json!({"secrets": [{"name": "db", "path": "/run/secrets/../x"}]}),
        json!({"secrets": [{"name": "db", "env": "1BAD"}]}),
    ] {
        let r = h.call(Method::POST, "/v1/namespaces/alpha/sandboxes", Some(&dev), body.clone()).await;
        assert!(r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::FORBIDDEN, "{body}: {}", r.body);
        answers.push(r.raw);
    }
    let r = h.call(Method::GET, "/v1/namespaces/alpha/audit?limit=1000", Some(&owner), Value::Null).await;
    answers.push(r.raw);
    let r = h.call(Method::GET, "/v1/namespaces/alpha/logs", Some(&owner), Value::Null).await;
    answers.push(r.raw);

    // The value is in no answer, no log line, and not in the database's files.
    for a in &answers {
        assert!(!String::from_utf8_lossy(a).contains(&value), "an API answer carried the value");
    }
    let logged = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(logged.contains("sandbox"), "the log capture works");
    assert!(!logged.contains(&value), "the server logged the value");
    let data = h.state.config.data_dir.clone();
    for f in std::fs::read_dir(&data).unwrap().flatten() {
        if f.file_name().to_string_lossy().starts_with("bulkhead.db") {
            let bytes = std::fs::read(f.path()).unwrap();
            assert!(!bytes.windows(value.len()).any(|w| w == value.as_bytes()), "{:?} holds the value", f.path());
        }
    }
    let r = h.call(Method::DELETE, "/v1/namespaces/alpha/secrets/db", Some(&owner), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = h.call(Method::DELETE, "/v1/namespaces/alpha", Some(&h.admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
}
