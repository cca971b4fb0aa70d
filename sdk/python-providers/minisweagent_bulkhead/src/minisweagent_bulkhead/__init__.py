"""A mini-swe-agent environment whose every step runs in a Bulkhead sandbox: use
``environment_class: minisweagent_bulkhead.BulkheadEnvironment`` in a mini-swe-agent config, or
construct :class:`BulkheadEnvironment` and hand it to an agent."""

from .environment import BulkheadEnvironment, BulkheadEnvironmentConfig

__all__ = ["BulkheadEnvironment", "BulkheadEnvironmentConfig"]
