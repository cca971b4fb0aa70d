//! Verification against a real OIDC provider (oauth2-mock-server under node, see `support/provider.rs`):
//! real discovery, real JWKS, real RS256/ES256 signatures, key rotation, and a corpus of JWT attacks that
//! must each be refused.
#![allow(clippy::unwrap_used)]

#[path = "support/provider.rs"]
mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bulkhead_core::outbound::OutboundPolicy;
use bulkhead_oidc::{IssuerUrl, OidcSettings, Outbound, OutboundConfig, Provider, ProviderOptions, VerifyError};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use support::TestProvider;

const AUDIENCE: &str = "bulkhead";

/// The test provider is on loopback: the operator allows it, the way a development server is started with
/// `--outbound-allow 127.0.0.0/8`.
fn client() -> Outbound {
    let policy = OutboundPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
    Outbound::new(OutboundConfig { policy, dns: None }).unwrap()
}

fn settings_for(issuer: &str) -> OidcSettings {
    OidcSettings { issuer: IssuerUrl::parse(issuer).unwrap(), audience: AUDIENCE.into(), groups_claim: "groups".into() }
}

fn provider_with(idp: &TestProvider, options: ProviderOptions) -> Provider {
    Provider::new(settings_for(idp.issuer()), client(), options)
}

fn provider(idp: &TestProvider) -> Provider {
    provider_with(idp, ProviderOptions::default())
}

/// A started test identity provider, and a provider of it that refetches the key set on every
/// unknown `kid`, with no minimum interval.
fn refetching_provider() -> (TestProvider, Provider) {
    let idp = TestProvider::start();
    let provider = provider_with(&idp, ProviderOptions { min_refetch_interval: Duration::ZERO, ..Default::default() });
    (idp, provider)
}

fn now_secs() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(segment: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(segment).unwrap()
}

fn segments(token: &str) -> (String, String, String) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a compact JWS");
    (parts[0].to_owned(), parts[1].to_owned(), parts[2].to_owned())
}

fn decode_json(segment: &str) -> Value {
    serde_json::from_slice(&unb64(segment)).unwrap()
}

fn good_claims(idp: &TestProvider) -> Value {
    json!({
        "iss": idp.issuer(),
        "aud": AUDIENCE,
        "sub": "alice",
        "email": "alice@example.com",
        "email_verified": true,
        "groups": ["dev", "ops"],
        "iat": now_secs(),
        "exp": now_secs() + 600,
    })
}

/// Verifies a token that must be refused, and checks that the error shows no part of the token.
async fn refuse(provider: &Provider, token: &str) -> VerifyError {
    let err = match provider.verify(token, SystemTime::now()).await {
        Ok(claims) => panic!("token accepted as {claims:?}"),
        Err(err) => err,
    };
    let shown = format!("{err} {err:?}");
    for segment in token.split('.').filter(|s| s.len() >= 8) {
        assert!(!shown.contains(segment), "error {shown:?} contains part of the token");
    }
    err
}

/// A local ES256 key the provider has never seen.
struct LocalKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl LocalKey {
    fn generate() -> LocalKey {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        LocalKey { pair, rng }
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let signature = self.pair.sign(&self.rng, input.as_bytes()).unwrap();
        format!("{input}.{}", b64(signature.as_ref()))
    }

    /// The public key as a JWK, `0x04 || x || y` split.
    fn jwk(&self, kid: &str) -> Value {
        let point = self.pair.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&point[1..33]), "y": b64(&point[33..65])})
    }
}

fn hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

// Just enough DER to write an RSA public key as the PEM texts a confused verifier would use as an HMAC key.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    if content.len() < 0x80 {
        out.push(u8::try_from(content.len()).unwrap());
    } else {
        let len = content.len().to_be_bytes();
        let len: Vec<u8> = len.iter().copied().skip_while(|b| *b == 0).collect();
        out.push(0x80 | u8::try_from(len.len()).unwrap());
        out.extend(len);
    }
    out.extend_from_slice(content);
    out
}

fn der_uint(big_endian: &[u8]) -> Vec<u8> {
    let mut bytes: Vec<u8> = big_endian.iter().copied().skip_while(|b| *b == 0).collect();
    if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        bytes.insert(0, 0);
    }
    der(0x02, &bytes)
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

#[tokio::test]
async fn a_good_rs256_token_yields_the_identity() {
    let idp = TestProvider::start();
    let provider = provider(&idp);
    let token = idp.mint(good_claims(&idp), None);
    assert_eq!(decode_json(&segments(&token).0)["alg"], "RS256");

    let claims = provider.verify(&token, SystemTime::now()).await.unwrap();
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.email.as_deref(), Some("alice@example.com"));
    assert!(claims.email_verified);
    assert_eq!(claims.groups, ["dev", "ops"]);
    assert_eq!(claims.raw["iss"], idp.issuer());

    // The keys are cached: a second token costs no fetch.
    let again = idp.mint(json!({"sub": "bob", "groups": "solo"}), None);
    let claims = provider.verify(&again, SystemTime::now()).await.unwrap();
    assert_eq!((claims.sub.as_str(), claims.groups.as_slice(), claims.email), ("bob", &["solo".to_owned()][..], None));
    assert_eq!((provider.discovery_fetches(), provider.jwks_fetches()), (1, 1));
    assert_eq!(idp.stats(), json!({"discovery_requests": 1, "jwks_requests": 1}));
}

#[tokio::test]
async fn unsigned_tokens_are_refused() {
    let idp = TestProvider::start();
    let provider = provider(&idp);
    let (_, payload, signature) = segments(&idp.mint(good_claims(&idp), None));
    let kid = idp.jwks()["keys"][0]["kid"].as_str().unwrap().to_owned();
    for header in [json!({"alg": "none"}), json!({"alg": "none", "kid": kid}), json!({"alg": "None", "typ": "JWT"})] {
        let header = b64(header.to_string().as_bytes());
        for token in [format!("{header}.{payload}."), format!("{header}.{payload}.{signature}")] {
            assert!(matches!(refuse(&provider, &token).await, VerifyError::Algorithm(_)));
        }
    }
    // Refused from the header alone: no attacker-made token makes us fetch.
    assert_eq!(provider.jwks_fetches(), 0);
}

#[tokio::test]
async fn hs256_keyed_with_the_providers_public_key_is_refused() {
    let idp = TestProvider::start();
    let provider = provider(&idp);
    provider.discover().await.unwrap();
    let jwk = idp.jwks()["keys"][0].clone();
    let kid = jwk["kid"].as_str().unwrap();
    let (n, e) = (unb64(jwk["n"].as_str().unwrap()), unb64(jwk["e"].as_str().unwrap()));

    let pkcs1 = der(0x30, &[der_uint(&n), der_uint(&e)].concat());
    let rsa_encryption =
        der(0x30, &[der(0x06, &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01]), der(0x05, &[])].concat());
    let spki = der(0x30, &[rsa_encryption, der(0x03, &[&[0u8][..], &pkcs1].concat())].concat());
    let spki_pem = pem("PUBLIC KEY", &spki);
    let secrets: Vec<Vec<u8>> = vec![
        spki_pem.clone().into_bytes(),
        spki_pem.trim_end().as_bytes().to_vec(),
        pem("RSA PUBLIC KEY", &pkcs1).into_bytes(),
        spki,
        n.clone(),
        jwk.to_string().into_bytes(),
    ];
    let claims = good_claims(&idp);
    for secret in &secrets {
        for header in [
            json!({"alg": "HS256", "kid": kid}),
            json!({"alg": "HS256"}),
            json!({"alg": "HS256", "typ": "JWT", "kid": kid}),
        ] {
            let token = hs256(secret, &header, &claims);
            assert_eq!(refuse(&provider, &token).await, VerifyError::Algorithm("HS256".into()));
        }
    }
    // Other families too, with the PEM as the key material where one is needed.
    for alg in ["HS384", "HS512", "PS256", "RS512", "ES384", "EdDSA"] {
        let token = hs256(spki_pem.as_bytes(), &json!({"alg": alg, "kid": kid}), &claims);
        assert_eq!(refuse(&provider, &token).await, VerifyError::Algorithm(alg.into()));
    }
}

#[tokio::test]
async fn validly_signed_tokens_with_wrong_claims_are_refused() {
    let idp = TestProvider::start();
    let provider = provider(&idp);
    let now = now_secs();
    let cases = [
        (json!({"iss": "http://127.0.0.1:1"}), VerifyError::Issuer),
        (json!({"iss": format!("{}/", idp.issuer())}), VerifyError::Issuer),
        (json!({"aud": "someone-else"}), VerifyError::Audience),
        (json!({"aud": ["someone-else", "another"]}), VerifyError::Audience),
        (json!({"exp": now - 3600, "iat": now - 7200, "nbf": now - 7200}), VerifyError::Expired),
        (json!({"exp": now - 61}), VerifyError::Expired),
        (json!({"nbf": now + 3600}), VerifyError::NotYetValid),
        (json!({"exp": null}), VerifyError::MissingClaim("exp")),
        (json!({"sub": null}), VerifyError::MissingClaim("sub")),
        (json!({"aud": null}), VerifyError::MissingClaim("aud")),
        (json!({"sub": ""}), VerifyError::InvalidClaim { claim: "sub", reason: "is empty" }),
    ];
    for (overrides, expected) in cases {
        let token = idp.mint(overrides.clone(), None);
        assert_eq!(refuse(&provider, &token).await, expected, "{overrides}");
    }
    // Inside the leeway is fine; `aud` may be a list that includes us.
    let within = idp.mint(json!({"exp": now - 30, "nbf": now + 30, "aud": ["other", AUDIENCE]}), None);
    provider.verify(&within, SystemTime::now()).await.unwrap();
    assert_eq!(provider.jwks_fetches(), 1);
}

#[tokio::test]
async fn a_key_missing_from_the_jwks_is_refused() {
    let (idp, provider) = refetching_provider();
    let local = LocalKey::generate();
    let claims = good_claims(&idp);

    let token = local.sign(&json!({"alg": "ES256", "kid": "local-key-1"}), &claims);
    assert_eq!(refuse(&provider, &token).await, VerifyError::UnknownKey { kid: Some("local-key-1".into()) });

    // Our key under the provider's kid: the kid names an RSA key, which cannot verify ES256.
    let provider_kid = idp.jwks()["keys"][0]["kid"].as_str().unwrap().to_owned();
    let token = local.sign(&json!({"alg": "ES256", "kid": provider_kid}), &claims);
    assert!(matches!(refuse(&provider, &token).await, VerifyError::KeyUnusable(_)));

    // Once the provider has an ES256 key, our key under that kid fails on the signature itself.
    let es_kid = idp.rotate("ES256", false);
    let token = local.sign(&json!({"alg": "ES256", "kid": es_kid}), &claims);
    assert_eq!(refuse(&provider, &token).await, VerifyError::BadSignature);
    // Our key embedded in the header is ignored: keys come only from the issuer's JWKS.
    let header = json!({"alg": "ES256", "kid": "local-key-2", "jwk": local.jwk("local-key-2")});
    assert!(matches!(refuse(&provider, &local.sign(&header, &claims)).await, VerifyError::UnknownKey { .. }));
}

#[tokio::test]
async fn a_valid_token_of_another_provider_is_refused() {
    let ours = TestProvider::start();
    let theirs = TestProvider::start();
    let provider = provider(&ours);
    provider.discover().await.unwrap();

    // Their token, claiming to be ours.
    let token = theirs.mint(good_claims(&ours), None);
    assert!(matches!(refuse(&provider, &token).await, VerifyError::UnknownKey { .. }));
    // Their key, under our key's kid.
    let our_kid = ours.jwks()["keys"][0]["kid"].as_str().unwrap().to_owned();
    let token = theirs.mint_with(json!({"claims": good_claims(&ours), "header": {"kid": our_kid}}));
    assert_eq!(refuse(&provider, &token).await, VerifyError::BadSignature);
    // Both are fine where they belong.
    provider.verify(&ours.mint(json!({}), None), SystemTime::now()).await.unwrap();
    let their_provider = provider_with(&theirs, ProviderOptions::default());
    their_provider.verify(&theirs.mint(json!({}), None), SystemTime::now()).await.unwrap();
}

#[tokio::test]
async fn tampered_tokens_are_refused() {
    let idp = TestProvider::start();
    let provider = provider(&idp);
    let token = idp.mint(good_claims(&idp), None);
    provider.verify(&token, SystemTime::now()).await.unwrap();
    let (header, payload, signature) = segments(&token);

    let mut claims = decode_json(&payload);
    for (claim, value) in [("sub", json!("admin")), ("groups", json!(["owners"])), ("exp", json!(now_secs() + 86_400))]
    {
        let original = claims[claim].clone();
        claims[claim] = value;
        let forged = format!("{header}.{}.{signature}", b64(claims.to_string().as_bytes()));
        assert_eq!(refuse(&provider, &forged).await, VerifyError::BadSignature, "{claim}");
        claims[claim] = original;
    }
    // A header edit (typ) changes the signed bytes too.
    let mut h = decode_json(&header);
    h["typ"] = json!("at+jwt");
    let forged = format!("{}.{payload}.{signature}", b64(h.to_string().as_bytes()));
    assert_eq!(refuse(&provider, &forged).await, VerifyError::BadSignature);
    // Another token's signature.
    let (_, _, other_signature) = segments(&idp.mint(json!({"sub": "mallory"}), None));
    assert_eq!(refuse(&provider, &format!("{header}.{payload}.{other_signature}")).await, VerifyError::BadSignature);
    // A flipped bit in the signature.
    let mut sig = unb64(&signature);
    sig[10] ^= 1;
    assert_eq!(refuse(&provider, &format!("{header}.{payload}.{}", b64(&sig))).await, VerifyError::BadSignature);
}

#[tokio::test]
async fn an_es256_key_added_by_rotation_is_fetched_on_its_first_token() {
    let (idp, provider) = refetching_provider();
    let old = idp.mint(good_claims(&idp), None);
    provider.verify(&old, SystemTime::now()).await.unwrap();
    assert_eq!(provider.jwks_fetches(), 1);

    let kid = idp.rotate("ES256", false);
    let token = idp.mint(good_claims(&idp), None);
    let header = decode_json(&segments(&token).0);
    assert_eq!((header["alg"].as_str(), header["kid"].as_str()), (Some("ES256"), Some(kid.as_str())));
    let claims = provider.verify(&token, SystemTime::now()).await.unwrap();
    assert_eq!(claims.sub, "alice");
    assert_eq!(provider.jwks_fetches(), 2, "the unknown kid caused exactly one refetch");
    // The old key is still published, so its tokens still verify, without another fetch.
    provider.verify(&old, SystemTime::now()).await.unwrap();
    assert_eq!(provider.jwks_fetches(), 2);
}

#[tokio::test]
async fn keys_dropped_by_rotation_stop_verifying_once_refetched() {
    let (idp, provider) = refetching_provider();
    let old_kid = idp.jwks()["keys"][0]["kid"].as_str().unwrap().to_owned();
    provider.verify(&idp.mint(good_claims(&idp), None), SystemTime::now()).await.unwrap();

    let new_kid = idp.rotate("RS256", true);
    assert_eq!(idp.jwks()["keys"].as_array().unwrap().len(), 1);
    // Until we refetch, the cached old key still verifies (the TTL bounds how long).
    let fresh_old = idp.mint(good_claims(&idp), Some(&old_kid));
    provider.verify(&fresh_old, SystemTime::now()).await.unwrap();

    // A token of the new key makes us refetch; after that the old key is gone.
    let fresh_new = idp.mint(good_claims(&idp), Some(&new_kid));
    provider.verify(&fresh_new, SystemTime::now()).await.unwrap();
    assert_eq!(provider.jwks_fetches(), 2);
    let fresh_old = idp.mint(good_claims(&idp), Some(&old_kid));
    match refuse(&provider, &fresh_old).await {
        // Long kids are cut to 64 characters in errors.
        VerifyError::UnknownKey { kid: Some(kid) } => assert!(kid.starts_with(&old_kid[..64]), "{kid}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_cannot_make_us_refetch_more_than_once_per_interval() {
    let idp = TestProvider::start();
    let interval = Duration::from_millis(1500);
    let provider = provider_with(&idp, ProviderOptions { min_refetch_interval: interval, ..Default::default() });
    provider.verify(&idp.mint(good_claims(&idp), None), SystemTime::now()).await.unwrap();
    assert_eq!(provider.jwks_fetches(), 1);

    let local = LocalKey::generate();
    let claims = good_claims(&idp);
    let forged: Vec<String> =
        (0..40).map(|i| local.sign(&json!({"alg": "ES256", "kid": format!("unknown-{i}")}), &claims)).collect();

    // Within the interval of the first fetch: no refetch at all.
    for token in &forged[..10] {
        assert!(matches!(refuse(&provider, token).await, VerifyError::UnknownKey { .. }));
    }
    assert_eq!(provider.jwks_fetches(), 1);

    // After it, a burst of concurrent unknown kids shares a single refetch.
    tokio::time::sleep(interval + Duration::from_millis(100)).await;
    let mut burst = tokio::task::JoinSet::new();
    for token in forged.into_iter().skip(10) {
        let provider = provider.clone();
        burst.spawn(async move { provider.verify(&token, SystemTime::now()).await });
    }
    while let Some(result) = burst.join_next().await {
        assert!(matches!(result.unwrap(), Err(VerifyError::UnknownKey { .. })));
    }
    assert_eq!(provider.jwks_fetches(), 2);
    assert_eq!(idp.stats()["jwks_requests"], 2, "the provider saw the same");

    // A real rotation is still picked up once the interval has passed again.
    let kid = idp.rotate("ES256", false);
    let token = idp.mint(good_claims(&idp), Some(&kid));
    assert!(matches!(refuse(&provider, &token).await, VerifyError::UnknownKey { .. }), "rate-limited");
    tokio::time::sleep(interval + Duration::from_millis(100)).await;
    provider.verify(&token, SystemTime::now()).await.unwrap();
    assert_eq!(provider.jwks_fetches(), 3);
}

#[tokio::test]
async fn a_token_without_kid_needs_a_single_key_set() {
    let (idp, provider) = refetching_provider();
    let request = json!({"claims": good_claims(&idp), "header": {"kid": null}});
    let token = idp.mint_with(request.clone());
    assert!(decode_json(&segments(&token).0).get("kid").is_none());
    provider.verify(&token, SystemTime::now()).await.unwrap();

    idp.rotate("RS256", false);
    // Refresh the cache so it holds both keys.
    provider.discover().await.unwrap();
    let token = idp.mint_with(request);
    assert_eq!(refuse(&provider, &token).await, VerifyError::MissingKeyId(2));
}

#[tokio::test]
async fn discovery_must_name_the_configured_issuer_exactly() {
    let idp = TestProvider::start();
    // The provider calls itself `http://127.0.0.1:PORT`; configured with a trailing slash, it is another
    // issuer.
    let provider = Provider::new(settings_for(&format!("{}/", idp.issuer())), client(), ProviderOptions::default());
    let err = refuse(&provider, &idp.mint(good_claims(&idp), None)).await;
    assert!(err.is_provider_failure());
    assert!(err.to_string().contains("names issuer"), "{err}");
    assert_eq!(provider.jwks_fetches(), 0, "no keys are taken from a provider that is not ours");
    let err = provider.discover().await.unwrap_err();
    assert!(err.to_string().contains("expected exactly"), "{err}");
}

#[tokio::test]
async fn an_unreachable_provider_is_a_provider_failure_and_is_not_hammered() {
    // Port 1 on loopback: nothing listens there.
    let provider = Provider::new(settings_for("http://127.0.0.1:1"), client(), ProviderOptions::default());
    let local = LocalKey::generate();
    let token = local.sign(&json!({"alg": "ES256", "kid": "k"}), &json!({"sub": "x"}));
    let err = refuse(&provider, &token).await;
    assert!(err.is_provider_failure(), "{err}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    let again = refuse(&provider, &token).await;
    assert!(again.to_string().contains("not retrying yet"), "{again}");
    assert_eq!(provider.discovery_fetches(), 1);
}

#[tokio::test]
async fn a_provider_on_loopback_is_never_contacted_without_an_allowed_range() {
    let idp = TestProvider::start();
    let strict = Outbound::new(OutboundConfig::default()).unwrap();
    let provider = Provider::new(settings_for(idp.issuer()), strict, ProviderOptions::default());
    let err = refuse(&provider, &idp.mint(good_claims(&idp), None)).await;
    assert!(err.is_provider_failure(), "{err}");
    assert!(err.to_string().contains("is a loopback address"), "{err}");
    assert_eq!(idp.stats(), json!({"discovery_requests": 0, "jwks_requests": 0}), "the provider saw no request");
}

/// The authorization request of a sign-in: the provider's own endpoint with PKCE, and the discovery
/// document fetched once for many sign-ins.
#[tokio::test]
async fn sign_ins_share_one_discovery_fetch() {
    let idp = TestProvider::start();
    let p = provider(&idp);
    let mut challenges = Vec::new();
    for _ in 0..3 {
        let pending = bulkhead_oidc::Pending::new().unwrap();
        let url = p.authorization_request("console", "http://127.0.0.1:1/cb", &pending).await.unwrap();
        assert!(url.as_str().starts_with(&format!("{}/authorize?", idp.issuer())), "{url}");
        let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["code_challenge"], bulkhead_oidc::challenge(&pending.verifier));
        assert_eq!(q["state"], pending.state);
        assert_eq!(q["nonce"], pending.nonce);
        challenges.push(q["code_challenge"].clone());
    }
    challenges.dedup();
    assert_eq!(challenges.len(), 3, "each sign-in has its own verifier");
    assert_eq!(p.discovery_fetches(), 1);
    assert_eq!(idp.stats()["discovery_requests"], 1);
}
