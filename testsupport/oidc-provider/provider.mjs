// Loopback OIDC provider for Bulkhead's tests: real discovery, real JWKS, real signatures.
//
// Built on oauth2-mock-server's OAuth2Issuer / OAuth2Service / HttpServer. Two loopback listeners:
//   issuer  (http://127.0.0.1:PORT)   the library's own routes: /.well-known/openid-configuration, /jwks, ...
//   control (http://127.0.0.1:PORT2)  test-only routes:
//     POST /mint    {"claims": {...}, "kid"?: "...", "expires_in"?: s, "header"?: {...}} -> {"token": "..."}
//                   claims override the defaults (iss, iat, nbf, exp, aud, sub); a claim set to null is
//                   removed, so tests can craft validly signed tokens that are expired, for another issuer,
//                   missing `exp`, ... `header` overrides header fields the same way (e.g. {"kid": null}).
//                   `kid` picks any key ever made here, including ones dropped from the JWKS.
//     POST /rotate  {"alg": "RS256"|"ES256", "drop_old"?: bool} -> {"kid": "..."}  adds a signing key to the
//                   published JWKS (and with drop_old removes every other key from it); becomes the default.
//     GET  /jwks    the published public JWKS (the same document as the issuer's /jwks)
//     GET  /stats   {"discovery_requests": n, "jwks_requests": n} served by the issuer listener
//     GET  /login-stats  {"authorize_requests": n, "token_requests": n, "token_grants": n,
//                   "token_refusals": ["why", ...]} of the authorization code flow below
//     POST /login   {"claims": {...}, "tamper"?: null|"refuse"|"nonce"|"challenge"} -> {}  the user the
//                   authorization endpoint signs in, without a form (auto-approve): its claims go into the
//                   ID token over the defaults. `tamper` makes one part go wrong for tests: "refuse" answers
//                   the browser with error=access_denied, "nonce" puts another nonce in the ID token,
//                   "challenge" keeps another code challenge than the one sent (so the right verifier fails).
//     GET  /authorize-requests  the query of every authorization request so far, in order
//
// The issuer listener also serves the authorization code flow with PKCE (RFC 7636, S256 only) itself:
//   GET  /authorize  response_type=code, client_id, redirect_uri, state, nonce, code_challenge,
//                    code_challenge_method=S256; 302 to redirect_uri?code&state (400 on a bad request)
//   POST /token      grant_type=authorization_code, code, client_id, redirect_uri, code_verifier (form);
//                    a code is single-use and bound to its client_id, redirect_uri and challenge; answers
//                    {"id_token", "access_token", "token_type", "expires_in"} or 400 {"error": "invalid_grant"}
//
// Usage: node provider.mjs [--port N] [--control-port N] [--alg RS256|ES256]
// Prints one JSON line when ready: {"issuer": "http://127.0.0.1:PORT", "control": "http://127.0.0.1:PORT2"}
// Exits when stdin closes (so a killed test never leaves it behind), on SIGTERM and on SIGINT.

import { createHash, randomUUID } from "node:crypto";
import { createServer } from "node:http";
import { HttpServer, OAuth2Issuer, OAuth2Service } from "oauth2-mock-server";

const HOST = "127.0.0.1";
const DEFAULT_AUDIENCE = "bulkhead";
const DEFAULT_SUBJECT = "user-1";
const MAX_BODY = 64 * 1024;

function parseArgs(argv) {
  const opts = { port: 0, controlPort: 0, alg: "RS256" };
  for (let i = 0; i < argv.length; i += 1) {
    const value = argv[i + 1];
    switch (argv[i]) {
      case "--port":
        opts.port = Number.parseInt(value, 10);
        i += 1;
        break;
      case "--control-port":
        opts.controlPort = Number.parseInt(value, 10);
        i += 1;
        break;
      case "--alg":
        opts.alg = value;
        i += 1;
        break;
      default:
        throw new Error(`unknown argument ${argv[i]}`);
    }
  }
  return opts;
}

const SUPPORTED_ALGS = new Set(["RS256", "ES256"]);
const opts = parseArgs(process.argv.slice(2));
if (!SUPPORTED_ALGS.has(opts.alg)) throw new Error(`unsupported --alg ${opts.alg}`);

// Every key ever generated lives in `signer`, so tokens can still be minted with a key after it was
// dropped from the published JWKS. The published JWKS is the key store of `published.issuer`, served by the
// library's own OAuth2Service; dropping keys replaces that issuer/service pair (the library's key store can
// add keys but not remove them).
const signer = new OAuth2Issuer();
let published = null;
let newestKid = null;
const stats = { discovery_requests: 0, jwks_requests: 0 };
const loginStats = {
  authorize_requests: 0,
  token_requests: 0,
  token_grants: 0,
  token_refusals: [],
};
// The auto-approved user of the authorization endpoint, and the codes it has issued.
let login = { claims: {}, tamper: null };
const codes = new Map();
const authorizeRequests = [];

function newPublished(url) {
  const issuer = new OAuth2Issuer();
  issuer.url = url;
  return { issuer, service: new OAuth2Service(issuer) };
}

async function rotate(alg, dropOld) {
  if (!SUPPORTED_ALGS.has(alg)) throw new HttpError(400, `unsupported alg ${JSON.stringify(alg)}`);
  const jwk = await signer.keys.generate(alg);
  if (dropOld) published = newPublished(signer.url);
  await published.issuer.keys.add(jwk);
  newestKid = jwk.kid;
  return jwk.kid;
}

function applyOverrides(target, overrides) {
  for (const [name, value] of Object.entries(overrides)) {
    if (value === null) delete target[name];
    else target[name] = value;
  }
}

async function mint(body) {
  const claims = body.claims ?? {};
  const header = body.header ?? {};
  if (typeof claims !== "object" || Array.isArray(claims)) throw new HttpError(400, "claims must be an object");
  if (typeof header !== "object" || Array.isArray(header)) throw new HttpError(400, "header must be an object");
  const kid = body.kid ?? newestKid;
  if (signer.keys.toJSON().every((k) => k.kid !== kid)) throw new HttpError(400, `unknown kid ${kid}`);
  const expiresIn = body.expires_in ?? 3600;
  return signer.buildToken({
    kid,
    expiresIn,
    scopesOrTransform: (tokenHeader, payload) => {
      payload.aud = DEFAULT_AUDIENCE;
      payload.sub = DEFAULT_SUBJECT;
      applyOverrides(payload, claims);
      applyOverrides(tokenHeader, header);
    },
  });
}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function readJson(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on("data", (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        reject(new HttpError(413, "body too large"));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => {
      const text = Buffer.concat(chunks).toString("utf8");
      if (text.length === 0) {
        resolve({});
        return;
      }
      try {
        resolve(JSON.parse(text));
      } catch {
        reject(new HttpError(400, "malformed JSON"));
      }
    });
    req.on("error", reject);
  });
}

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

function readForm(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on("data", (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        reject(new HttpError(413, "body too large"));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => resolve(new URLSearchParams(Buffer.concat(chunks).toString("utf8"))));
    req.on("error", reject);
  });
}

const s256 = (verifier) => createHash("sha256").update(verifier).digest("base64url");

function authorize(req, res) {
  loginStats.authorize_requests += 1;
  const q = new URL(req.url, "http://x").searchParams;
  authorizeRequests.push(Object.fromEntries(q));
  const redirect = q.get("redirect_uri");
  const bad = ["response_type", "client_id", "redirect_uri", "state", "nonce", "code_challenge"].find((k) => !q.get(k));
  if (bad || q.get("response_type") !== "code" || q.get("code_challenge_method") !== "S256") {
    return send(res, 400, { error: "invalid_request", missing: bad ?? null });
  }
  const back = new URL(redirect);
  if (login.tamper === "refuse") {
    back.searchParams.set("error", "access_denied");
  } else {
    const code = randomUUID();
    const challenge = login.tamper === "challenge" ? s256("another verifier entirely, not the client's") : q.get("code_challenge");
    codes.set(code, {
      clientId: q.get("client_id"),
      redirectUri: redirect,
      challenge,
      nonce: q.get("nonce"),
      claims: login.claims,
      tamper: login.tamper,
    });
    back.searchParams.set("code", code);
  }
  back.searchParams.set("state", q.get("state"));
  res.writeHead(302, { location: back.href, "cache-control": "no-store" });
  res.end();
}

async function token(req, res) {
  loginStats.token_requests += 1;
  const form = await readForm(req);
  const refuse = (why) => {
    loginStats.token_refusals.push(why);
    return send(res, 400, { error: "invalid_grant" });
  };
  if (form.get("grant_type") !== "authorization_code") return refuse("grant_type");
  const code = form.get("code") ?? "";
  const issued = codes.get(code);
  // Single use: whatever follows, the code is spent.
  codes.delete(code);
  if (!issued) return refuse("code");
  if (form.get("client_id") !== issued.clientId) return refuse("client_id");
  if (form.get("redirect_uri") !== issued.redirectUri) return refuse("redirect_uri");
  const verifier = form.get("code_verifier") ?? "";
  if (!/^[A-Za-z0-9._~-]{43,128}$/.test(verifier) || s256(verifier) !== issued.challenge) return refuse("code_verifier");
  const nonce = issued.tamper === "nonce" ? "not-the-clients-nonce" : issued.nonce;
  const idToken = await mint({ claims: { aud: issued.clientId, nonce, ...issued.claims } });
  loginStats.token_grants += 1;
  return send(res, 200, { id_token: idToken, access_token: randomUUID(), token_type: "Bearer", expires_in: 3600 });
}

async function control(req, res) {
  const route = `${req.method} ${new URL(req.url, "http://x").pathname}`;
  switch (route) {
    case "POST /mint":
      return send(res, 200, { token: await mint(await readJson(req)) });
    case "POST /rotate": {
      const body = await readJson(req);
      return send(res, 200, { kid: await rotate(body.alg ?? "RS256", body.drop_old === true) });
    }
    case "GET /jwks":
      return send(res, 200, { keys: published.issuer.keys.toJSON() });
    case "GET /stats":
      return send(res, 200, stats);
    case "GET /login-stats":
      return send(res, 200, loginStats);
    case "POST /login": {
      const body = await readJson(req);
      const claims = body.claims ?? {};
      if (typeof claims !== "object" || Array.isArray(claims)) throw new HttpError(400, "claims must be an object");
      login = { claims, tamper: body.tamper ?? null };
      return send(res, 200, {});
    }
    case "GET /authorize-requests":
      return send(res, 200, authorizeRequests);
    default:
      throw new HttpError(404, `no route ${route}`);
  }
}

// The issuer listener delegates to the current published service, counting discovery and JWKS requests.
const issuerServer = new HttpServer((req, res) => {
  const path = new URL(req.url, "http://x").pathname;
  if (path === "/.well-known/openid-configuration") stats.discovery_requests += 1;
  if (path === "/jwks") stats.jwks_requests += 1;
  if (req.method === "GET" && path === "/authorize") {
    try {
      return authorize(req, res);
    } catch (err) {
      return send(res, 400, { error: "invalid_request", why: String(err.message) });
    }
  }
  if (req.method === "POST" && path === "/token") {
    return token(req, res).catch((err) => {
      const status = err instanceof HttpError ? err.status : 500;
      if (status === 500) console.error("oidc-provider:", err);
      send(res, status, { error: err.message });
    });
  }
  published.service.requestHandler(req, res);
});
const controlServer = createServer((req, res) => {
  control(req, res).catch((err) => {
    const status = err instanceof HttpError ? err.status : 500;
    if (status === 500) console.error("oidc-provider:", err);
    send(res, status, { error: err.message });
  });
});

await issuerServer.start(opts.port, HOST);
// The library names a loopback issuer `localhost`; Bulkhead accepts plain http only for loopback IPs.
signer.url = `http://${HOST}:${issuerServer.address().port}`;
published = newPublished(signer.url);
await rotate(opts.alg, false);
await new Promise((resolve, reject) => {
  controlServer.listen(opts.controlPort, HOST).on("listening", resolve).on("error", reject);
});

function shutdown() {
  process.exit(0);
}
process.stdin.on("end", shutdown);
process.stdin.on("close", shutdown);
process.stdin.on("error", shutdown);
process.stdin.resume();
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);

process.stdout.write(
  `${JSON.stringify({ issuer: signer.url, control: `http://${HOST}:${controlServer.address().port}` })}\n`,
);
