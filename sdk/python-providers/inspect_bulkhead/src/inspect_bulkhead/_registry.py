"""Imported by inspect-ai through the ``inspect_ai`` entry point: registers ``sandbox="bulkhead"``."""

from .sandbox import BulkheadSandboxEnvironment

__all__ = ["BulkheadSandboxEnvironment"]
