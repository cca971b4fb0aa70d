// A small coding agent that speaks the Agent Client Protocol (ACP) on its stdin and stdout, for
// Bulkhead's tasks. Each prompt runs a tool loop against an OpenAI-compatible chat completions
// API; the model may read and write files and run shell commands in the session's directory.
//
// stdout carries the protocol only: every log line goes to stderr.

import * as acp from "@agentclientprotocol/sdk";
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { Readable, Writable } from "node:stream";

// Anything that would print to stdout prints to stderr instead.
for (const name of ["log", "info", "debug"]) console[name] = console.error;

const AGENT_INFO = { name: "bulkhead-example-agent", title: "Bulkhead example agent", version: "0.1.0" };
const BASE_URL = (process.env.OPENAI_BASE_URL || "https://api.openai.com/v1").replace(/\/+$/, "");
const MODEL = process.env.OPENAI_MODEL || "gpt-4o-mini";
const MAX_MODEL_CALLS = 50;
const MODEL_TIMEOUT_MS = 300_000;
const RUN_TIMEOUT_MS = 120_000;
const OUTPUT_CAP = 64 * 1024;

// The task's state document keeps the sessions' histories, so that a task resumed in a new
// sandbox can load them.
const STATE_URL =
  process.env.BULKHEAD_URL && process.env.BULKHEAD_NAMESPACE && process.env.BULKHEAD_TASK_ID
    ? `${process.env.BULKHEAD_URL.replace(/\/+$/, "")}/v1/namespaces/${encodeURIComponent(
        process.env.BULKHEAD_NAMESPACE,
      )}/tasks/${encodeURIComponent(process.env.BULKHEAD_TASK_ID)}/state`
    : null;
const TOKEN_FILE = process.env.BULKHEAD_TOKEN_FILE || "/run/bulkhead/token";

const TOOLS = [
  {
    type: "function",
    function: {
      name: "read_file",
      description: "Read a text file. A relative path is relative to the working directory.",
      parameters: {
        type: "object",
        properties: { path: { type: "string", description: "The file to read." } },
        required: ["path"],
        additionalProperties: false,
      },
    },
  },
  {
    type: "function",
    function: {
      name: "write_file",
      description:
        "Create or replace a text file with the given content. A relative path is relative to the working directory.",
      parameters: {
        type: "object",
        properties: {
          path: { type: "string", description: "The file to write." },
          content: { type: "string", description: "The file's whole new content." },
        },
        required: ["path", "content"],
        additionalProperties: false,
      },
    },
  },
  {
    type: "function",
    function: {
      name: "run",
      description:
        "Run a shell command (sh -c) in the working directory and return its exit status and output (at most 64 KiB; killed after 120 s).",
      parameters: {
        type: "object",
        properties: { command: { type: "string", description: "The command line." } },
        required: ["command"],
        additionalProperties: false,
      },
    },
  },
];

const PERMISSION_OPTIONS = [
  { optionId: "allow_once", name: "Allow", kind: "allow_once" },
  { optionId: "allow_always", name: "Always allow", kind: "allow_always" },
  { optionId: "reject_once", name: "Reject", kind: "reject_once" },
];

class Cancelled extends Error {
  constructor() {
    super("cancelled");
  }
}

/** What the client said it can do, from `initialize`. */
let clientCapabilities = {};
/** sessionId → { cwd, messages, allowAlways: Set<kind>, turn: AbortController | null } */
const sessions = new Map();
/** Prompts being answered, so that shutdown can let them save their history. */
const running = new Set();

function systemPrompt(cwd) {
  return {
    role: "system",
    content:
      `You are a coding agent. You work in the directory ${cwd}. Use the tools to read and ` +
      "change files and to run commands such as tests; prefer small, careful changes. " +
      "When you are done, answer briefly with what you did.",
  };
}

function text(t) {
  return { type: "text", text: t };
}

function cap(s, limit = OUTPUT_CAP) {
  const bytes = Buffer.from(s, "utf8");
  if (bytes.length <= limit) return s;
  return `${bytes.subarray(0, limit).toString("utf8")}\n[truncated: ${bytes.length} bytes in all]`;
}

function promptText(blocks) {
  const parts = [];
  for (const block of blocks ?? []) {
    if (block.type === "text") parts.push(block.text);
    else if (block.type === "resource_link") parts.push(`[${block.name ?? "resource"}: ${block.uri}]`);
    else if (block.type === "resource" && typeof block.resource?.text === "string")
      parts.push(`Attached ${block.resource.uri}:\n${block.resource.text}`);
  }
  return parts.join("\n");
}

/** Rejects with Cancelled as soon as `signal` aborts; `promise` is left to settle unobserved. */
function unlessAborted(promise, signal) {
  if (signal.aborted) {
    promise.catch(() => {});
    return Promise.reject(new Cancelled());
  }
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(new Cancelled());
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}

// ---- the task's state document -------------------------------------------------------------

async function stateHeaders() {
  const token = (await readFile(TOKEN_FILE, "utf8")).trim();
  return { authorization: `Bearer ${token}`, accept: "application/json" };
}

async function getState() {
  const res = await fetch(STATE_URL, { headers: await stateHeaders() });
  if (!res.ok) throw new Error(`GET state: HTTP ${res.status}: ${(await res.text()).slice(0, 300)}`);
  const doc = await res.json();
  return { doc: doc && typeof doc === "object" && !Array.isArray(doc) ? doc : {}, etag: res.headers.get("etag") };
}

let saving = Promise.resolve();

/** Saves one session's history into the state document (serialized; retried on a lost race). */
function saveSession(sessionId, messages) {
  if (!STATE_URL) return Promise.resolve();
  const snapshot = JSON.parse(JSON.stringify(messages));
  saving = saving.then(async () => {
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const { doc, etag } = await getState();
        if (!doc.sessions || typeof doc.sessions !== "object") doc.sessions = {};
        doc.sessions[sessionId] = { messages: snapshot };
        const headers = { ...(await stateHeaders()), "content-type": "application/json" };
        if (etag) headers["if-match"] = etag;
        const res = await fetch(STATE_URL, { method: "PUT", headers, body: JSON.stringify(doc) });
        if (res.status === 412) continue;
        if (!res.ok) throw new Error(`PUT state: HTTP ${res.status}: ${(await res.text()).slice(0, 300)}`);
        return;
      } catch (err) {
        console.error(`saving session ${sessionId}: ${err.message}`);
        return;
      }
    }
    console.error(`saving session ${sessionId}: the state kept changing under us`);
  });
  return saving;
}

async function loadSessionMessages(sessionId) {
  if (!STATE_URL) return null;
  const { doc } = await getState();
  const messages = doc.sessions?.[sessionId]?.messages;
  return Array.isArray(messages) ? messages : null;
}

// ---- the model ------------------------------------------------------------------------------

async function chat(messages, signal) {
  const headers = { "content-type": "application/json" };
  // Normally the egress gateway adds the key: it never enters the sandbox.
  if (process.env.OPENAI_API_KEY) headers.authorization = `Bearer ${process.env.OPENAI_API_KEY}`;
  const controller = new AbortController();
  const abort = () => controller.abort();
  signal.addEventListener("abort", abort, { once: true });
  const timer = setTimeout(abort, MODEL_TIMEOUT_MS);
  try {
    const res = await fetch(`${BASE_URL}/chat/completions`, {
      method: "POST",
      headers,
      body: JSON.stringify({ model: MODEL, messages, tools: TOOLS }),
      signal: controller.signal,
    });
    const body = await res.text();
    if (!res.ok) throw new Error(`the model answered HTTP ${res.status}: ${body.slice(0, 500)}`);
    return JSON.parse(body);
  } catch (err) {
    if (signal.aborted) throw new Cancelled();
    if (controller.signal.aborted) throw new Error(`the model did not answer within ${MODEL_TIMEOUT_MS / 1000} s`);
    if (err instanceof TypeError && err.cause) {
      // fetch's own failures (DNS, connection refused, TLS) say what happened in their cause.
      throw new Error(`the model request to ${BASE_URL} failed: ${err.cause.message ?? err.cause}`);
    }
    throw err;
  } finally {
    clearTimeout(timer);
    signal.removeEventListener("abort", abort);
  }
}

// ---- tools ----------------------------------------------------------------------------------

function runCommand(command, cwd, signal) {
  return new Promise((resolve, reject) => {
    const env = { ...process.env };
    delete env.OPENAI_API_KEY;
    let child;
    try {
      child = spawn("sh", ["-c", command], { cwd, env, stdio: ["ignore", "pipe", "pipe"], detached: true });
    } catch (err) {
      reject(err);
      return;
    }
    const chunks = [];
    let kept = 0;
    let total = 0;
    let timedOut = false;
    let done = false;
    const onData = (data) => {
      total += data.length;
      if (kept < OUTPUT_CAP) {
        const part = data.subarray(0, OUTPUT_CAP - kept);
        chunks.push(part);
        kept += part.length;
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    const kill = () => {
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch {
        child.kill("SIGKILL");
      }
    };
    const timer = setTimeout(() => {
      timedOut = true;
      kill();
    }, RUN_TIMEOUT_MS);
    signal.addEventListener("abort", kill, { once: true });
    const finish = (code, sig) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      signal.removeEventListener("abort", kill);
      child.stdout.destroy();
      child.stderr.destroy();
      if (signal.aborted) {
        reject(new Cancelled());
        return;
      }
      let output = Buffer.concat(chunks).toString("utf8");
      if (total > kept) output += `\n[truncated: ${total} bytes in all]`;
      resolve({ code, signal: sig, timedOut, output });
    };
    child.on("error", (err) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      signal.removeEventListener("abort", kill);
      reject(err);
    });
    // A background child may keep the pipes open: do not wait for them long after the exit.
    child.on("exit", (code, sig) => setTimeout(() => finish(code, sig), 500));
    child.on("close", (code, sig) => finish(code, sig));
  });
}

async function readTextFile(client, sessionId, file) {
  if (clientCapabilities.fs?.readTextFile) {
    const res = await client.request(acp.methods.client.fs.readTextFile, { sessionId, path: file });
    return res.content;
  }
  return await readFile(file, "utf8");
}

async function writeTextFile(client, sessionId, file, content) {
  if (clientCapabilities.fs?.writeTextFile) {
    await client.request(acp.methods.client.fs.writeTextFile, { sessionId, path: file, content });
    return;
  }
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, content, "utf8");
}

function describeCall(name, args, cwd) {
  const where = (p) => (typeof p === "string" ? path.resolve(cwd, p) : undefined);
  switch (name) {
    case "read_file":
      return { title: `Read ${args?.path ?? "?"}`, kind: "read", file: where(args?.path) };
    case "write_file":
      return { title: `Write ${args?.path ?? "?"}`, kind: "edit", file: where(args?.path), ask: true };
    case "run": {
      const cmd = typeof args?.command === "string" ? args.command : "?";
      return { title: `Run ${cmd.length > 80 ? `${cmd.slice(0, 77)}...` : cmd}`, kind: "execute", ask: true };
    }
    default:
      return { title: `Unknown tool ${name}`, kind: "other" };
  }
}

/** Asks the client; "allowed", "refused" or throws Cancelled. */
async function askPermission(client, sessionId, session, toolCall, signal) {
  if (session.allowAlways.has(toolCall.kind)) return "allowed";
  const res = await unlessAborted(
    client.request(acp.methods.client.session.requestPermission, {
      sessionId,
      toolCall,
      options: PERMISSION_OPTIONS,
    }),
    signal,
  );
  if (res.outcome?.outcome === "cancelled") throw new Cancelled();
  switch (res.outcome?.optionId) {
    case "allow_always":
      session.allowAlways.add(toolCall.kind);
      return "allowed";
    case "allow_once":
      return "allowed";
    default:
      return "refused";
  }
}

/** Runs one tool call of the model, reporting it to the client; returns the tool's result. */
async function runToolCall(client, sessionId, session, call, signal) {
  const update = (u) => client.notify(acp.methods.client.session.update, { sessionId, update: u });
  const toolCallId = call.id;
  const name = call.function?.name;
  let args = null;
  let argsError = null;
  try {
    args = JSON.parse(call.function?.arguments || "{}");
  } catch (err) {
    argsError = err.message;
  }
  const { title, kind, file, ask } = describeCall(name, args, session.cwd);
  const locations = file ? [{ path: file }] : [];
  await update({ sessionUpdate: "tool_call", toolCallId, title, kind, status: "pending", locations, rawInput: args ?? {} });
  const fail = async (message) => {
    await update({ sessionUpdate: "tool_call_update", toolCallId, status: "failed", content: [{ type: "content", content: text(message) }] });
    return message;
  };
  if (argsError) return await fail(`error: the arguments are not JSON: ${argsError}`);
  if (kind === "other") return await fail(`error: there is no tool named ${name}`);
  for (const [key, type] of Object.entries(
    name === "write_file" ? { path: "string", content: "string" } : name === "run" ? { command: "string" } : { path: "string" },
  )) {
    if (typeof args?.[key] !== type) return await fail(`error: the argument ${key} must be a ${type}`);
  }
  try {
    if (ask) {
      const toolCall = { toolCallId, title, kind, status: "pending", locations, rawInput: args };
      if ((await askPermission(client, sessionId, session, toolCall, signal)) === "refused") {
        return await fail("the user refused");
      }
    }
    await update({ sessionUpdate: "tool_call_update", toolCallId, status: "in_progress" });
    if (name === "read_file") {
      const content = cap(await unlessAborted(readTextFile(client, sessionId, file), signal));
      await update({ sessionUpdate: "tool_call_update", toolCallId, status: "completed", content: [{ type: "content", content: text(content) }] });
      return content;
    }
    if (name === "write_file") {
      await unlessAborted(writeTextFile(client, sessionId, file, args.content), signal);
      await update({ sessionUpdate: "tool_call_update", toolCallId, status: "completed", content: [{ type: "diff", path: file, newText: args.content }] });
      return `wrote ${Buffer.byteLength(args.content)} bytes to ${file}`;
    }
    const r = await runCommand(args.command, session.cwd, signal);
    const head = r.timedOut
      ? `timed out after ${RUN_TIMEOUT_MS / 1000} s`
      : r.code === null
        ? `killed by ${r.signal}`
        : `exit code ${r.code}`;
    const result = `${head}\n${r.output}`;
    await update({
      sessionUpdate: "tool_call_update",
      toolCallId,
      status: r.timedOut ? "failed" : "completed",
      content: [{ type: "content", content: text(result) }],
      rawOutput: { exitCode: r.code, signal: r.signal, timedOut: r.timedOut },
    });
    return result;
  } catch (err) {
    if (err instanceof Cancelled || signal.aborted) {
      await fail("cancelled");
      throw new Cancelled();
    }
    return await fail(`error: ${err.message}`);
  }
}

/** Every assistant tool call needs a tool answer before the next model call. */
function closeToolCalls(messages) {
  for (let i = 0; i < messages.length; i++) {
    const m = messages[i];
    if (m.role !== "assistant" || !Array.isArray(m.tool_calls)) continue;
    const answered = new Set();
    let j = i + 1;
    for (; j < messages.length && messages[j].role === "tool"; j++) answered.add(messages[j].tool_call_id);
    const missing = m.tool_calls
      .filter((c) => !answered.has(c.id))
      .map((c) => ({ role: "tool", tool_call_id: c.id, content: "cancelled" }));
    messages.splice(j, 0, ...missing);
    i = j + missing.length - 1;
  }
}

// ---- the turn -------------------------------------------------------------------------------

async function turn(client, sessionId, session, prompt, signal) {
  const update = (u) => client.notify(acp.methods.client.session.update, { sessionId, update: u });
  const usage = { inputTokens: 0, outputTokens: 0 };
  session.messages.push({ role: "user", content: promptText(prompt) });
  let stopReason = "end_turn";
  try {
    for (let calls = 0; ; calls++) {
      if (calls >= MAX_MODEL_CALLS) {
        stopReason = "max_turn_requests";
        break;
      }
      const answer = await chat([systemPrompt(session.cwd), ...session.messages], signal);
      usage.inputTokens += answer.usage?.prompt_tokens ?? 0;
      usage.outputTokens += answer.usage?.completion_tokens ?? 0;
      const choice = answer.choices?.[0];
      if (!choice?.message) throw new Error("the model's answer has no message");
      const { content, tool_calls: toolCalls } = choice.message;
      const message = { role: "assistant", content: content ?? null };
      const calls_ = Array.isArray(toolCalls) ? toolCalls : [];
      calls_.forEach((c, i) => {
        if (!c.id) c.id = `call_${randomUUID()}_${i}`;
      });
      if (calls_.length) message.tool_calls = calls_;
      session.messages.push(message);
      if (content) await update({ sessionUpdate: "agent_message_chunk", content: text(content) });
      if (!calls_.length) {
        if (choice.finish_reason === "length") stopReason = "max_tokens";
        break;
      }
      for (const call of calls_) {
        const result = await runToolCall(client, sessionId, session, call, signal);
        session.messages.push({ role: "tool", tool_call_id: call.id, content: result });
      }
      if (signal.aborted) throw new Cancelled();
    }
  } catch (err) {
    if (!(err instanceof Cancelled) && !signal.aborted) throw err;
    stopReason = "cancelled";
  } finally {
    closeToolCalls(session.messages);
    await saveSession(sessionId, session.messages);
  }
  return {
    stopReason,
    usage: { inputTokens: usage.inputTokens, outputTokens: usage.outputTokens, totalTokens: usage.inputTokens + usage.outputTokens },
  };
}

// ---- the protocol ---------------------------------------------------------------------------

function newSession(cwd, messages = []) {
  return { cwd, messages, allowAlways: new Set(), turn: null };
}

const app = acp
  .agent({ name: AGENT_INFO.name })
  .onRequest(acp.methods.agent.initialize, ({ params }) => {
    clientCapabilities = params.clientCapabilities ?? {};
    return {
      protocolVersion: acp.PROTOCOL_VERSION,
      agentCapabilities: { loadSession: true },
      agentInfo: AGENT_INFO,
      authMethods: [],
    };
  })
  .onRequest(acp.methods.agent.session.new, ({ params }) => {
    const sessionId = `sess_${randomUUID()}`;
    sessions.set(sessionId, newSession(params.cwd));
    return { sessionId };
  })
  .onRequest(acp.methods.agent.session.load, async ({ params, client }) => {
    const { sessionId, cwd } = params;
    let messages = sessions.get(sessionId)?.messages ?? null;
    if (!messages) messages = await loadSessionMessages(sessionId);
    if (!messages) throw acp.RequestError.sessionNotFound(sessionId);
    const session = newSession(cwd, messages);
    sessions.get(sessionId)?.turn?.abort();
    sessions.set(sessionId, session);
    // Replay the conversation, then answer.
    for (const m of messages) {
      if (typeof m.content !== "string" || !m.content) continue;
      if (m.role === "user") {
        await client.notify(acp.methods.client.session.update, {
          sessionId,
          update: { sessionUpdate: "user_message_chunk", content: text(m.content) },
        });
      } else if (m.role === "assistant") {
        await client.notify(acp.methods.client.session.update, {
          sessionId,
          update: { sessionUpdate: "agent_message_chunk", content: text(m.content) },
        });
      }
    }
    return {};
  })
  .onRequest(acp.methods.agent.session.prompt, async ({ params, client }) => {
    const session = sessions.get(params.sessionId);
    if (!session) throw acp.RequestError.sessionNotFound(params.sessionId);
    session.turn?.abort();
    const controller = new AbortController();
    session.turn = controller;
    const work = turn(client, params.sessionId, session, params.prompt, controller.signal);
    running.add(work);
    try {
      return await work;
    } finally {
      running.delete(work);
      if (session.turn === controller) session.turn = null;
    }
  })
  .onNotification(acp.methods.agent.session.cancel, ({ params }) => {
    sessions.get(params.sessionId)?.turn?.abort();
  });

const connection = app.connect(acp.ndJsonStream(Writable.toWeb(process.stdout), Readable.toWeb(process.stdin)));

let stopping = false;
async function shutdown(code) {
  if (stopping) return;
  stopping = true;
  for (const s of sessions.values()) s.turn?.abort();
  // Let the turns save their history, briefly.
  await Promise.race([Promise.allSettled([...running]), new Promise((r) => setTimeout(r, 5000))]);
  await Promise.race([saving, new Promise((r) => setTimeout(r, 5000))]);
  process.exit(code);
}

connection.closed.then(
  () => shutdown(0),
  (err) => {
    console.error(`connection closed: ${err?.message ?? err}`);
    shutdown(1);
  },
);
process.on("SIGTERM", () => shutdown(0));
process.on("SIGINT", () => shutdown(0));
