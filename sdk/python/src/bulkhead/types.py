"""The shapes of the API's bodies, as typed dictionaries.

Answers are returned as the JSON the server sent (these types describe their keys; a newer
server may add keys). Sizes are bytes, CPU is thousandths of a core (``cpu_millis``), durations
are seconds unless a key says ``_ms``, and times are RFC 3339 strings.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

Role = Literal["owner", "admin", "developer", "viewer"]


class Page(TypedDict):
    """One page of a list: pass ``next_cursor`` back as ``cursor``; absent on the last page."""

    items: list[Any]
    next_cursor: NotRequired[str]


class Quotas(TypedDict, total=False):
    """A namespace's quotas (all required at create)."""

    cpu_millis: int
    memory_bytes: int
    disk_bytes: int
    max_sandboxes: int
    pids_per_sandbox: int
    max_sandbox_ttl_seconds: int
    api_requests_per_second: int
    max_concurrent_execs: int


class PlacementSpec(TypedDict):
    """A namespace's placement as asked (platform admin): ``mode`` ``"shared"`` or
    ``"dedicated"``; for ``dedicated``, whole ``cpus`` (default the cpu quota rounded up) and
    ``memory_bytes`` reserved (default the memory quota)."""

    mode: str
    cpus: NotRequired[int]
    memory_bytes: NotRequired[int]


class Placement(TypedDict):
    """A namespace's placement as admitted: ``mode``; for ``dedicated``, its ``cpus``, its
    reserved ``memory_bytes`` and the host cores it holds (``cpuset``, such as ``"2-3"``)."""

    mode: str
    cpus: NotRequired[int]
    memory_bytes: NotRequired[int]
    cpuset: NotRequired[str]


class Namespace(TypedDict):
    """A namespace: ``name``, ``isolation``, ``quotas``, ``egress`` ceiling, ``placement``,
    times, and (on a single namespace's answer) ``usage`` now."""

    name: str
    isolation: str
    quotas: Quotas
    created_at: str
    updated_at: str
    usage: NotRequired[dict[str, Any]]
    egress: dict[str, Any]
    placement: Placement


class Key(TypedDict):
    """An API key's metadata; ``token`` only in the answer to its creation (shown once)."""

    id: str
    namespace: str
    name: str
    role: Role
    created_at: str
    expires_at: NotRequired[str]
    projects: NotRequired[list[str]]
    token: NotRequired[str]


class SandboxFilesystem(TypedDict):
    """A filesystem mounted at ``/workspace``: its ``id`` and ``mode`` (``"rw"`` or ``"ro"``)."""

    id: str
    mode: str


class SandboxOptions(TypedDict, total=False):
    """What a sandbox create may ask; every key optional.

    ``cpu_millis`` thousandths of a core (default the smaller of 1000 and the quota);
    ``memory_bytes`` (default 512 MiB or the quota); ``ttl_seconds`` (default an hour or the
    namespace's maximum); ``env`` variables of every command; ``filesystem`` to mount at
    ``/workspace``; ``secrets`` (``[{"name", "env"| "path"}]``); ``egress`` (``{"allow": [..]}``);
    ``image`` a name or ``img_…`` (default the platform's); ``disk_bytes`` the writable root's
    size (memory, at most ``memory_bytes``).
    """

    cpu_millis: int
    memory_bytes: int
    ttl_seconds: int
    env: dict[str, str]
    filesystem: SandboxFilesystem
    secrets: list[dict[str, str]]
    egress: dict[str, Any]
    image: str
    disk_bytes: int


class ExecOptions(TypedDict, total=False):
    """How to run a command: ``stdin`` (str or bytes; absent means end-of-file at once),
    ``user`` (a name, ``uid`` or ``uid:gid`` of the image), ``env`` added variables, ``cwd``
    (absolute; default the image's or ``/``), ``timeout_seconds`` (1 to 3600, default 60; the
    command and everything it started are killed then)."""

    stdin: str | bytes
    user: str
    env: dict[str, str]
    cwd: str
    timeout_seconds: int


class ProcessOptions(TypedDict, total=False):
    """How to start a background process: ``env``, ``cwd``, ``user`` as for exec; ``tty``
    ``{"rows", "cols"}`` (1 to 1000 each) to run it on a terminal, whose output is one ``pty``
    stream; ``timeout_seconds`` 1 to 86400 (default none)."""

    env: dict[str, str]
    cwd: str
    user: str
    tty: dict[str, int]
    timeout_seconds: int


class Process(TypedDict):
    """A background process: ``id`` (``prc_…``), ``status`` (``"running"`` or ``"exited"``),
    ``exit_code`` once exited (128 + the signal when one ended it), its ``pid`` inside."""

    id: str
    sandbox: str
    cmd: list[str]
    pid: int
    status: str
    exit_code: NotRequired[int]
    signal: NotRequired[int]
    timed_out: bool
    tty: bool
    user: NotRequired[str]
    started_at: str
    ended_at: NotRequired[str]


class FileEntry(TypedDict):
    """A directory entry as ``lstat(2)`` sees it: ``type`` (``file``, ``directory``,
    ``symlink``, …), ``size`` bytes, ``mode`` octal string (``"0644"``), ``modified`` time."""

    name: str
    name_base64: NotRequired[str]
    type: str
    size: int
    mode: str
    modified: str
    modified_ms: int
    target: NotRequired[str]
    target_base64: NotRequired[str]


class Filesystem(TypedDict):
    """A namespace's filesystem: ``size_bytes`` its bound, ``used_bytes`` now, the sandboxes
    that mount it."""

    id: str
    namespace: str
    name: str
    project: NotRequired[str]
    size_bytes: int
    used_bytes: int
    mounted_by: list[str]
    created_at: str
    updated_at: str


class ArchiveResult(TypedDict):
    """What an archive upload wrote: ``entries`` and ``bytes`` of file data."""

    entries: int
    bytes: int


class Image(TypedDict):
    """An image: ``id`` (``img_…``), ``name``, its ``namespace`` (``None`` for a public one),
    ``digest`` (``sha256:…`` of its manifest), ``size_bytes`` unpacked, ``config`` (``Env``,
    ``WorkingDir``, ``User``, …), ``layers`` (blob digests, bottom first)."""

    id: str
    name: str
    namespace: str | None
    public: bool
    digest: str
    size_bytes: int
    config: dict[str, Any]
    layers: list[str]
    created_at: str


class Agent(TypedDict):
    """An agent: ``id`` (``agt_…``), ``name``, the version new tasks run (``active_version``,
    absent until one is deployed) and the one a rollback returns to (``previous_version``)."""

    id: str
    namespace: str
    name: str
    active_version: NotRequired[str]
    previous_version: NotRequired[str]
    created_at: str
    updated_at: str


class AgentVersion(TypedDict):
    """An immutable version of an agent (``ver_…``): the bundle's ``digest`` and
    ``size_bytes``, its ``manifest`` (``agent.json``), whether it is ``active``."""

    id: str
    agent: str
    digest: str
    size_bytes: int
    manifest: dict[str, Any]
    active: bool
    created_at: str


class Task(TypedDict):
    """A task: ``status`` (``starting``, ``running``, ``idle``, ``completed``, ``failed``,
    ``cancelled``), its ``sandbox`` while it has one, ``last_message`` seq, token ``usage``."""

    id: str
    namespace: str
    agent: str
    version: str
    status: str
    reason: NotRequired[str]
    sandbox: NotRequired[str]
    filesystem: NotRequired[SandboxFilesystem]
    permissions: str
    usage: dict[str, Any]
    last_message: int
    created_at: str
    updated_at: str
    ended_at: NotRequired[str]


class TaskMessage(TypedDict):
    """A task's message: ``seq`` from 1 without a gap, ``type`` (an ACP session update kind,
    ``user_message``, ``permission_request``, ``turn_end``, ``status``, ``log``), ``data``."""

    seq: int
    type: str
    created_at: str
    data: Any


class AuditRecord(TypedDict):
    """One record of a namespace's hash-chained audit log."""

    seq: int
    time: str
    time_ms: int
    principal: str
    action: str
    resource: str
    decision: str
    status: int
    request_id: str
    detail: str
    prev_hash: str
    hash: str


class AuditVerification(TypedDict):
    """The result of recomputing a chain: ``ok``, ``records`` checked, ``first_bad_seq``."""

    ok: bool
    records: int
    first_bad_seq: int | None
    pruned: int
    pruned_at: NotRequired[str]


#: Metered usage from ``from`` to ``to`` (RFC 3339) in buckets of a ``granularity``
#: (``minute``, ``hour``, ``day``): ``totals`` and each of ``buckets`` (with its ``start``) have
#: ``cpu_seconds``, ``memory_byte_seconds``, ``sandbox_seconds``, ``memory_peak_bytes``,
#: ``exec_count``, ``quota_rejections``, ``io_read_bytes``, ``io_write_bytes``,
#: ``egress_bytes`` (both directions), ``egress_connections``, ``egress_denied``; ``disk_bytes``
#: allocated and ``disk_used_bytes`` written now.
UsageReport = TypedDict(
    "UsageReport",
    {
        "namespace": str,
        "from": str,
        "to": str,
        "granularity": str,
        "totals": dict[str, Any],
        "disk_bytes": int,
        "disk_used_bytes": int,
        "egress_bytes": int,
        "buckets": list[dict[str, Any]],
    },
)
