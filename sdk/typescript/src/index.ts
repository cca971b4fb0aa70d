/**
 * Bulkhead's TypeScript SDK: `new Client({url, token, namespace})`.
 *
 * ```ts
 * import { Client } from "@bulkhead/sdk";
 * const client = new Client();
 * await using sandbox = await client.sandboxes.create();
 * const { exitCode, stdout } = await sandbox.exec(["echo", "hi"]);
 * ```
 *
 * @module
 */

export * from "./client.js";
export * from "./errors.js";
export { Transport, type Body, type RequestOptions, type RetryOptions, type TransportOptions } from "./http.js";
export type * from "./types.js";
export type { components, operations, paths } from "./schema.js";
