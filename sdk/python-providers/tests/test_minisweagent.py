"""mini-swe-agent's ``DefaultAgent`` loop with its scripted ``DeterministicModel``, every step
run in a Bulkhead sandbox by :class:`minisweagent_bulkhead.BulkheadEnvironment`: it writes a
file, reads it back, fails a command, and submits by mini-swe-agent's convention."""

from __future__ import annotations

import os
import platform

os.environ.setdefault("MSWEA_SILENT_STARTUP", "1")

import bulkhead
from minisweagent.agents.default import DefaultAgent
from minisweagent.environments import get_environment
from minisweagent.models.test_models import DeterministicModel, make_output
from minisweagent_bulkhead import BulkheadEnvironment

from conftest import assert_gone

SYSTEM = "You run commands on {{system}} ({{machine}}) in {{cwd}}."
INSTANCE = "{{task}}"


def test_the_agent_loop_runs_each_step_in_a_sandbox(client: bulkhead.Client) -> None:
    steps = [
        "printf 'hello from step one\\n' > note.txt && echo wrote",
        "cat note.txt; echo to-stderr >&2",
        "cat missing.txt",
        "sleep 5",
        "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT; cat note.txt",
    ]
    model = DeterministicModel(outputs=[make_output(f"step {i}", [{"command": c}]) for i, c in enumerate(steps)])
    env = get_environment(
        {"environment_class": "minisweagent_bulkhead.BulkheadEnvironment", "cwd": "/tmp", "timeout": 2, "memory_bytes": 256 << 20},
    )
    assert isinstance(env, BulkheadEnvironment)
    assert env.sandbox is not None
    sandbox_id = env.sandbox.id
    try:
        agent = DefaultAgent(model, env, system_template=SYSTEM, instance_template=INSTANCE, step_limit=10, cost_limit=0)
        result = agent.run("Leave a note and submit it.")
    finally:
        env.cleanup()
    assert result["exit_status"] == "Submitted", agent.messages[-1]
    assert result["submission"] == "hello from step one\n"
    system = agent.messages[0]["content"]
    # The sandbox's platform, as uname tells inside it: the host's kernel and machine.
    assert system == f"You run commands on Linux ({platform.machine()}) in /tmp.", system
    observations = [m["content"] for m in agent.messages if m["role"] == "user"][1:]
    assert len(observations) == 4, observations
    assert "<returncode>0</returncode>" in observations[0] and "wrote" in observations[0]
    # The second step ran in the configured cwd, its stderr merged into the output.
    assert "hello from step one" in observations[1] and "to-stderr" in observations[1], observations[1]
    assert "<returncode>1</returncode>" in observations[2] and "No such file" in observations[2]
    assert "<returncode>-1</returncode>" in observations[3] and "timed out after 2 seconds" in observations[3]
    assert_gone(client, sandbox_id)
