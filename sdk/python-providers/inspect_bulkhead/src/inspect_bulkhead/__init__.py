"""Bulkhead sandboxes for inspect-ai: ``sandbox="bulkhead"`` in a task or an eval runs each
sample in a sandbox of its own on a Bulkhead server (see :class:`BulkheadSandboxEnvironment`,
configured by :class:`BulkheadSandboxConfig`)."""

from .sandbox import BulkheadSandboxConfig, BulkheadSandboxEnvironment

__all__ = ["BulkheadSandboxConfig", "BulkheadSandboxEnvironment"]
