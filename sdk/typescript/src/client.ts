/**
 * The Bulkhead client: `new Client({url, token, namespace})` and its resources.
 *
 * Resource objects (`SandboxInfo`, `TaskInfo`, ...) are the API's wire types, field for field
 * (snake_case), generated from the OpenAPI document. Request bodies are the API's too; options
 * of the SDK itself (`idempotencyKey`, `user`, `timeoutSeconds`) are camelCase.
 *
 * @module
 */

import { NotFoundError } from "./errors.js";
import { type Body, Transport, type RetryOptions } from "./http.js";
import { ndjson, type ServerSentEvent, serverSentEvents } from "./streams.js";
import type {
  Agent,
  AgentVersion,
  ArchiveResult,
  AuditRecord,
  AuditVerification,
  BuildImage,
  CreatedKey,
  CreateFilesystem,
  CreateKey,
  CreateNamespace,
  CreateSandbox,
  CreateTask,
  EventAccepted,
  ExecEvent,
  ExecRequest,
  ExecResult,
  FileEntry,
  FilesystemInfo,
  Health,
  Image,
  Key,
  Namespace,
  Page,
  ProcessEvent,
  ProcessInfo,
  PullImage,
  SandboxInfo,
  StdinResult,
  TaskInfo,
  TaskMessage,
  UpdateNamespace,
  UsageReport,
} from "./types.js";

/** How to reach the server. Each field defaults from the environment. */
export interface ClientOptions {
  /** The server's base URL; default `$BULKHEAD_URL`, else `http://127.0.0.1:7070`. */
  url?: string | undefined;
  /** The bearer token (an API key or an OIDC token); default `$BULKHEAD_TOKEN`. */
  token?: string | undefined;
  /** The namespace of namespaced calls; default `$BULKHEAD_NAMESPACE`. */
  namespace?: string | undefined;
  /** The `fetch` to use (default the global one). */
  fetch?: typeof fetch | undefined;
  /** Retries of idempotent requests (GETs, and creates with their `Idempotency-Key`). */
  retry?: RetryOptions | undefined;
}

/** Options of a create. */
export interface CreateOptions {
  /**
   * The `Idempotency-Key` to send. By default the SDK makes one per call and reuses it on
   * each retry, so a create whose answer was lost is not done twice.
   */
  idempotencyKey?: string | undefined;
}

/** The options of a call that may name another namespace than the client's. */
export interface NamespaceOptions {
  /** The namespace; default the client's. */
  namespace?: string | undefined;
}

const enc = encodeURIComponent;

// Node before 18.18 lacks `Symbol.asyncDispose`; TypeScript's `await using` looks it up by this
// registered name then.
(Symbol as { asyncDispose?: symbol }).asyncDispose ??= Symbol.for("Symbol.asyncDispose");

/** Every item of a paginated list, fetching the next page as the iteration reaches it. */
async function* paginate<T>(page: (cursor: string | undefined) => Promise<Page<T>>): AsyncGenerator<T> {
  let cursor: string | undefined;
  do {
    const p = await page(cursor);
    yield* p.items;
    cursor = p.next_cursor ?? undefined;
  } while (cursor !== undefined);
}

/** Collects an async iterable into an array. */
async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}

function base64(data: Uint8Array | string): string {
  return Buffer.from(typeof data === "string" ? new TextEncoder().encode(data) : data).toString("base64");
}

function unbase64(data: string): Uint8Array {
  return new Uint8Array(Buffer.from(data, "base64"));
}

/** A connection to one Bulkhead server with one token. */
export class Client {
  /** Sends the requests. */
  readonly transport: Transport;
  /** The namespace of namespaced calls, when one was given. */
  readonly namespace: string | undefined;
  /** Namespaces (the platform admin creates, updates and deletes them). */
  readonly namespaces: Namespaces;
  /** API keys of a namespace (owners and admins). */
  readonly keys: Keys;
  /** Sandboxes of the namespace. */
  readonly sandboxes: Sandboxes;
  /** Filesystems of the namespace. */
  readonly filesystems: Filesystems;
  /** Images of the namespace, and public ones. */
  readonly images: Images;
  /** Agents of the namespace and their versions. */
  readonly agents: Agents;
  /** Tasks: agents at work. */
  readonly tasks: Tasks;
  /** Metered usage of the namespace. */
  readonly usage: Usage;
  /** The namespace's hash-chained audit records. */
  readonly audit: Audit;

  constructor(options: ClientOptions = {}) {
    const env = typeof process === "undefined" ? {} : process.env;
    this.transport = new Transport({
      url: options.url ?? env["BULKHEAD_URL"] ?? "http://127.0.0.1:7070",
      token: options.token ?? env["BULKHEAD_TOKEN"],
      fetch: options.fetch,
      retry: options.retry,
    });
    this.namespace = options.namespace ?? env["BULKHEAD_NAMESPACE"];
    this.namespaces = new Namespaces(this);
    this.keys = new Keys(this);
    this.sandboxes = new Sandboxes(this);
    this.filesystems = new Filesystems(this);
    this.images = new Images(this);
    this.agents = new Agents(this);
    this.tasks = new Tasks(this);
    this.usage = new Usage(this);
    this.audit = new Audit(this);
  }

  /** The server's liveness and version (`GET /healthz`, no token needed). */
  health(): Promise<Health> {
    return this.transport.json("GET", "/healthz");
  }

  /** Every item of the paginated list at `path` (with `query`), fetching pages as they are reached. */
  listAll<T>(path: string, query: Record<string, string | number | boolean | undefined> = {}): AsyncGenerator<T> {
    return paginate((cursor) => this.transport.json("GET", path, { query: { ...query, cursor } }));
  }

  /** POSTs the create `spec` to `path` with an `Idempotency-Key` (the one given, else a new one), so it may be retried. */
  create<T>(path: string, spec: unknown, options: CreateOptions = {}): Promise<T> {
    return this.transport.json("POST", path, { json: spec, idempotencyKey: options.idempotencyKey ?? true });
  }

  /**
   * `/v1/namespaces/{ns}` + `rest` for `namespace`, else the client's.
   * @throws Error when neither names a namespace.
   */
  nsPath(rest: string, namespace?: string): string {
    const ns = namespace ?? this.namespace;
    if (ns === undefined) {
      throw new Error("no namespace: pass `namespace` to new Client() or set BULKHEAD_NAMESPACE");
    }
    return `/v1/namespaces/${enc(ns)}${rest}`;
  }
}

/**
 * A collection of the namespace (`/sandboxes`, `/filesystems`, `/tasks`) whose items the SDK
 * answers as handles made by `wrap`.
 */
abstract class Collection<Info, Handle> {
  constructor(
    readonly client: Client,
    readonly segment: string,
    readonly wrap: (client: Client, info: Info) => Handle,
  ) {}

  /** Creates one from `spec` (retried safely with an `Idempotency-Key`). */
  protected async createItem(spec: unknown, options: CreateOptions & NamespaceOptions): Promise<Handle> {
    const info = await this.client.create<Info>(this.client.nsPath(this.segment, options.namespace), spec, options);
    return this.wrap(this.client, info);
  }

  /** One by id. @throws NotFoundError */
  async get(id: string, options: NamespaceOptions = {}): Promise<Handle> {
    const path = this.client.nsPath(`${this.segment}/${enc(id)}`, options.namespace);
    return this.wrap(this.client, await this.client.transport.json<Info>("GET", path));
  }

  /** Every one of the namespace the token may see. */
  protected async *listItems(
    options: NamespaceOptions,
    query: Record<string, string | undefined> = {},
  ): AsyncGenerator<Handle> {
    for await (const info of this.client.listAll<Info>(this.client.nsPath(this.segment, options.namespace), query)) {
      yield this.wrap(this.client, info);
    }
  }
}

/** An item of the API as last read, at its path under `/v1`. */
abstract class Resource<Info extends { id: string }> {
  /** The item as last read (`refresh()` reads it again). */
  info: Info;

  constructor(
    readonly client: Client,
    /** The item's path (`/v1/namespaces/acme/sandboxes/sbx_…`). */
    readonly base: string,
    info: Info,
  ) {
    this.info = info;
  }

  /** Its id (`sbx_…`, `fs_…`, `tsk_…`, `prc_…`). */
  get id(): string {
    return this.info.id;
  }

  /** Its path, then `rest`. */
  path(rest = ""): string {
    return this.base + rest;
  }

  /** Reads it again. */
  async refresh(): Promise<Info> {
    this.info = await this.client.transport.json("GET", this.path());
    return this.info;
  }
}

// ---- namespaces and keys ----------------------------------------------------------------------

/** Namespaces: `client.namespaces`. Creating, updating and deleting them takes the platform admin. */
export class Namespaces {
  constructor(readonly client: Client) {}

  /** Creates a namespace (admin). @throws ConflictError when the name is taken. */
  create(spec: CreateNamespace, options: CreateOptions = {}): Promise<Namespace> {
    return this.client.create("/v1/namespaces", spec, options);
  }

  /** Every namespace the token may see (the admin: all; a key: its own). */
  list(): AsyncGenerator<Namespace> {
    return this.client.listAll("/v1/namespaces");
  }

  /** One namespace, with its quotas and usage. @throws NotFoundError */
  get(name: string): Promise<Namespace> {
    return this.client.transport.json("GET", `/v1/namespaces/${enc(name)}`);
  }

  /** Changes a namespace's quotas or egress ceiling (admin). */
  update(name: string, patch: UpdateNamespace): Promise<Namespace> {
    return this.client.transport.json("PATCH", `/v1/namespaces/${enc(name)}`, { json: patch });
  }

  /** Deletes a namespace and tears down everything in it (admin). */
  async delete(name: string): Promise<void> {
    await this.client.transport.request("DELETE", `/v1/namespaces/${enc(name)}`);
  }
}

/** API keys: `client.keys`, of the client's namespace unless `namespace` says. */
export class Keys {
  constructor(readonly client: Client) {}

  /** Creates a key; the answer's `token` is shown this once. */
  create(spec: CreateKey, options: CreateOptions & NamespaceOptions = {}): Promise<CreatedKey> {
    return this.client.create(this.client.nsPath("/keys", options.namespace), spec, options);
  }

  /** Every key of the namespace (never their tokens). */
  list(options: NamespaceOptions = {}): AsyncGenerator<Key> {
    return this.client.listAll(this.client.nsPath("/keys", options.namespace));
  }

  /** One key. */
  get(id: string, options: NamespaceOptions = {}): Promise<Key> {
    return this.client.transport.json("GET", this.client.nsPath(`/keys/${enc(id)}`, options.namespace));
  }

  /** Revokes a key, at once. */
  async revoke(id: string, options: NamespaceOptions = {}): Promise<void> {
    await this.client.transport.request("DELETE", this.client.nsPath(`/keys/${enc(id)}`, options.namespace));
  }
}

// ---- sandboxes ----------------------------------------------------------------------------------

/** A command: an argv, or a string run by `/bin/sh -c`. */
export type Command = string[] | string;

function argv(cmd: Command): string[] {
  return typeof cmd === "string" ? ["/bin/sh", "-c", cmd] : cmd;
}

/** Options of {@link Sandbox.exec} and {@link Sandbox.execStream}. */
export interface ExecOptions {
  /** Standard input, all of it (no stdin is end-of-file at once). Up to about 12 MiB; more goes through a process. */
  stdin?: Uint8Array | string | undefined;
  /** More environment variables. */
  env?: Record<string, string> | undefined;
  /** The working directory. */
  cwd?: string | undefined;
  /** The user to run as: a name of the image or `uid[:gid]`. */
  user?: string | undefined;
  /** Seconds before the command and everything it started are killed (default 60, at most 3600). */
  timeoutSeconds?: number | undefined;
  /** Aborts the request (the command is killed when the connection closes). */
  signal?: AbortSignal | undefined;
}

/** What a finished command did. */
export interface ExecOutput {
  /** The exit status; 128 + the signal number when a signal killed it. */
  exitCode: number;
  /** The signal that killed it, if one did. */
  signal: number | undefined;
  /** Standard output as UTF-8 text (invalid bytes replaced; see `stdoutBytes`). */
  stdout: string;
  /** Standard error as UTF-8 text. */
  stderr: string;
  /** Standard output, the exact bytes. */
  stdoutBytes: Uint8Array;
  /** Standard error, the exact bytes. */
  stderrBytes: Uint8Array;
  /** The timeout killed it. */
  timedOut: boolean;
  /** Output past the server's bound was dropped. */
  truncated: boolean;
  /** How long it ran, in milliseconds. */
  durationMs: number;
}

/** An event of {@link Sandbox.execStream}: a piece of output, then the exit. */
export type ExecStreamEvent =
  | {
      type: "stdout" | "stderr";
      /** The exact bytes of this piece. */
      data: Uint8Array;
      /** The piece as text (a character split across pieces is completed in the next one). */
      text: string;
    }
  | {
      type: "exit";
      exitCode: number;
      signal: number | undefined;
      timedOut: boolean;
      truncated: boolean;
      durationMs: number;
    };

/** Sandboxes: `client.sandboxes`. */
export class Sandboxes extends Collection<SandboxInfo, Sandbox> {
  constructor(client: Client) {
    super(client, "/sandboxes", (c, info) => new Sandbox(c, info));
  }

  /**
   * Creates a sandbox and answers it running. `spec` is the API's `CreateSandbox`: `image`,
   * `cpu_millis`, `memory_bytes`, `disk_bytes`, `ttl_seconds`, `env`, `filesystem`, `egress`,
   * `secrets`. Retried safely: the SDK sends an `Idempotency-Key`.
   *
   * Use it with `await using sandbox = await client.sandboxes.create()` to delete it at the
   * end of the scope.
   *
   * @throws QuotaExceededError when the namespace's quota has no room.
   */
  create(spec: CreateSandbox = {}, options: CreateOptions & NamespaceOptions = {}): Promise<Sandbox> {
    return this.createItem(spec, options);
  }

  /** Every sandbox of the namespace the token may see. */
  list(options: NamespaceOptions = {}): AsyncGenerator<Sandbox> {
    return this.listItems(options);
  }
}

/** One sandbox: its commands, processes and files. */
export class Sandbox extends Resource<SandboxInfo> implements AsyncDisposable {
  /** Files inside the sandbox. */
  readonly files: SandboxFiles;
  /** Background processes. */
  readonly processes: Processes;

  constructor(client: Client, info: SandboxInfo) {
    super(client, client.nsPath(`/sandboxes/${enc(info.id)}`, info.namespace), info);
    this.files = new SandboxFiles(this);
    this.processes = new Processes(this);
  }

  /** `running`, `stopped`, `expired`, ... as last read. */
  get status(): string {
    return this.info.status;
  }

  #execBody(cmd: Command, options: ExecOptions): ExecRequest {
    return {
      cmd: argv(cmd),
      // base64 both ways: the exact bytes, whatever they are.
      encoding: "base64",
      stdin: options.stdin === undefined ? undefined : base64(options.stdin),
      env: options.env,
      cwd: options.cwd,
      user: options.user,
      timeout_seconds: options.timeoutSeconds,
    } as ExecRequest;
  }

  /**
   * Runs a command to its end and answers its exit code and output. Not retried (a command is
   * not idempotent).
   *
   * @throws ConflictError when the sandbox is not running; InvalidRequestError for a bad
   *   command, user or option.
   */
  async exec(cmd: Command, options: ExecOptions = {}): Promise<ExecOutput> {
    const r: ExecResult = await this.client.transport.json("POST", this.path("/exec"), {
      json: this.#execBody(cmd, options),
      signal: options.signal,
    });
    const stdoutBytes = unbase64(r.stdout);
    const stderrBytes = unbase64(r.stderr);
    const text = new TextDecoder();
    return {
      exitCode: r.exit_code,
      signal: r.signal ?? undefined,
      stdout: text.decode(stdoutBytes),
      stderr: text.decode(stderrBytes),
      stdoutBytes,
      stderrBytes,
      timedOut: r.timed_out,
      truncated: r.truncated,
      durationMs: r.duration_ms,
    };
  }

  /**
   * Runs a command and yields its output as it is produced, then its exit:
   * `for await (const e of sandbox.execStream(["make"])) ...`.
   *
   * @throws ApiError as {@link Sandbox.exec}, and an Error when the server reports a failure
   *   mid-stream.
   */
  async *execStream(cmd: Command, options: ExecOptions = {}): AsyncGenerator<ExecStreamEvent> {
    const response = await this.client.transport.request("POST", this.path("/exec"), {
      json: this.#execBody(cmd, options),
      headers: { accept: "application/x-ndjson" },
      signal: options.signal,
    });
    const decoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };
    for await (const e of ndjson<ExecEvent>(response.body)) {
      switch (e.type) {
        case "stdout":
        case "stderr": {
          const data = unbase64(e.data);
          yield { type: e.type, data, text: decoders[e.type].decode(data, { stream: true }) };
          break;
        }
        case "exit":
          yield {
            type: "exit",
            exitCode: e.exit_code,
            signal: e.signal ?? undefined,
            timedOut: e.timed_out,
            truncated: e.truncated,
            durationMs: e.duration_ms,
          };
          return;
        case "error":
          throw new Error(`exec failed: ${e.message}`);
      }
    }
  }

  /** Saves the sandbox's root as a new image of the namespace, named `name`. */
  snapshot(name: string, options: CreateOptions = {}): Promise<Image> {
    return this.client.create(this.path("/snapshot"), { name }, options);
  }

  /**
   * Deletes the sandbox: every process ends, its root goes. Deleting one already deleted
   * succeeds again (its record stays, with status `deleted`).
   */
  async delete(): Promise<void> {
    await this.client.transport.request("DELETE", this.path());
  }

  /** Deletes the sandbox at the end of an `await using` scope (one already gone is fine). */
  async [Symbol.asyncDispose](): Promise<void> {
    try {
      await this.delete();
    } catch (e) {
      if (!(e instanceof NotFoundError)) throw e;
    }
  }
}

/** Options of a file operation inside a sandbox. */
export interface FileOptions {
  /** The user to act as (name or `uid[:gid]`); that user's permissions apply. */
  user?: string | undefined;
}

/** Files of a sandbox: `sandbox.files`. Paths are absolute. */
export class SandboxFiles {
  constructor(readonly sandbox: Sandbox) {}

  /**
   * The file's bytes as a stream, read as they arrive (for large files).
   * @throws NotFoundError naming a missing path; IsADirectoryError; NotARegularFileError;
   *   PermissionDeniedError.
   */
  async readStream(path: string, options: FileOptions = {}): Promise<ReadableStream<Uint8Array>> {
    const response = await this.sandbox.client.transport.request("GET", this.sandbox.path("/files"), {
      query: { path, user: options.user },
    });
    return response.body ?? new ReadableStream({ start: (c) => c.close() });
  }

  /** The file's bytes. */
  async read(path: string, options: FileOptions = {}): Promise<Uint8Array> {
    const response = await this.sandbox.client.transport.request("GET", this.sandbox.path("/files"), {
      query: { path, user: options.user },
    });
    return new Uint8Array(await response.arrayBuffer());
  }

  /** The file as UTF-8 text. */
  async readText(path: string, options: FileOptions = {}): Promise<string> {
    return new TextDecoder().decode(await this.read(path, options));
  }

  /**
   * Writes a file, atomically, creating missing parent directories. `data` is bytes, text
   * (UTF-8), or a stream of bytes sent as it is read (any size up to the sandbox's disk). An
   * existing file keeps its mode unless `mode` (octal text, `"0755"`) is given.
   */
  async write(path: string, data: Body, options: FileOptions & { mode?: string | undefined } = {}): Promise<void> {
    await this.sandbox.client.transport.request("PUT", this.sandbox.path("/files"), {
      query: { path, user: options.user, mode: options.mode },
      body: data,
    });
  }

  /** The entries of a directory: names, types, sizes, modes and mtimes. */
  list(path: string, options: FileOptions = {}): Promise<FileEntry[]> {
    const url = this.sandbox.path("/files");
    const transport = this.sandbox.client.transport;
    return collect(
      paginate<FileEntry>((cursor) => transport.json("GET", url, { query: { path, user: options.user, list: true, cursor } })),
    );
  }
}

// ---- processes ----------------------------------------------------------------------------------

/** Options of {@link Processes.start}. */
export interface StartOptions {
  env?: Record<string, string> | undefined;
  cwd?: string | undefined;
  user?: string | undefined;
  /** A terminal of this size: the process's stdin, stdout and stderr are its pty. */
  tty?: { rows: number; cols: number } | undefined;
  /** Seconds before it is killed (default none). */
  timeoutSeconds?: number | undefined;
}

/** A piece of a process's output, or a gap, or its exit. */
export type ProcessOutputEvent =
  | { type: "output"; seq: number; stream: "stdout" | "stderr" | "pty"; data: Uint8Array }
  | { type: "gap"; from: number; to: number }
  | { type: "exit"; exitCode: number; signal: number | undefined; timedOut: boolean };

/** Background processes of a sandbox: `sandbox.processes`. */
export class Processes {
  constructor(readonly sandbox: Sandbox) {}

  /** Starts a process in the background; its output is kept for {@link Process.output}. */
  async start(cmd: Command, options: StartOptions = {}): Promise<Process> {
    const info: ProcessInfo = await this.sandbox.client.transport.json("POST", this.sandbox.path("/processes"), {
      json: {
        cmd: argv(cmd),
        env: options.env,
        cwd: options.cwd,
        user: options.user,
        tty: options.tty,
        timeout_seconds: options.timeoutSeconds,
      },
    });
    return new Process(this.sandbox, info);
  }

  /** A process by id (`prc_…`). */
  async get(id: string): Promise<Process> {
    const info: ProcessInfo = await this.sandbox.client.transport.json("GET", this.sandbox.path(`/processes/${enc(id)}`));
    return new Process(this.sandbox, info);
  }

  /** Every process of the sandbox. */
  async list(): Promise<Process[]> {
    const page: Page<ProcessInfo> = await this.sandbox.client.transport.json("GET", this.sandbox.path("/processes"));
    return page.items.map((info) => new Process(this.sandbox, info));
  }
}

/** A background process. */
export class Process extends Resource<ProcessInfo> {
  constructor(
    readonly sandbox: Sandbox,
    info: ProcessInfo,
  ) {
    super(sandbox.client, sandbox.path(`/processes/${enc(info.id)}`), info);
  }

  /** `running` or `exited`, as last read (`refresh()` reads it again). */
  get status(): ProcessInfo["status"] {
    return this.info.status;
  }

  /**
   * Once exited, its exit status (128 + the signal number when a signal ended it); `undefined`
   * while it runs. As last read.
   */
  get exitCode(): number | undefined {
    return this.info.exit_code ?? undefined;
  }

  /** Its process id inside the sandbox. */
  get pid(): number {
    return this.info.pid;
  }

  /**
   * The process's output from after `after` (default the start), live until it exits; the
   * last event is its `exit`.
   */
  async *output(options: { after?: number | undefined; signal?: AbortSignal | undefined } = {}): AsyncGenerator<ProcessOutputEvent> {
    const response = await this.sandbox.client.transport.request("GET", this.path("/output"), {
      query: { after: options.after },
      headers: { accept: "application/x-ndjson" },
      signal: options.signal,
    });
    for await (const e of ndjson<ProcessEvent>(response.body)) {
      if (e.type === "output") yield { type: "output", seq: e.seq, stream: e.stream, data: unbase64(e.data) };
      else if (e.type === "gap") yield { type: "gap", from: e.from, to: e.to };
      else {
        yield { type: "exit", exitCode: e.exit_code, signal: e.signal ?? undefined, timedOut: e.timed_out };
        return;
      }
    }
  }

  /** Waits for the exit, answering it with all the output (stdout and stderr as text). */
  async wait(): Promise<{ exitCode: number; signal: number | undefined; timedOut: boolean; stdout: string; stderr: string }> {
    const chunks: Record<string, Uint8Array[]> = { stdout: [], stderr: [], pty: [] };
    for await (const e of this.output()) {
      if (e.type === "output") chunks[e.stream]!.push(e.data);
      if (e.type === "exit") {
        const text = (parts: Uint8Array[]) => new TextDecoder().decode(Buffer.concat(parts));
        return {
          exitCode: e.exitCode,
          signal: e.signal,
          timedOut: e.timedOut,
          stdout: text([...chunks["stdout"]!, ...chunks["pty"]!]),
          stderr: text(chunks["stderr"]!),
        };
      }
    }
    throw new Error(`the output of process ${this.id} ended without its exit`);
  }

  /** Writes to the process's stdin (any size, streamed); `eof` closes it after. */
  writeStdin(data: Body, options: { eof?: boolean | undefined } = {}): Promise<StdinResult> {
    return this.sandbox.client.transport.json("POST", this.path("/stdin"), {
      body: data,
      query: { eof: options.eof },
    });
  }

  /** Closes the process's stdin. */
  closeStdin(): Promise<StdinResult> {
    return this.writeStdin(new Uint8Array(), { eof: true });
  }

  /** Sends a signal (`"SIGTERM"` or a number). */
  async signal(signal: string | number): Promise<void> {
    await this.sandbox.client.transport.request("POST", this.path("/signal"), { json: { signal } });
  }

  /** Resizes the process's terminal. */
  async resize(rows: number, cols: number): Promise<void> {
    await this.sandbox.client.transport.request("POST", this.path("/resize"), { json: { rows, cols } });
  }
}

// ---- filesystems --------------------------------------------------------------------------------

/** Filesystems: `client.filesystems`. */
export class Filesystems extends Collection<FilesystemInfo, Filesystem> {
  constructor(client: Client) {
    super(client, "/filesystems", (c, info) => new Filesystem(c, info));
  }

  /** Creates a filesystem of `size_bytes`. */
  create(spec: CreateFilesystem, options: CreateOptions & NamespaceOptions = {}): Promise<Filesystem> {
    return this.createItem(spec, options);
  }

  /** Every filesystem of the namespace the token may see. */
  list(options: NamespaceOptions = {}): AsyncGenerator<Filesystem> {
    return this.listItems(options);
  }
}

/** A filesystem: its files and its archive. Paths are relative to its root. */
export class Filesystem extends Resource<FilesystemInfo> {
  constructor(client: Client, info: FilesystemInfo) {
    super(client, client.nsPath(`/filesystems/${enc(info.id)}`, info.namespace), info);
  }

  /** Grows or shrinks it to `sizeBytes`. */
  async resize(sizeBytes: number): Promise<FilesystemInfo> {
    this.info = await this.client.transport.json("PATCH", this.path(), { json: { size_bytes: sizeBytes } });
    return this.info;
  }

  /** A file's bytes as a stream. */
  async readStream(path: string): Promise<ReadableStream<Uint8Array>> {
    const response = await this.client.transport.request("GET", this.path("/files"), { query: { path } });
    return response.body ?? new ReadableStream({ start: (c) => c.close() });
  }

  /** A file's bytes. */
  async read(path: string): Promise<Uint8Array> {
    const response = await this.client.transport.request("GET", this.path("/files"), { query: { path } });
    return new Uint8Array(await response.arrayBuffer());
  }

  /** A file as UTF-8 text. */
  async readText(path: string): Promise<string> {
    return new TextDecoder().decode(await this.read(path));
  }

  /** Writes a file (bytes, text or a stream), creating parent directories. */
  async write(path: string, data: Body, options: { mode?: string | undefined } = {}): Promise<void> {
    await this.client.transport.request("PUT", this.path("/files"), { query: { path, mode: options.mode }, body: data });
  }

  /** Removes a file. */
  async remove(path: string): Promise<void> {
    await this.client.transport.request("DELETE", this.path("/files"), { query: { path } });
  }

  /** The entries of a directory (`""` is the root). */
  list(path = ""): Promise<FileEntry[]> {
    const url = this.path("/files");
    return collect(
      paginate<FileEntry>((cursor) => this.client.transport.json("GET", url, { query: { path, list: true, cursor } })),
    );
  }

  /** The whole filesystem as a tar stream. */
  async exportArchive(): Promise<ReadableStream<Uint8Array>> {
    const response = await this.client.transport.request("GET", this.path("/archive"));
    return response.body ?? new ReadableStream({ start: (c) => c.close() });
  }

  /** Replaces the filesystem's content with a tar (bytes or a stream). */
  importArchive(tar: Body): Promise<ArchiveResult> {
    return this.client.transport.json("PUT", this.path("/archive"), { body: tar, contentType: "application/x-tar" });
  }

  /** Deletes the filesystem; `force` also when sandboxes mount it. */
  async delete(options: { force?: boolean | undefined } = {}): Promise<void> {
    await this.client.transport.request("DELETE", this.path(), { query: { force: options.force } });
  }
}

// ---- images ---------------------------------------------------------------------------------------

/** Images: `client.images`. */
export class Images {
  constructor(readonly client: Client) {}

  /** Every image the namespace may use: its own and the public ones. */
  list(options: NamespaceOptions = {}): AsyncGenerator<Image> {
    return this.client.listAll(this.client.nsPath("/images", options.namespace));
  }

  /** An image by name or `img_…`. */
  get(name: string, options: NamespaceOptions = {}): Promise<Image> {
    return this.client.transport.json("GET", this.client.nsPath(`/images/${enc(name)}`, options.namespace));
  }

  /** Pulls an image from an OCI registry (`{name, source, credentials?}`). */
  pull(spec: PullImage, options: CreateOptions & NamespaceOptions = {}): Promise<Image> {
    return this.client.create(this.client.nsPath("/images", options.namespace), spec, options);
  }

  /** Builds an image `from` another by running each of `run` in turn. */
  build(spec: BuildImage, options: CreateOptions & NamespaceOptions = {}): Promise<Image> {
    return this.client.create(this.client.nsPath("/images", options.namespace), spec, options);
  }

  /** Imports an OCI image layout or a `docker save` tar as image `name`. */
  importArchive(name: string, tar: Body, options: NamespaceOptions = {}): Promise<Image> {
    return this.client.transport.json("PUT", this.client.nsPath(`/images/${enc(name)}/archive`, options.namespace), {
      body: tar,
      contentType: "application/x-tar",
    });
  }

  /** Deletes an image. @throws ConflictError while a sandbox uses it. */
  async delete(name: string, options: NamespaceOptions = {}): Promise<void> {
    await this.client.transport.request("DELETE", this.client.nsPath(`/images/${enc(name)}`, options.namespace));
  }
}

// ---- agents and tasks -----------------------------------------------------------------------------

/** Agents: `client.agents`. */
export class Agents {
  constructor(readonly client: Client) {}

  /** Creates an agent. */
  create(name: string, options: CreateOptions & NamespaceOptions = {}): Promise<Agent> {
    return this.client.create(this.client.nsPath("/agents", options.namespace), { name }, options);
  }

  /** Every agent of the namespace. */
  list(options: NamespaceOptions = {}): AsyncGenerator<Agent> {
    return this.client.listAll(this.client.nsPath("/agents", options.namespace));
  }

  /** An agent by name or `agt_…`. */
  get(agent: string, options: NamespaceOptions = {}): Promise<Agent> {
    return this.client.transport.json("GET", this.client.nsPath(`/agents/${enc(agent)}`, options.namespace));
  }

  /** Deletes an agent. */
  async delete(agent: string, options: NamespaceOptions = {}): Promise<void> {
    await this.client.transport.request("DELETE", this.client.nsPath(`/agents/${enc(agent)}`, options.namespace));
  }

  /** Uploads a version: a tar of the agent's code with its `agent.json`. */
  push(agent: string, bundle: Body, options: CreateOptions & NamespaceOptions = {}): Promise<AgentVersion> {
    return this.client.transport.json("POST", this.client.nsPath(`/agents/${enc(agent)}/versions`, options.namespace), {
      body: bundle,
      contentType: "application/x-tar",
      idempotencyKey: options.idempotencyKey ?? (bundle instanceof Uint8Array || typeof bundle === "string" ? true : undefined),
    });
  }

  /** Every version of an agent. */
  versions(agent: string, options: NamespaceOptions = {}): AsyncGenerator<AgentVersion> {
    return this.client.listAll(this.client.nsPath(`/agents/${enc(agent)}/versions`, options.namespace));
  }

  /** Makes `version` the active one. */
  deploy(agent: string, version: string, options: NamespaceOptions = {}): Promise<Agent> {
    return this.client.transport.json("POST", this.client.nsPath(`/agents/${enc(agent)}/deploy`, options.namespace), {
      json: { version },
    });
  }

  /** Makes the version deployed before the active one active again. */
  rollback(agent: string, options: NamespaceOptions = {}): Promise<Agent> {
    return this.client.transport.json("POST", this.client.nsPath(`/agents/${enc(agent)}/rollback`, options.namespace));
  }
}

/** Tasks: `client.tasks`. */
export class Tasks extends Collection<TaskInfo, Task> {
  constructor(client: Client) {
    super(client, "/tasks", (c, info) => new Task(c, info));
  }

  /** Starts a task: the agent's version runs in a sandbox of its own. */
  create(spec: CreateTask, options: CreateOptions & NamespaceOptions = {}): Promise<Task> {
    return this.createItem(spec, options);
  }

  /** Every task of the namespace, or of one agent. */
  list(options: NamespaceOptions & { agent?: string | undefined } = {}): AsyncGenerator<Task> {
    return this.listItems(options, { agent: options.agent });
  }
}

/** A task: its messages, events, state. */
export class Task extends Resource<TaskInfo> {
  constructor(client: Client, info: TaskInfo) {
    super(client, client.nsPath(`/tasks/${enc(info.id)}`, info.namespace), info);
  }

  /** Sends a message (a string, or ACP content blocks) to the agent. */
  send(content: unknown): Promise<EventAccepted> {
    return this.client.transport.json("POST", this.path("/events"), { json: { type: "message", content } });
  }

  /** Answers a pending permission request of a task created with `permissions: "ask"`. */
  answer(request: string, outcome: "allow_once" | "allow_always" | "reject"): Promise<EventAccepted> {
    return this.client.transport.json("POST", this.path("/events"), { json: { type: "permission", request, outcome } });
  }

  /** One page of messages after `after` (default from the first). */
  messages(options: { after?: number | undefined; limit?: number | undefined } = {}): Promise<Page<TaskMessage>> {
    return this.client.transport.json("GET", this.path("/messages"), {
      query: { after: options.after, limit: options.limit },
    });
  }

  /**
   * Every message after `after`, live, until the task ends. A dropped connection is resumed
   * with `Last-Event-ID`: no message is lost or repeated.
   */
  async *stream(options: { after?: number | undefined; signal?: AbortSignal | undefined } = {}): AsyncGenerator<TaskMessage> {
    let last = options.after ?? 0;
    let failures = 0;
    // A connection that fails (to open, or midway) is opened again after `last`, up to 5 times
    // in a row; an error the server reports in the stream is not retried.
    const failed = async (e: unknown) => {
      if (options.signal?.aborted || ++failures > 5) throw e;
      await new Promise((r) => setTimeout(r, 250 * 2 ** failures));
    };
    for (;;) {
      let response: Response;
      try {
        response = await this.client.transport.request("GET", this.path("/messages"), {
          headers: { accept: "text/event-stream", "last-event-id": String(last) },
          signal: options.signal,
        });
      } catch (e) {
        await failed(e);
        continue;
      }
      const events = serverSentEvents(response.body);
      try {
        for (;;) {
          // Only reading is guarded: an exception of the consumer's, or its `break`, is not a cut.
          let next: IteratorResult<ServerSentEvent>;
          try {
            next = await events.next();
          } catch (e) {
            await failed(e);
            break;
          }
          if (next.done) break;
          const e = next.value;
          if (e.event === "end") return;
          if (e.event === "error") throw new Error(`task stream failed: ${e.data}`);
          if (e.event !== "message") continue;
          const message = JSON.parse(e.data) as TaskMessage;
          last = message.seq;
          failures = 0;
          yield message;
        }
      } finally {
        // Closes the connection when the consumer stops early; one already cut is fine.
        await events.return(undefined).catch(() => undefined);
      }
    }
  }

  /** The task's state document and its ETag. */
  async getState(): Promise<{ value: unknown; etag: string | undefined }> {
    const response = await this.client.transport.request("GET", this.path("/state"), { headers: { accept: "application/json" } });
    return { value: await response.json(), etag: response.headers.get("etag") ?? undefined };
  }

  /** Replaces the state; with `ifMatch`, only if it is still at that ETag (else ConflictError). */
  async putState(value: unknown, options: { ifMatch?: string | undefined } = {}): Promise<string | undefined> {
    const headers: Record<string, string> = options.ifMatch === undefined ? {} : { "if-match": options.ifMatch };
    const response = await this.client.transport.request("PUT", this.path("/state"), { json: value, headers });
    return response.headers.get("etag") ?? undefined;
  }

  /** Cancels the task: its agent stops and its sandbox goes; messages and state are kept. */
  async cancel(): Promise<TaskInfo> {
    this.info = await this.client.transport.json("POST", this.path("/cancel"));
    return this.info;
  }
}

// ---- usage and audit ------------------------------------------------------------------------------

/** Usage: `client.usage`. */
export class Usage {
  constructor(readonly client: Client) {}

  /** Metered usage between `from` and `to` (RFC 3339), in buckets of `granularity` (`minute`, `hour`, `day`). */
  get(
    options: NamespaceOptions & { from?: string | undefined; to?: string | undefined; granularity?: string | undefined } = {},
  ): Promise<UsageReport> {
    return this.client.transport.json("GET", this.client.nsPath("/usage", options.namespace), {
      query: { from: options.from, to: options.to, granularity: options.granularity },
    });
  }
}

/** Audit: `client.audit`. */
export class Audit {
  constructor(readonly client: Client) {}

  /** The namespace's audit records, oldest first, filtered by `action` and time (RFC 3339). */
  list(
    options: NamespaceOptions & { action?: string | undefined; since?: string | undefined; until?: string | undefined } = {},
  ): AsyncGenerator<AuditRecord> {
    const { action, since, until } = options;
    return this.client.listAll(this.client.nsPath("/audit", options.namespace), { action, since, until });
  }

  /** Verifies the namespace's hash chain. */
  verify(options: NamespaceOptions = {}): Promise<AuditVerification> {
    return this.client.transport.json("GET", this.client.nsPath("/audit/verify", options.namespace));
  }
}
