// The SDK against a real `bulkhead serve`: the server, namespace and keys come from the
// environment (BULKHEAD_URL, BULKHEAD_TOKEN of a developer, BULKHEAD_NAMESPACE,
// BULKHEAD_VIEWER_TOKEN, BULKHEAD_ADMIN_TOKEN), as crates/cli/tests/sdk_typescript.rs sets them.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { test } from "node:test";

import {
  ApiError,
  Client,
  ForbiddenError,
  InvalidRequestError,
  IsADirectoryError,
  NotFoundError,
  RateLimitedError,
  type ExecStreamEvent,
} from "../dist/index.js";

function env(name: string): string {
  const value = process.env[name];
  assert.ok(value, `${name} must be set`);
  return value;
}

const client = new Client();

test("the client takes its url, token and namespace from the environment", async () => {
  assert.equal(client.namespace, env("BULKHEAD_NAMESPACE"));
  assert.equal(client.transport.url, env("BULKHEAD_URL"));
  const health = await client.health();
  assert.equal(health.status, "ok");
});

test("the default url is the one bulkhead serve listens on", () => {
  const saved = process.env["BULKHEAD_URL"];
  delete process.env["BULKHEAD_URL"];
  try {
    assert.equal(new Client().transport.url, "http://127.0.0.1:7070");
  } finally {
    if (saved !== undefined) process.env["BULKHEAD_URL"] = saved;
  }
});

test("a retried create waits for its first attempt and makes one sandbox", async () => {
  const live = async () => {
    const ids = new Set<string>();
    for await (const s of client.sandboxes.list()) if (s.status !== "deleted") ids.add(s.id);
    return ids;
  };
  const before = await live();
  // Every attempt gives up on its answer long before a sandbox starts: the retries meet the
  // first attempt still running (409 with Retry-After), wait for it, and get what it made.
  const impatient = new Client({
    fetch: (input, init) => {
      const abort = new AbortController();
      const timer = setTimeout(() => abort.abort(), 50);
      return fetch(input, { ...init, signal: abort.signal }).finally(() => clearTimeout(timer));
    },
    retry: { attempts: 50, baseDelayMs: 20, maxDelayMs: 100 },
  });
  const sandbox = await impatient.sandboxes.create({ ttl_seconds: 600 });
  try {
    assert.equal(sandbox.status, "running");
    const made = [...(await live())].filter((id) => !before.has(id));
    assert.deepEqual(made, [sandbox.id]);
  } finally {
    await client.sandboxes.get(sandbox.id).then((s) => s.delete());
  }
  const after = [...(await live())].filter((id) => !before.has(id));
  assert.deepEqual(after, []);
});

test("create, exec, files and delete, with await using", async () => {
  let id: string;
  {
    await using sandbox = await client.sandboxes.create({ ttl_seconds: 600 });
    id = sandbox.id;
    assert.match(id, /^sbx_/);
    assert.equal(sandbox.status, "running");

    const r = await sandbox.exec(["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert.equal(r.exitCode, 3);
    assert.equal(r.stdout, "out\n");
    assert.equal(r.stderr, "err\n");
    assert.equal(r.timedOut, false);

    // stdin, as text and as bytes that are not UTF-8.
    assert.equal((await sandbox.exec("cat", { stdin: "héllo" })).stdout, "héllo");
    const bytes = new Uint8Array([0, 255, 254, 10]);
    assert.deepEqual((await sandbox.exec(["cat"], { stdin: bytes })).stdoutBytes, bytes);

    await sandbox.files.write("/tmp/dir/hello.txt", "hello, sandbox\n");
    assert.equal(await sandbox.files.readText("/tmp/dir/hello.txt"), "hello, sandbox\n");
    assert.equal((await sandbox.exec(["cat", "/tmp/dir/hello.txt"])).stdout, "hello, sandbox\n");
    await sandbox.files.write("/tmp/dir/run.sh", "#!/bin/sh\necho ran\n", { mode: "0755" });
    assert.equal((await sandbox.exec(["/tmp/dir/run.sh"])).stdout, "ran\n");
    const names = (await sandbox.files.list("/tmp/dir")).map((e) => e.name).sort();
    assert.deepEqual(names, ["hello.txt", "run.sh"]);
    // Paths inside the sandbox have their own error codes, each its class.
    await assert.rejects(sandbox.files.read("/tmp/dir"), IsADirectoryError);
    await assert.rejects(sandbox.files.read("/tmp/dir/nothing"), (e: unknown) => {
      assert.ok(e instanceof NotFoundError && e.message.includes("/tmp/dir/nothing"), String(e));
      return true;
    });

    const seen = [];
    for await (const s of client.sandboxes.list()) seen.push(s.id);
    assert.ok(seen.includes(id), `${id} is listed`);
  }
  // The scope's end deleted it.
  const gone = await client.sandboxes.get(id).then(
    (s) => s.status,
    (e: unknown) => e,
  );
  assert.ok(gone instanceof NotFoundError || gone !== "running", `the sandbox is ${String(gone)} after its scope`);
});

test("a streamed exec yields output as it comes, then the exit", async () => {
  await using sandbox = await client.sandboxes.create();
  const events: ExecStreamEvent[] = [];
  for await (const e of sandbox.execStream("for i in 1 2 3; do echo line $i; done; echo oops >&2; exit 7")) {
    events.push(e);
  }
  const last = events.at(-1);
  assert.ok(last && last.type === "exit");
  assert.equal(last.exitCode, 7);
  const text = (stream: string) =>
    events.flatMap((e) => (e.type === stream && "text" in e ? [e.text] : [])).join("");
  assert.equal(text("stdout"), "line 1\nline 2\nline 3\n");
  assert.equal(text("stderr"), "oops\n");
});

test("background processes take stdin and report their exit", async () => {
  await using sandbox = await client.sandboxes.create();
  const proc = await sandbox.processes.start(["sh", "-c", "read x; echo got $x; exit 4"]);
  assert.match(proc.id, /^prc_/);
  await proc.writeStdin("hi\n", { eof: true });
  const done = await proc.wait();
  assert.equal(done.exitCode, 4);
  assert.equal(done.stdout, "got hi\n");
  assert.equal((await proc.refresh()).status, "exited");
  // The same, typed, as last read.
  assert.equal(proc.status, "exited");
  assert.equal(proc.exitCode, 4);
  assert.ok(proc.pid > 0 && proc.pid === proc.info.pid, `pid ${proc.pid}`);
  const sleeper = await sandbox.processes.start(["sleep", "600"]);
  assert.equal(sleeper.status, "running");
  assert.equal(sleeper.exitCode, undefined);
  await sleeper.signal("SIGKILL");
  await sleeper.wait();
  await sleeper.refresh();
  assert.equal(sleeper.exitCode, 137);
  assert.ok((await sandbox.processes.list()).some((p) => p.id === proc.id));
});

test("every error code is its class, with code, message and request id", async () => {
  const missing = await client.sandboxes.get("sbx_00000000000000000000000000000000").catch((e: unknown) => e);
  assert.ok(missing instanceof NotFoundError, String(missing));
  assert.ok(missing instanceof ApiError);
  assert.equal(missing.status, 404);
  assert.equal(missing.code, "not_found");
  assert.ok(missing.requestId, "a request id");
  assert.match(missing.message, /not found/);

  const invalid = await client.sandboxes.create({ cpu_millis: 1 }).catch((e: unknown) => e);
  assert.ok(invalid instanceof InvalidRequestError, String(invalid));
  assert.equal(invalid.status, 400);
  assert.equal(invalid.code, "invalid_request");
  assert.match(invalid.message, /cpu_millis/);

  const viewer = new Client({ token: env("BULKHEAD_VIEWER_TOKEN") });
  const forbidden = await viewer.sandboxes.create().catch((e: unknown) => e);
  assert.ok(forbidden instanceof ForbiddenError, String(forbidden));
  assert.equal(forbidden.status, 403);
  assert.equal(forbidden.code, "forbidden");
  // What a viewer may do, it does.
  for await (const _ of viewer.sandboxes.list()) break;
});

test("a 50 MiB file goes in and out as streams, byte for byte", async () => {
  await using sandbox = await client.sandboxes.create();
  const size = 50 << 20;
  const chunk = 1 << 20;
  const sent = createHash("sha256");
  async function* source() {
    for (let at = 0; at < size; at += chunk) {
      const piece = randomBytes(chunk);
      sent.update(piece);
      yield new Uint8Array(piece);
    }
  }
  await sandbox.files.write("/tmp/big.bin", source());
  const expected = sent.digest("hex");

  const received = createHash("sha256");
  let length = 0;
  for await (const piece of await sandbox.files.readStream("/tmp/big.bin")) {
    received.update(piece);
    length += piece.length;
  }
  assert.equal(length, size);
  assert.equal(received.digest("hex"), expected);
  // And the sandbox itself sees the same bytes.
  const inside = await sandbox.exec(["sha256sum", "/tmp/big.bin"]);
  assert.equal(inside.stdout.split(" ")[0], expected);
});

test("a create whose answer is lost is retried with the same Idempotency-Key, and done once", async () => {
  const keys: string[] = [];
  let firstId: string | undefined;
  // The first create reaches the server, but its answer is lost on the way back.
  const flaky: typeof fetch = async (input, init) => {
    const url = String(input);
    const response = await fetch(input, init);
    if (init?.method === "POST" && url.endsWith("/sandboxes")) {
      keys.push(new Headers(init.headers).get("idempotency-key") ?? "");
      if (keys.length === 1) {
        firstId = ((await response.json()) as { id: string }).id;
        throw new TypeError("fetch failed: the connection was reset");
      }
    }
    return response;
  };
  const retrying = new Client({ fetch: flaky, retry: { baseDelayMs: 10 } });
  const before = new Set<string>();
  for await (const s of client.sandboxes.list()) before.add(s.id);

  await using sandbox = await retrying.sandboxes.create();
  assert.equal(keys.length, 2, "one retry");
  assert.ok(keys[0], "an Idempotency-Key was sent");
  assert.equal(keys[1], keys[0], "the retry reuses the key");
  assert.equal(sandbox.id, firstId, "the retry answers the sandbox the first attempt made");
  const created = [];
  for await (const s of client.sandboxes.list()) if (!before.has(s.id)) created.push(s.id);
  assert.deepEqual(created, [sandbox.id], "one sandbox was made");
});

test("a command is not retried: a lost exec answer is an error, not a second run", async () => {
  await using sandbox = await client.sandboxes.create();
  let calls = 0;
  const flaky: typeof fetch = async (input, init) => {
    const response = await fetch(input, init);
    if (String(input).endsWith("/exec")) {
      calls++;
      await response.arrayBuffer();
      throw new TypeError("fetch failed: the connection was reset");
    }
    return response;
  };
  const retrying = new Client({ fetch: flaky, retry: { baseDelayMs: 10 } });
  const same = await retrying.sandboxes.get(sandbox.id);
  await assert.rejects(same.exec(["true"]), /connection was reset/);
  assert.equal(calls, 1);
});

test("filesystems hold files and archives", async () => {
  const fs = await client.filesystems.create({ name: `sdk-${Date.now()}`, size_bytes: 64 << 20 });
  try {
    await fs.write("notes/a.txt", "alpha");
    assert.equal(await fs.readText("notes/a.txt"), "alpha");
    assert.deepEqual(
      (await fs.list("notes")).map((e) => e.name),
      ["a.txt"],
    );
    const tar = new Uint8Array(await new Response(await fs.exportArchive()).arrayBuffer());
    assert.ok(tar.length >= 1024, "a tar");
    await fs.remove("notes/a.txt");
    await assert.rejects(fs.read("notes/a.txt"), NotFoundError);
    const restored = await fs.importArchive(tar);
    assert.ok(restored.entries >= 1);
    assert.equal(await fs.readText("notes/a.txt"), "alpha");
  } finally {
    await fs.delete({ force: true });
  }
});

test("images, usage and audit are readable", async () => {
  const images = [];
  for await (const image of client.images.list()) images.push(image);
  assert.ok(images.length >= 1, "the default image is listed");
  const usage = await client.usage.get();
  assert.equal(usage.namespace, env("BULKHEAD_NAMESPACE"));
  assert.ok(usage.totals.sandbox_seconds >= 0);
  const admin = new Client({ token: env("BULKHEAD_ADMIN_TOKEN") });
  const verified = await admin.audit.verify();
  assert.equal(verified.ok, true);
  let records = 0;
  for await (const record of admin.audit.list()) {
    assert.ok(record.hash);
    records++;
  }
  assert.ok(records > 0);
});

test("the admin manages namespaces and keys", async () => {
  const admin = new Client({ token: env("BULKHEAD_ADMIN_TOKEN") });
  const names = [];
  for await (const ns of admin.namespaces.list()) names.push(ns.name);
  assert.ok(names.includes(env("BULKHEAD_NAMESPACE")));
  const key = await admin.keys.create({ name: `ci-${Date.now()}`, role: "viewer" });
  assert.ok(key.token);
  const keyed = new Client({ token: key.token });
  assert.equal((await keyed.namespaces.get(env("BULKHEAD_NAMESPACE"))).name, env("BULKHEAD_NAMESPACE"));
  await admin.keys.revoke(key.id);
  const revoked = await keyed.namespaces.get(env("BULKHEAD_NAMESPACE")).catch((e: unknown) => e);
  assert.ok(revoked instanceof ApiError && revoked.code === "unauthenticated", String(revoked));
});

test("an agent's task streams its messages, resuming after a cut with Last-Event-ID", async () => {
  const { readFile } = await import("node:fs/promises");
  const bundle = new Uint8Array(await readFile(env("BULKHEAD_AGENT_BUNDLE")));
  const agent = await client.agents.create(`echo-${Date.now()}`);
  const version = await client.agents.push(agent.name, bundle);
  assert.match(version.id, /^ver_/);
  assert.equal((await client.agents.deploy(agent.name, version.id)).active_version, version.id);
  const versions = [];
  for await (const v of client.agents.versions(agent.name)) versions.push(v.id);
  assert.deepEqual(versions, [version.id]);

  // The first stream's body is cut after its second event, before the turn can end; the SDK
  // opens it again after the last message it saw.
  const seqs: number[] = [];
  const resumedFrom: (string | null)[] = [];
  const seenAtResume: number[] = [];
  const cutting: typeof fetch = async (input, init) => {
    const response = await fetch(input, init);
    if (!String(input).includes("/messages")) return response;
    resumedFrom.push(new Headers(init?.headers).get("last-event-id"));
    seenAtResume.push(seqs.at(-1) ?? 0);
    if (resumedFrom.length > 1 || response.body === null) return response;
    let text = "";
    let sent = 0;
    const decoder = new TextDecoder();
    const encoder = new TextEncoder();
    const cut = new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        text += decoder.decode(chunk, { stream: true });
        const first = text.indexOf("\n\n");
        const second = first < 0 ? -1 : text.indexOf("\n\n", first + 2);
        if (second < 0) {
          controller.enqueue(encoder.encode(text.slice(sent)));
          sent = text.length;
          return;
        }
        // Up to the end of the second event, then the connection "resets".
        controller.enqueue(encoder.encode(text.slice(sent, second + 2)));
        controller.error(new TypeError("terminated: the connection was reset"));
      },
    });
    return new Response(response.body.pipeThrough(cut), response);
  };
  const watcher = new Client({ fetch: cutting });
  const task = await client.tasks.create({ agent: agent.name, message: "chunks 12" });
  assert.match(task.id, /^tsk_/);
  const watched = await watcher.tasks.get(task.id);

  const chunks: string[] = [];
  for await (const m of watched.stream()) {
    seqs.push(m.seq);
    if (m.type === "agent_message_chunk") {
      chunks.push((m.data as { content: { text: string } }).content.text);
    }
    if (m.type === "turn_end") break;
  }
  // Opened twice: from the start, then after the last message seen; and not again after the
  // loop stopped reading.
  assert.deepEqual(resumedFrom, ["0", String(seenAtResume[1])]);
  assert.deepEqual(seqs, seqs.map((_, i) => i + 1), "every message once, in order, from 1");
  assert.deepEqual(chunks, Array.from({ length: 12 }, (_, i) => String(i)));

  // A page of the same messages, then the task is cancelled.
  const page = await task.messages({ limit: 1000 });
  assert.deepEqual(page.items.slice(0, seqs.length).map((m) => m.seq), seqs);
  assert.equal((await task.cancel()).status, "cancelled");
  await client.agents.delete(agent.name).catch(() => undefined);
});

test("GETs refused by the rate limit are retried after Retry-After; without retries the class says so", async () => {
  const admin = new Client({ token: env("BULKHEAD_ADMIN_TOKEN") });
  const name = `sdk-limited-${Date.now() % 100000}`;
  await admin.namespaces.create({
    name,
    quotas: {
      cpu_millis: 1000,
      memory_bytes: 256 << 20,
      disk_bytes: 256 << 20,
      max_sandboxes: 1,
      pids_per_sandbox: 64,
      max_sandbox_ttl_seconds: 600,
      api_requests_per_second: 1,
    },
  });
  try {
    const key = await admin.keys.create({ name: "reader", role: "viewer" }, { namespace: name });
    // A burst of one second's worth (one request): of four at once, some are refused.
    const once = new Client({ token: key.token, namespace: name, retry: { attempts: 1 } });
    const results = await Promise.allSettled([1, 2, 3, 4].map(() => once.namespaces.get(name)));
    const refused = results.flatMap((r) => (r.status === "rejected" ? [r.reason as unknown] : []));
    assert.ok(refused.length >= 1, "the bucket refused some");
    for (const e of refused) {
      assert.ok(e instanceof RateLimitedError, String(e));
      assert.equal(e.status, 429);
      assert.ok(e.retryAfter !== undefined && e.retryAfter >= 1, `Retry-After: ${String(e.retryAfter)}`);
    }
    // Retried after Retry-After, every one of them is answered.
    const patient = new Client({ token: key.token, namespace: name, retry: { attempts: 10 } });
    const answers = await Promise.all([1, 2, 3].map(() => patient.namespaces.get(name)));
    assert.deepEqual(answers.map((ns) => ns.name), [name, name, name]);
  } finally {
    await admin.namespaces.delete(name);
  }
});
