"""Every error code of the Bulkhead API as an exception class.

An error answer of the API is ``{"error": {"code", "message", "request_id"}}`` with an HTTP
status; the SDK raises the subclass of :class:`ApiError` named after its code (``not_found`` is
:class:`NotFound`). A code this SDK does not know yet raises :class:`ApiError` itself, with the
code as sent. Failures below HTTP (the server cannot be reached, a connection drops) are httpx's
own exceptions (``httpx.TransportError``), raised once the retries allowed are spent.
"""

from __future__ import annotations


class ApiError(Exception):
    """An error answer of the API.

    Attributes:
        status: the HTTP status (``404``).
        code: the contract's code (``"not_found"``).
        message: what the server said, for people.
        request_id: the server's id of the request (``req_…``), as in its audit records and
            logs; empty when the answer carried none.
    """

    #: The code this class stands for; ``ApiError`` itself stands for any.
    CODE: str = ""

    def __init__(self, status: int, code: str, message: str, request_id: str) -> None:
        super().__init__(f"{code}: {message} (status {status}, request {request_id or 'unknown'})")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id


class Unauthenticated(ApiError):
    """401 ``unauthenticated``: no token, or one the server does not accept (revoked, expired)."""

    CODE = "unauthenticated"


class Forbidden(ApiError):
    """403 ``forbidden``: the principal's role or the namespace's policies refuse the action."""

    CODE = "forbidden"


class NotFound(ApiError):
    """404 ``not_found``: no such resource, or one of another namespace (existence never leaks)."""

    CODE = "not_found"


class InvalidRequest(ApiError):
    """400 (also 405, 415) ``invalid_request``: the message names the field and why."""

    CODE = "invalid_request"


class Conflict(ApiError):
    """409 (or 412) ``conflict``: a name or an ``Idempotency-Key`` in use, a resource in the
    wrong state (a sandbox not running), a failed ``If-Match``."""

    CODE = "conflict"


class PayloadTooLarge(ApiError):
    """413 ``payload_too_large``: a body over the route's bound."""

    CODE = "payload_too_large"


class QuotaExceeded(ApiError):
    """429 ``quota_exceeded``: a namespace quota would be exceeded; retrying does not help until
    something is freed."""

    CODE = "quota_exceeded"


class _Retryable(ApiError):
    """An error answer that says when to try again (``Retry-After``)."""

    def __init__(
        self, status: int, code: str, message: str, request_id: str, retry_after: float | None = None
    ) -> None:
        super().__init__(status, code, message, request_id)
        #: Whole seconds the server asked to wait, or ``None``.
        self.retry_after = retry_after


class RateLimited(_Retryable):
    """429 ``rate_limited``: too many requests at once; ``retry_after`` seconds to wait."""

    CODE = "rate_limited"


class Internal(ApiError):
    """500 ``internal``: the server failed; the message carries nothing but the request id."""

    CODE = "internal"


class Unavailable(_Retryable):
    """503 ``unavailable``: a resource under repair or a busy store; safe to retry after
    ``retry_after`` seconds."""

    CODE = "unavailable"


class InsufficientStorage(ApiError):
    """507 ``insufficient_storage``: the server's own disk is full; nothing was written."""

    CODE = "insufficient_storage"


class IsADirectory(ApiError):
    """400 ``is_a_directory``: a directory where a file is needed."""

    CODE = "is_a_directory"


class NotARegularFile(ApiError):
    """400 ``not_a_regular_file``: a fifo, socket or device where a regular file is needed."""

    CODE = "not_a_regular_file"


class PermissionDenied(ApiError):
    """403 ``permission_denied``: the sandbox's own file permissions refused the acting user."""

    CODE = "permission_denied"


#: Each code of the contract and its class.
BY_CODE: dict[str, type[ApiError]] = {
    c.CODE: c
    for c in (
        Unauthenticated,
        Forbidden,
        NotFound,
        InvalidRequest,
        Conflict,
        PayloadTooLarge,
        QuotaExceeded,
        RateLimited,
        Internal,
        Unavailable,
        InsufficientStorage,
        IsADirectory,
        NotARegularFile,
        PermissionDenied,
    )
}

__all__ = ["ApiError", "BY_CODE", *(c.__name__ for c in BY_CODE.values())]
