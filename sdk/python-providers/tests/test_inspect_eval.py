"""A real inspect-ai eval with ``sandbox="bulkhead"``: a scripted model (``mockllm/model``)
calls inspect-ai's ``bash`` tool, which runs in the sample's Bulkhead sandbox; the scorer reads
the file the command wrote. A second sample asks for its own sandbox configuration."""

from __future__ import annotations

import os
from pathlib import Path

import bulkhead
from inspect_ai import Task
from inspect_ai import eval as inspect_eval
from inspect_ai.dataset import Sample
from inspect_ai.model import ModelOutput, ModelUsage, get_model
from inspect_ai.scorer import CORRECT, INCORRECT, Score, Target, accuracy, scorer
from inspect_ai.solver import Generate, TaskState, generate, solver, use_tools
from inspect_ai.tool import bash
from inspect_ai.util import SandboxEnvironmentSpec, sandbox, store
from inspect_bulkhead import BulkheadSandboxConfig, BulkheadSandboxEnvironment

from conftest import assert_gone


@solver
def note_sandbox():
    """Records the sample's sandbox (id, memory) in its store, for the test to look at."""

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        env = sandbox().as_type(BulkheadSandboxEnvironment)
        store().set("sandbox_id", env.sandbox.id)
        store().set("memory_bytes", env.sandbox.data.get("memory_bytes"))
        store().set("connection", (await env.connection()).command)
        # exec_remote: inspect-ai writes its bundled sandbox tools in with write_file and
        # drives them with exec.
        r = await sandbox().exec_remote(["sh", "-c", "echo out; echo err >&2; exit 4"], stream=False)
        store().set("exec_remote", [r.returncode, r.stdout, r.stderr])
        return state

    return solve


@scorer(metrics=[accuracy()])
def answer_file():
    """Correct when the sandbox's ``answer.txt`` (in the sample's working directory) holds the target."""

    async def score(state: TaskState, target: Target) -> Score:
        text = await sandbox().read_file("answer.txt")
        return Score(value=CORRECT if text.strip() == target.text else INCORRECT, answer=text)

    return score


def scripted_model():
    """``mockllm/model`` answering each sample with a ``bash`` call, then a final answer. Each
    output names its usage: without one, mockllm counts tokens with a tokenizer it would
    download."""

    def outputs():
        while True:
            call = ModelOutput.for_tool_call(
                "mockllm/model", "bash", {"command": "echo $((6 * 7)) > answer.txt && cat answer.txt && id -un"}
            )
            answer = ModelOutput.from_content("mockllm/model", "the answer is in answer.txt")
            for output in (call, answer):
                output.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
                yield output

    return get_model("mockllm/model", custom_outputs=outputs())


def test_an_eval_runs_its_tool_calls_in_bulkhead_sandboxes(tmp_path: Path, client: bulkhead.Client) -> None:
    own = BulkheadSandboxConfig(memory_bytes=256 << 20, user="nobody", workdir="/home/agent")
    task = Task(
        dataset=[
            Sample(id="default", input="What is 6 * 7? Write it to answer.txt.", target="42"),
            Sample(
                id="configured",
                input="What is 6 * 7? Write it to answer.txt.",
                target="42",
                sandbox=SandboxEnvironmentSpec("bulkhead", own),
            ),
        ],
        solver=[note_sandbox(), use_tools(bash(timeout=60)), generate()],
        scorer=answer_file(),
        sandbox="bulkhead",
    )
    [log] = inspect_eval(task, model=scripted_model(), log_dir=str(tmp_path), display="none", max_samples=1)
    assert log.status == "success", log.error
    assert log.samples is not None and len(log.samples) == 2
    samples = {s.id: s for s in log.samples}
    for sample in samples.values():
        assert sample.scores is not None
        [score] = sample.scores.values()
        assert score.value == CORRECT, (sample.id, score)
        # The tool's output came back from the sandbox to the model.
        tool_messages = [m for m in sample.messages if m.role == "tool"]
        assert tool_messages and tool_messages[0].text.startswith("42\n"), sample.messages
        # The sample's sandbox was deleted when the sample ended.
        assert_gone(client, sample.store["sandbox_id"])
    # The bash tool ran as the configured user, in a sandbox of the configured size.
    assert [m for m in samples["configured"].messages if m.role == "tool"][0].text == "42\nnobody\n"
    assert [m for m in samples["default"].messages if m.role == "tool"][0].text == "42\nroot\n"
    assert samples["configured"].store["memory_bytes"] == 256 << 20
    assert samples["configured"].store["sandbox_id"] != samples["default"].store["sandbox_id"]
    for sample in samples.values():
        assert sample.store["exec_remote"] == [4, "out\n", "err\n"], sample.id
    # A person gets into a sample's sandbox with the CLI, where its commands run.
    configured = samples["configured"].store
    assert configured["connection"] == f"bulkhead shell --ns {os.environ['BULKHEAD_NAMESPACE']} {configured['sandbox_id']} --cwd /home/agent --user nobody"
