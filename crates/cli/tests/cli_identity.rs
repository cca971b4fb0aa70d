//! Secrets, policies and single sign-on through the real CLI against the real `bulkhead serve`:
//! `secret set|list|rm` (the value read from stdin or a file and never printed back),
//! `sandbox create --secret` (as an environment variable and as a file), `policy
//! add|list|rm|explain|schema`, and `identity get|set|clear`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Output;

use common::process::{text, Server};
use serde_json::{json, Value};

/// The value of the secret under test; no command but the sandbox's own `echo` may print it.
const VALUE: &str = "hunter2-s3cr3t-7f3a9c";
/// The content of the secret handed to the sandbox as a file.
const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBzzCCAXWgAwIBAgIU\n-----END CERTIFICATE-----\n";

/// Neither stream of `out` holds a secret's value.
fn quiet(out: &Output, args: &[&str]) {
    for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let t = text(bytes);
        assert!(
            !t.contains(VALUE) && !t.contains("MIIBzzCCAXWgAwIBAgIU"),
            "bulkhead {args:?} printed a value on {stream}: {t}"
        );
    }
}

/// Runs a command that must succeed and print no secret value; its stdout.
fn ok(server: &Server, token: Option<&str>, args: &[&str]) -> String {
    let out = server.cli(token, args);
    quiet(&out, args);
    assert!(out.status.success(), "bulkhead {args:?} failed: {}", text(&out.stderr));
    text(&out.stdout)
}

/// As [`ok`], with `--json`, parsed.
fn json_of(server: &Server, token: Option<&str>, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&ok(server, token, &all)).expect("--json prints JSON")
}

/// A command that must fail with one line on stderr and print no secret value; the line.
fn fails(server: &Server, token: Option<&str>, args: &[&str]) -> String {
    let out = server.cli(token, args);
    quiet(&out, args);
    assert!(!out.status.success(), "bulkhead {args:?} should have failed");
    let err = text(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line on error, got {err:?}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

#[test]
fn secrets_policies_and_identity_through_the_cli() {
    let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    // The identity provider below is on loopback, which the operator allows.
    let names = common::process::runtime_names();
    let mut server = Server::start_with_args(&dir.path().join("data"), names, &["--outbound-allow", "127.0.0.0/8"]);
    server.ok(None, &["namespace", "create", "acme", "--cpu", "2", "--memory", "2GiB"]);
    let k = server.json(None, &["key", "create", "--ns", "acme", "dev", "--role", "developer"]);
    let dev_token = k["token"].as_str().unwrap().to_owned();
    let dev_id = k["id"].as_str().unwrap().to_owned();
    let dev = Some(dev_token.as_str());
    // The namespace's owner manages its secrets, policies and single sign-on.
    let k = server.json(None, &["key", "create", "--ns", "acme", "boss", "--role", "owner"]);
    let owner_token = k["token"].as_str().unwrap().to_owned();
    let owner = Some(owner_token.as_str());

    // A secret from stdin: created, then replaced; the value is never printed back.
    let set = ["secret", "set", "--ns", "acme", "db"];
    let out = server.run(owner, &set, VALUE.as_bytes());
    quiet(&out, &set);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "created secret db\n");
    // One trailing newline (what `echo` adds) is not part of the value.
    let out = server.run(owner, &["secret", "set", "--ns", "acme", "db", "--json"], format!("{VALUE}\n").as_bytes());
    quiet(&out, &set);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["name"].as_str(), v["created"].as_bool()), (Some("db"), Some(false)), "{v}");
    assert!(v.get("value").is_none(), "{v}");
    // An empty value is refused before anything is sent, the trailing newline aside.
    let out = server.run(owner, &set, b"\n");
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.trim_end().lines().count() == 1, "{err:?}");
    assert!(err.starts_with("error: ") && err.contains("empty"), "{err}");
    // A second secret from a file, byte for byte.
    let pem = dir.path().join("tls.pem");
    std::fs::write(&pem, PEM).unwrap();
    let out = ok(&server, owner, &["secret", "set", "--ns", "acme", "tls", "--from-file", pem.to_str().unwrap()]);
    assert_eq!(out, "created secret tls\n");
    let err = fails(&server, owner, &["secret", "set", "--ns", "acme", "x", "--from-file", "/no/such/file"]);
    assert!(err.contains("/no/such/file"), "{err}");

    // Listing shows names and times, never values.
    let list = ok(&server, owner, &["secret", "list", "--ns", "acme"]);
    let header: Vec<&str> = list.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "ID", "CREATED", "UPDATED"], "{list}");
    assert!(list.lines().any(|l| l.starts_with("db ")) && list.lines().any(|l| l.starts_with("tls ")), "{list}");
    let secrets = json_of(&server, dev, &["secret", "list", "--ns", "acme"]);
    let mut names: Vec<&str> = secrets.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(names, ["db", "tls"], "{secrets}");

    // --secret is checked locally, with one clear line.
    let err = fails(&server, dev, &["sandbox", "create", "--ns", "acme", "--secret", "db=DB_PASSWORD"]);
    assert!(err.contains("NAME=env:VAR"), "{err}");
    let err = fails(&server, dev, &["sandbox", "create", "--ns", "acme", "--secret", "tls=path:/etc/tls.pem"]);
    assert!(err.contains("/run/secrets/"), "{err}");
    // A sandbox gets the secrets it names, by default: one in its environment, one as a file.
    let s = json_of(
        &server,
        dev,
        &[
            "sandbox",
            "create",
            "--ns",
            "acme",
            "--ttl",
            "10m",
            "--secret",
            "db=env:DB_PASSWORD",
            "--secret",
            "tls=path:/run/secrets/tls.pem",
        ],
    );
    let sbx = s["id"].as_str().unwrap().to_owned();
    assert_eq!(s["status"], "running", "{s}");
    let exec = ["exec", "--ns", "acme", &sbx, "--", "sh", "-c", "echo $DB_PASSWORD"];
    assert_eq!(server.ok(dev, &exec), format!("{VALUE}\n"));
    assert_eq!(server.ok(dev, &["exec", "--ns", "acme", &sbx, "--", "cat", "/run/secrets/tls.pem"]), PEM);
    // No audit record holds the value.
    ok(&server, owner, &["audit", "--ns", "acme"]);
    // A secret that does not exist is refused.
    let err = fails(&server, dev, &["sandbox", "create", "--ns", "acme", "--secret", "nope=env:NOPE"]);
    assert!(err.contains("nope"), "{err}");

    // rm: gone from the list.
    assert_eq!(ok(&server, owner, &["secret", "rm", "--ns", "acme", "tls"]), "deleted secret tls\n");
    let list = ok(&server, owner, &["secret", "list", "--ns", "acme"]);
    assert!(!list.contains("tls") && list.lines().any(|l| l.starts_with("db ")), "{list}");
    fails(&server, owner, &["secret", "rm", "--ns", "acme", "tls"]);

    // Policies: a bad one is refused with Cedar's message on one line.
    let bad = r#"permit(principal, action == Bulkhead::Action::"sandbox.launch", resource);"#;
    let err = fails(&server, owner, &["policy", "add", "--ns", "acme", "bad", "--policy", bad]);
    assert!(err.contains("schema") && err.contains("sandbox.launch"), "{err}");
    let err = fails(
        &server,
        owner,
        &["policy", "add", "--ns", "acme", "bad", "--policy", "permit(principal, action, resource"],
    );
    assert!(err.contains("does not parse"), "{err}");

    // A forbid, from a file: exec is denied, and explain names the policy.
    let noexec = r#"forbid(principal, action == Bulkhead::Action::"sandbox.exec", resource);"#;
    let file = dir.path().join("noexec.cedar");
    std::fs::write(&file, format!("{noexec}\n")).unwrap();
    let id = ok(&server, owner, &["policy", "add", "--ns", "acme", "no-exec", "--file", file.to_str().unwrap()]);
    let id = id.trim_end().to_owned();
    assert!(id.starts_with("pol_"), "{id}");
    let err = fails(&server, dev, &exec);
    assert!(err.contains("forbidden"), "{err}");
    let explain = [
        "policy",
        "explain",
        "--ns",
        "acme",
        "--principal",
        &format!("key:{dev_id}"),
        "--action",
        "sandbox.exec",
        "--resource",
        &format!("sandbox:{sbx}"),
    ];
    let out = ok(&server, owner, &explain);
    assert_eq!(out.lines().next(), Some("deny"), "{out}");
    assert!(out.contains(&id), "{out}");
    let r = json_of(&server, owner, &explain);
    assert_eq!((r["decision"].as_str(), &r["policies"]), (Some("deny"), &json!([id])), "{r}");
    // The platform admin asking sees the same decision: the namespace's policies, not the
    // built-ins alone that decide the admin's own requests. Checked at the end.
    let admin_view = json_of(&server, None, &explain);

    // list shows it, with the first line of its text; rm lifts it.
    let list = ok(&server, owner, &["policy", "list", "--ns", "acme"]);
    let header: Vec<&str> = list.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["ID", "NAME", "CREATED", "POLICY"], "{list}");
    let row = list.lines().find(|l| l.starts_with(&id)).unwrap_or_else(|| panic!("{list}"));
    assert!(row.contains("no-exec") && row.ends_with(noexec), "{list}");
    let all = json_of(&server, owner, &["policy", "list", "--ns", "acme"]);
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    assert_eq!((all[0]["id"].as_str(), all[0]["name"].as_str()), (Some(id.as_str()), Some("no-exec")), "{all}");
    assert_eq!(ok(&server, owner, &["policy", "rm", "--ns", "acme", &id]), format!("removed policy {id}\n"));
    assert_eq!(json_of(&server, owner, &["policy", "list", "--ns", "acme"]), json!([]));
    let r = json_of(&server, owner, &explain);
    assert_eq!(r["decision"], "allow", "{r}");
    assert!(!r["policies"].as_array().unwrap().iter().any(|p| p == id.as_str()), "{r}");
    assert_eq!(server.ok(dev, &exec), format!("{VALUE}\n"));
    let schema = ok(&server, owner, &["policy", "schema"]);
    assert!(schema.contains("namespace Bulkhead") && schema.contains("sandbox.exec"), "{schema}");

    // Single sign-on: set, get, clear. The server only stores the provider; an unreachable
    // loopback issuer is fine.
    assert_eq!(json_of(&server, owner, &["identity", "get", "--ns", "acme"]), json!({ "oidc": null }));
    assert!(ok(&server, owner, &["identity", "get", "--ns", "acme"]).contains("off"));
    let set = [
        "identity",
        "set",
        "--ns",
        "acme",
        "--issuer",
        "http://127.0.0.1:9/",
        "--audience",
        "bulkhead",
        "--map",
        "eng=developer",
    ];
    let c = json_of(&server, owner, &set);
    let check = |c: &Value| {
        let o = &c["oidc"];
        assert_eq!(o["issuer"].as_str().map(|i| i.trim_end_matches('/')), Some("http://127.0.0.1:9"), "{c}");
        assert_eq!((o["audience"].as_str(), o["groups_claim"].as_str()), (Some("bulkhead"), Some("groups")), "{c}");
        assert_eq!(o["role_mappings"], json!({ "eng": "developer" }), "{c}");
    };
    check(&c);
    check(&json_of(&server, owner, &["identity", "get", "--ns", "acme"]));
    let shown = ok(&server, owner, &["identity", "get", "--ns", "acme"]);
    assert!(shown.contains("127.0.0.1:9") && shown.contains("eng=developer"), "{shown}");
    // A role that does not exist is refused locally, and nothing changes.
    let mut bad = set;
    bad[9] = "eng=root";
    let err = fails(&server, owner, &bad);
    assert!(err.contains("root") && err.contains("not a role"), "{err}");
    check(&json_of(&server, owner, &["identity", "get", "--ns", "acme"]));
    assert_eq!(json_of(&server, owner, &["identity", "clear", "--ns", "acme"]), json!({ "oidc": null }));
    assert_eq!(json_of(&server, owner, &["identity", "get", "--ns", "acme"]), json!({ "oidc": null }));

    assert_eq!(
        (admin_view["decision"].as_str(), &admin_view["policies"]),
        (Some("deny"), &json!([id])),
        "explain asked by the platform admin must decide with the namespace's policies: {admin_view}"
    );

    server.ok(None, &["namespace", "delete", "acme"]);
    server.stop();
}
