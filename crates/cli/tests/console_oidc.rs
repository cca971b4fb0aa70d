//! The console's sign-in through a namespace's OpenID Connect provider (authorization code with
//! PKCE), end to end with real parts: a real `bulkhead serve`, the real loopback test provider
//! (`testsupport/oidc-provider`, whose authorization endpoint signs a configured user in without a
//! form and whose token endpoint checks the PKCE verifier, the redirect URI and single use), and,
//! in the second test, Debian's headless Chromium driven by `testsupport/console/drive-oidc.mjs`.
//!
//! The first test walks the redirects itself (an HTTP client that follows none): the request
//! the server sends the browser to, the code exchange, the ID token handed to the console in the
//! URL fragment and usable as the API's bearer token; a replayed state, a wrong verifier, a wrong
//! nonce, a refusal at the provider and a user without a role each end on the sign-in page with
//! their message; a namespace that does not exist and one without a `client_id` answer the same.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../oidc/tests/support/provider.rs"]
mod oidc_provider;

use std::collections::HashMap;
use std::process::Command;

use common::process::Server;
use common::sdk::repo;
use oidc_provider::TestProvider;
use serde_json::{json, Value};

fn http() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// The `Location` of a redirect `r`, asserting its status.
fn location(r: &reqwest::Response, status: u16) -> String {
    assert_eq!(r.status(), status, "{r:?}");
    r.headers()["location"].to_str().unwrap().to_owned()
}

fn query(url: &str) -> HashMap<String, String> {
    reqwest::Url::parse(url).unwrap().query_pairs().into_owned().collect()
}

/// The server's namespaces `sso` (a provider with the console client `bulkhead`) and `plain` (the
/// same provider, no client id).
fn setup(server: &Server, provider: &TestProvider) {
    for ns in ["sso", "plain"] {
        server.ok(None, &["namespace", "create", ns]);
    }
    let base = ["identity", "set", "--issuer", provider.issuer(), "--audience", "bulkhead", "--map", "eng=developer"];
    let mut sso = base.to_vec();
    sso.extend(["--ns", "sso", "--client-id", "bulkhead"]);
    let shown = server.json(None, &sso);
    assert_eq!(shown["oidc"]["client_id"], "bulkhead", "{shown}");
    let mut plain = base.to_vec();
    plain.extend(["--ns", "plain"]);
    let shown = server.json(None, &plain);
    assert!(shown["oidc"].get("client_id").is_none(), "{shown}");
}

/// What a sign-in came to: the console URL it ended on, and the callback URL the browser was
/// sent back to (to replay it).
struct Walk {
    end: String,
    callback: Option<String>,
}

/// A browser's walk through a sign-in to `ns`: start, the provider, the callback.
async fn walk(http: &reqwest::Client, server: &Server, ns: &str) -> Walk {
    let start =
        http.get(format!("{}/console/oidc/start", server.url)).query(&[("namespace", ns)]).send().await.unwrap();
    let to = location(&start, 302);
    if to.starts_with("/console/") {
        return Walk { end: to, callback: None };
    }
    let at_provider = http.get(&to).send().await.unwrap();
    let callback = location(&at_provider, 302);
    assert!(callback.starts_with(&format!("{}/console/oidc/callback?", server.url)), "{callback}");
    let back = http.get(&callback).send().await.unwrap();
    let status = back.status().as_u16();
    assert!(status == 302 || status == 303, "{back:?}");
    let end = location(&back, status);
    assert!(end.starts_with("/console/#"), "{end}");
    Walk { end, callback: Some(callback) }
}

fn token_of(end: &str) -> String {
    let fragment = end.strip_prefix("/console/#sso?").unwrap_or_else(|| panic!("not signed in: {end}"));
    let p: HashMap<String, String> =
        reqwest::Url::parse(&format!("x:?{fragment}")).unwrap().query_pairs().into_owned().collect();
    assert_eq!(p["namespace"], "sso");
    p["token"].clone()
}

#[tokio::test]
async fn a_user_signs_in_through_the_namespaces_provider() {
    let provider = TestProvider::start();
    let dir = common::tempdir();
    let server = Server::start_with_args(
        &dir.path().join("data"),
        common::process::runtime_names(),
        &["--outbound-allow", "127.0.0.0/8"],
    );
    setup(&server, &provider);
    let http = http();
    provider.login(json!({"sub": "alice", "groups": ["eng"], "email": "alice@example.com"}), None);

    // The request the browser is sent to: the provider's authorization endpoint, with PKCE.
    let start = http.get(format!("{}/console/oidc/start?namespace=sso", server.url)).send().await.unwrap();
    let to = location(&start, 302);
    assert!(to.starts_with(&format!("{}/authorize?", provider.issuer())), "{to}");
    assert!(start.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    assert_eq!(start.headers()["cache-control"], "no-store");
    let q = query(&to);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "bulkhead");
    assert_eq!(q["scope"], "openid");
    assert_eq!(q["redirect_uri"], format!("{}/console/oidc/callback", server.url));
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert!(q["state"].len() >= 43 && q["nonce"].len() >= 43 && q["state"] != q["nonce"], "{q:?}");

    // The whole walk: the console gets the ID token in the fragment, and it is an API token.
    let signed_in = walk(&http, &server, "sso").await;
    let token = token_of(&signed_in.end);
    let stats = provider.login_stats();
    assert_eq!(stats["token_grants"], 1, "{stats}");
    assert_eq!(stats["token_refusals"], json!([]), "the server sent the right verifier, client and redirect URI");
    let p: Value = http
        .get(format!("{}/v1/namespaces/sso/permissions", server.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(p["role"], "developer", "{p}");
    assert_eq!(p["principal"], "user:alice", "{p}");
    let listed =
        http.get(format!("{}/v1/namespaces/sso/sandboxes", server.url)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(listed.status(), 200);
    // The token is the provider's: a namespace without single sign-on does not take it.
    server.ok(None, &["namespace", "create", "bare"]);
    let other =
        http.get(format!("{}/v1/namespaces/bare/sandboxes", server.url)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(other.status(), 401);

    // A replayed callback (same state, same code) is refused before the provider is asked again.
    let replay = http.get(signed_in.callback.as_deref().unwrap()).send().await.unwrap();
    assert_eq!(location(&replay, 302), "/console/#signin-error=expired");
    assert_eq!(provider.login_stats()["token_requests"], 1);
    // A made-up state, and none at all.
    for q in ["?state=nothing&code=x", "?code=x", "", "?state=%ff%fe&code=%00", "?state&state=x&code"] {
        let r = http.get(format!("{}/console/oidc/callback{q}", server.url)).send().await.unwrap();
        assert_eq!(location(&r, 302), "/console/#signin-error=expired", "{q}");
    }

    // The provider checks the verifier: bound to another challenge, the server's verifier fails.
    provider.login(json!({"sub": "alice", "groups": ["eng"]}), Some("challenge"));
    assert_eq!(walk(&http, &server, "sso").await.end, "/console/#signin-error=provider");
    assert_eq!(provider.login_stats()["token_refusals"], json!(["code_verifier"]));

    // An ID token with another nonce is refused, though its signature, issuer and audience are right.
    provider.login(json!({"sub": "alice", "groups": ["eng"]}), Some("nonce"));
    assert_eq!(walk(&http, &server, "sso").await.end, "/console/#signin-error=token");
    assert_eq!(provider.login_stats()["token_grants"], 2);

    // The provider refuses the user; a user of no mapped group.
    provider.login(json!({"sub": "alice", "groups": ["eng"]}), Some("refuse"));
    assert_eq!(walk(&http, &server, "sso").await.end, "/console/#signin-error=refused");
    provider.login(json!({"sub": "bob", "groups": ["sales"]}), None);
    assert_eq!(walk(&http, &server, "sso").await.end, "/console/#signin-error=no_role");

    // No such namespace, no console client, no valid name: one answer, and the provider is not asked.
    let asked = provider.authorize_requests().len();
    let discovery = provider.stats()["discovery_requests"].clone();
    let mut answers = Vec::new();
    for ns in ["plain", "ghost", "Not A Name!", "", "\u{ff}\u{0}", &"a".repeat(10_000)] {
        let r =
            http.get(format!("{}/console/oidc/start", server.url)).query(&[("namespace", ns)]).send().await.unwrap();
        answers.push((r.status().as_u16(), location(&r, 302), r.headers().get("content-length").cloned()));
    }
    let none = http.get(format!("{}/console/oidc/start", server.url)).send().await.unwrap();
    answers.push((none.status().as_u16(), location(&none, 302), none.headers().get("content-length").cloned()));
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    assert_eq!(answers[0].1, "/console/#signin-error=unavailable");
    assert_eq!(provider.authorize_requests().len(), asked);
    assert_eq!(provider.stats()["discovery_requests"], discovery);

    // A bad client id is refused by the settings route.
    let out = server.cli(
        None,
        &[
            "identity",
            "set",
            "--ns",
            "sso",
            "--issuer",
            provider.issuer(),
            "--audience",
            "bulkhead",
            "--map",
            "eng=developer",
            "--client-id",
            "has space",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("client_id"), "{out:?}");
}

#[test]
fn a_user_signs_in_through_the_provider_in_headless_chromium() {
    let driver = repo().join("testsupport/console");
    assert!(
        driver.join("node_modules/playwright-core").is_dir(),
        "{} is missing: run scripts/sdk-deps --console",
        driver.join("node_modules").display()
    );
    assert!(std::path::Path::new("/usr/bin/chromium").exists(), "/usr/bin/chromium is missing: scripts/os-deps --test");
    let provider = TestProvider::start();
    let dir = common::tempdir();
    let server = Server::start_with_args(
        &dir.path().join("data"),
        common::process::runtime_names(),
        &["--outbound-allow", "127.0.0.0/8"],
    );
    setup(&server, &provider);
    provider.login(json!({"sub": "alice", "groups": ["eng"]}), None);
    // A sandbox of the namespace, for the signed-in user to see listed.
    let key = server.json(None, &["key", "create", "--ns", "sso", "dev", "--role", "developer"]);
    let sandbox = server.json(key["token"].as_str(), &["sandbox", "create", "--ns", "sso"]);
    let sandbox = sandbox["id"].as_str().unwrap().to_owned();
    let profile = dir.path().join("chromium");
    std::fs::create_dir(&profile).unwrap();

    let out = Command::new("node")
        .arg(driver.join("drive-oidc.mjs"))
        .current_dir(&driver)
        .env("BULKHEAD_URL", &server.url)
        .env("OIDC_ISSUER", provider.issuer())
        .env("BULKHEAD_NAMESPACE", "sso")
        .env("BULKHEAD_OTHER_NAMESPACE", "plain")
        .env("BULKHEAD_SANDBOX", &sandbox)
        .env("CHROMIUM_USER_DATA_DIR", &profile)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .output()
        .expect("node runs");
    let report = format!("{}{}", common::process::text(&out.stdout), common::process::text(&out.stderr));
    println!("{report}");
    assert!(out.status.success(), "the console's browser sign-in failed ({}):\n{report}", out.status);
    let passed: Vec<&str> = report.lines().filter_map(|l| l.strip_prefix("ok ")).collect();
    assert_eq!(
        passed,
        [
            "sign in through the namespace's provider",
            "signed in as the mapped role, the namespace's sandboxes listed",
            "the token is in this tab's sessionStorage and in no URL the browser sent or shows",
            "a namespace without sign-in ends on the sign-in page with a message",
            "nothing was refused by the CSP, nothing left the machine",
        ],
        "{report}"
    );
    let stats = provider.login_stats();
    assert_eq!(stats["token_grants"], 1, "{stats}");
    server.ok(key["token"].as_str(), &["sandbox", "delete", "--ns", "sso", &sandbox]);
}

#[tokio::test]
async fn the_callback_is_at_the_public_url() {
    let provider = TestProvider::start();
    let dir = common::tempdir();
    let data = dir.path().join("data");
    let registry = data.join("host-registry");
    let bad =
        Server::spawn(&data, common::process::runtime_names(), &registry, &["--public-url", "https://x.example/?q=1"]);
    assert!(bad.err().unwrap().contains("--public-url"));
    let server = Server::start_with_args(
        &data,
        common::process::runtime_names(),
        &["--outbound-allow", "127.0.0.0/8", "--public-url", "https://console.example.com/"],
    );
    setup(&server, &provider);
    let start = http().get(format!("{}/console/oidc/start?namespace=sso", server.url)).send().await.unwrap();
    let q = query(&location(&start, 302));
    // Never the request's Host: the operator's URL.
    assert_eq!(q["redirect_uri"], "https://console.example.com/console/oidc/callback");
}
