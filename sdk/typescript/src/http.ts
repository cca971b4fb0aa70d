/**
 * The transport: one `fetch` per attempt, error envelopes turned into {@link ApiError}s, and
 * retries with exponential backoff only where a repeat cannot do anything twice.
 *
 * @module
 */

import { randomUUID } from "node:crypto";

import { ApiError, ConnectionError, errorFor } from "./errors.js";

/** A request body: JSON (any other value), raw bytes, text, or a stream sent as it is read. */
export type Body = Uint8Array | string | ReadableStream<Uint8Array> | AsyncIterable<Uint8Array>;

/** How the SDK retries. */
export interface RetryOptions {
  /** Attempts in all, the first included (default 4; 1 turns retries off). */
  attempts?: number;
  /** The first wait in milliseconds, doubled after each attempt (default 250). */
  baseDelayMs?: number;
  /** The longest wait in milliseconds (default 8000). */
  maxDelayMs?: number;
  /**
   * How long, in milliseconds from its start, a create waits for an earlier attempt of it
   * that still runs on the server (default 600000). Such an attempt makes the retry's answer a
   * 409 `conflict` with `Retry-After`: the SDK waits as it says and asks again, without
   * counting an attempt, until the first attempt's answer comes back (what it made).
   */
  deadlineMs?: number;
}

/** What the {@link Transport} needs. */
export interface TransportOptions {
  /** The server's base URL (`http://127.0.0.1:7070`). */
  url: string;
  /** The bearer token; `undefined` sends none. */
  token?: string | undefined;
  /** The `fetch` to use (default the global one). */
  fetch?: typeof fetch | undefined;
  /** Retries of idempotent requests. */
  retry?: RetryOptions | undefined;
}

/** One request. */
export interface RequestOptions {
  /** Query parameters; `undefined` ones are left out. */
  query?: Record<string, string | number | boolean | undefined> | undefined;
  /** A JSON body. */
  json?: unknown;
  /** A raw body (bytes, text or a stream) with {@link RequestOptions.contentType}. */
  body?: Body | undefined;
  /** The content type of {@link RequestOptions.body} (default `application/octet-stream`). */
  contentType?: string | undefined;
  /** More headers. */
  headers?: Record<string, string> | undefined;
  /**
   * Makes a POST a create that may be retried: the SDK sends this `Idempotency-Key` (a new
   * random one when `true`) on every attempt, so the server does it once.
   */
  idempotencyKey?: string | true | undefined;
  /** Aborts the request. */
  signal?: AbortSignal | undefined;
}

const RETRIED_STATUSES = new Set([429, 502, 503, 504]);

/** Sends requests to one server with one token. */
export class Transport {
  readonly url: string;
  readonly token: string | undefined;
  readonly #fetch: typeof fetch;
  readonly #attempts: number;
  readonly #baseDelayMs: number;
  readonly #maxDelayMs: number;
  readonly #deadlineMs: number;

  constructor(options: TransportOptions) {
    this.url = options.url.replace(/\/+$/, "");
    this.token = options.token;
    this.#fetch = options.fetch ?? globalThis.fetch;
    this.#attempts = Math.max(1, options.retry?.attempts ?? 4);
    this.#baseDelayMs = options.retry?.baseDelayMs ?? 250;
    this.#maxDelayMs = options.retry?.maxDelayMs ?? 8000;
    this.#deadlineMs = options.retry?.deadlineMs ?? 600_000;
  }

  /**
   * Sends `method path` and answers the response when its status is 2xx (or 101).
   *
   * GETs are retried on a connection failure, a 429 `rate_limited`, 502, 503 and 504, waiting
   * `Retry-After` when the server gave one; so is a request with an idempotency key (a create),
   * with the same key. Nothing else is retried, nor a body that is a stream (it cannot be sent twice).
   * A create whose earlier attempt still runs (409 with `Retry-After`) waits for it, up to
   * {@link RetryOptions.deadlineMs}.
   *
   * @throws {@link ApiError} (its subclass for the code) for an error answer;
   *   {@link ConnectionError} when the server could not be reached.
   */
  async request(method: string, path: string, options: RequestOptions = {}): Promise<Response> {
    const url = new URL(this.url + path);
    for (const [k, v] of Object.entries(options.query ?? {})) {
      if (v !== undefined) url.searchParams.set(k, String(v));
    }
    const headers: Record<string, string> = { ...options.headers };
    if (this.token !== undefined) headers["authorization"] = `Bearer ${this.token}`;
    let body: NonNullable<RequestInit["body"]> | undefined;
    let replayable = true;
    if (options.json !== undefined) {
      headers["content-type"] = "application/json";
      body = JSON.stringify(options.json);
    } else if (options.body !== undefined) {
      headers["content-type"] = options.contentType ?? "application/octet-stream";
      if (typeof options.body === "string" || options.body instanceof Uint8Array) {
        body = options.body as NonNullable<RequestInit["body"]>;
      } else {
        body = toStream(options.body);
        replayable = false;
      }
    }
    if (options.idempotencyKey !== undefined) {
      headers["idempotency-key"] = options.idempotencyKey === true ? randomUUID() : options.idempotencyKey;
    }
    const idempotent = method === "GET" || method === "HEAD" || options.idempotencyKey !== undefined;
    const attempts = idempotent && replayable ? this.#attempts : 1;
    const started = Date.now();
    for (let attempt = 1; ; attempt++) {
      let response: Response;
      try {
        const init: RequestInit & { duplex?: "half" } = { method, headers, body, signal: options.signal };
        if (body instanceof ReadableStream) init.duplex = "half";
        response = await this.#fetch(url, init);
      } catch (cause) {
        if (options.signal?.aborted || attempt >= attempts) {
          throw new ConnectionError(`${method} ${url.pathname}: ${describe(cause)}`, { cause });
        }
        await sleep(this.#delay(attempt, undefined));
        continue;
      }
      if (response.ok || response.status === 101) return response;
      const error = await errorOf(response);
      const inProgress =
        response.status === 409 && error.retryAfter !== undefined && headers["idempotency-key"] !== undefined;
      if (inProgress && replayable) {
        const wait = this.#delay(attempt, error.retryAfter);
        if (Date.now() - started + wait > this.#deadlineMs) throw error;
        await sleep(wait);
        // Waiting for an earlier attempt to answer is not an attempt of this one.
        attempt--;
        continue;
      }
      const retried = RETRIED_STATUSES.has(response.status) && error.code !== "quota_exceeded";
      if (!retried || attempt >= attempts) throw error;
      await sleep(this.#delay(attempt, error.retryAfter));
    }
  }

  /** {@link Transport.request} whose answer is JSON, parsed. */
  async json<T>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    const response = await this.request(method, path, {
      ...options,
      headers: { accept: "application/json", ...options.headers },
    });
    if (response.status === 204) return undefined as T;
    return (await response.json()) as T;
  }

  #delay(attempt: number, retryAfter: number | undefined): number {
    if (retryAfter !== undefined) return retryAfter * 1000;
    const exp = Math.min(this.#maxDelayMs, this.#baseDelayMs * 2 ** (attempt - 1));
    // Full jitter, so clients that failed together do not retry together.
    return Math.random() * exp;
  }
}

/** The {@link ApiError} of an error answer; the envelope's code, or one from the status. */
export async function errorOf(response: Response): Promise<ApiError> {
  const retryHeader = response.headers.get("retry-after");
  const retryAfter = retryHeader !== null && /^\d+$/.test(retryHeader.trim()) ? Number(retryHeader) : undefined;
  let code = codeOfStatus(response.status);
  let message = response.statusText || `HTTP ${response.status}`;
  let requestId = response.headers.get("x-request-id") ?? undefined;
  const text = await response.text().catch(() => "");
  try {
    const envelope = JSON.parse(text) as { error?: { code?: unknown; message?: unknown; request_id?: unknown } };
    const e = envelope.error;
    if (e && typeof e.code === "string") {
      code = e.code;
      if (typeof e.message === "string") message = e.message;
      if (typeof e.request_id === "string") requestId = e.request_id;
    }
  } catch {
    if (text) message = text.slice(0, 500);
  }
  return errorFor({ status: response.status, code, message, requestId, retryAfter });
}

function codeOfStatus(status: number): string {
  switch (status) {
    case 400:
      return "invalid_request";
    case 401:
      return "unauthenticated";
    case 403:
      return "forbidden";
    case 404:
      return "not_found";
    case 409:
    case 412:
      return "conflict";
    case 413:
      return "payload_too_large";
    case 429:
      return "rate_limited";
    case 503:
      return "unavailable";
    case 507:
      return "insufficient_storage";
    default:
      return status >= 500 ? "internal" : "invalid_request";
  }
}

/** `body` as a web stream (a `fetch` body). */
export function toStream(body: ReadableStream<Uint8Array> | AsyncIterable<Uint8Array>): ReadableStream<Uint8Array> {
  if (body instanceof ReadableStream) return body;
  const it = body[Symbol.asyncIterator]();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { value, done } = await it.next();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    async cancel(reason) {
      await it.return?.(reason);
    },
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function describe(cause: unknown): string {
  if (cause instanceof Error) {
    const inner = (cause as { cause?: unknown }).cause;
    return inner instanceof Error ? `${cause.message} (${inner.message})` : cause.message;
  }
  return String(cause);
}
