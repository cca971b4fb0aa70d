/**
 * Errors of the Bulkhead API: every error code the server answers is a subclass of
 * {@link ApiError}, so callers can `catch (e) { if (e instanceof NotFoundError) ... }`.
 *
 * @module
 */

import type { components } from "./schema.js";

/** Every error code the API answers (from the OpenAPI document's `ErrorCode`). */
export type ErrorCode = components["schemas"]["ErrorCode"];

/** What an {@link ApiError} is made of. */
export interface ApiErrorInit {
  /** The HTTP status of the answer (for example 404). */
  status: number;
  /** The error code of the envelope (`not_found`); a code newer than this SDK is kept as is. */
  code: string;
  /** The server's message, for people. */
  message: string;
  /** The id of the request, as in the server's log (the `X-Request-Id` of the answer). */
  requestId?: string | undefined;
  /** Seconds to wait before retrying, from `Retry-After` (429 `rate_limited`, 503 `unavailable`). */
  retryAfter?: number | undefined;
}

/**
 * An error answer of the API: `{"error": {"code", "message", "request_id"}}` with its status.
 * Each known code has a subclass; {@link errorFor} picks it.
 */
export class ApiError extends Error {
  /** The HTTP status (for example 404). */
  readonly status: number;
  /** The error code (`not_found`, `invalid_request`, ...). */
  readonly code: string;
  /** The request's id, for the server's log; `undefined` when the answer had none. */
  readonly requestId: string | undefined;
  /** Seconds to wait before a retry (from `Retry-After`), when the server said. */
  readonly retryAfter: number | undefined;

  constructor(init: ApiErrorInit) {
    super(init.message);
    this.name = new.target.name;
    this.status = init.status;
    this.code = init.code;
    this.requestId = init.requestId;
    this.retryAfter = init.retryAfter;
  }
}

/** 401 `unauthenticated`: no token, or one that is unknown, revoked or expired. */
export class UnauthenticatedError extends ApiError {}
/** 403 `forbidden`: the principal's role or a policy does not allow the action. */
export class ForbiddenError extends ApiError {}
/** 404 `not_found`: no such thing, or one of another namespace (which looks the same). */
export class NotFoundError extends ApiError {}
/** 400 `invalid_request`: the input is wrong; the message names the field and why. */
export class InvalidRequestError extends ApiError {}
/** 409 `conflict` (or 412 for a failed `If-Match`): a name in use, or a state in the way. */
export class ConflictError extends ApiError {}
/** 413 `payload_too_large`: the body is over the route's bound. */
export class PayloadTooLargeError extends ApiError {}
/** 429 `quota_exceeded`: the namespace's quota does not allow it; free something first. */
export class QuotaExceededError extends ApiError {}
/** 429 `rate_limited`: too many requests; retry after {@link ApiError.retryAfter} seconds. */
export class RateLimitedError extends ApiError {}
/** 500 `internal`: the server failed; only {@link ApiError.requestId} says more, in its log. */
export class InternalError extends ApiError {}
/** 507 `insufficient_storage`: the server's own disk is full; nothing was written. */
export class InsufficientStorageError extends ApiError {}
/** 503 `unavailable`: the server's store is busy; retry after {@link ApiError.retryAfter}. */
export class UnavailableError extends ApiError {}
/** 400 `is_a_directory`: a path inside a sandbox or filesystem is a directory. */
export class IsADirectoryError extends ApiError {}
/** 400 `not_a_regular_file`: a path is a fifo, socket or device. */
export class NotARegularFileError extends ApiError {}
/** 403 `permission_denied`: the sandbox's own file permissions refused the acting user. */
export class PermissionDeniedError extends ApiError {}

/** The class of each error code; the compiler checks that every code of the API has one. */
export const ERROR_CLASSES: { readonly [C in ErrorCode]: new (init: ApiErrorInit) => ApiError } = {
  unauthenticated: UnauthenticatedError,
  forbidden: ForbiddenError,
  not_found: NotFoundError,
  invalid_request: InvalidRequestError,
  conflict: ConflictError,
  payload_too_large: PayloadTooLargeError,
  quota_exceeded: QuotaExceededError,
  rate_limited: RateLimitedError,
  internal: InternalError,
  insufficient_storage: InsufficientStorageError,
  unavailable: UnavailableError,
  is_a_directory: IsADirectoryError,
  not_a_regular_file: NotARegularFileError,
  permission_denied: PermissionDeniedError,
};

/** The error of `init.code`'s class, or a plain {@link ApiError} for a code this SDK does not know. */
export function errorFor(init: ApiErrorInit): ApiError {
  const cls = Object.hasOwn(ERROR_CLASSES, init.code) ? ERROR_CLASSES[init.code as ErrorCode] : ApiError;
  return new cls(init);
}

/** The connection failed, or the answer was not the API's (after every retry allowed). */
export class ConnectionError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ConnectionError";
  }
}
