"""Answers initialize and session/new, then on session/prompt floods session/update
agent_message_chunk notifications without end (and never answers the prompt), until the
reader closes the pipe. Python standard library only."""

import json
import sys


def send(obj):
    sys.stdout.buffer.write(json.dumps(obj).encode() + b"\n")
    sys.stdout.buffer.flush()


def main():
    for line in sys.stdin.buffer:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        method = msg.get("method")
        if method == "initialize":
            send({"jsonrpc": "2.0", "id": msg["id"], "result": {"protocolVersion": 1, "agentCapabilities": {}}})
        elif method == "session/new":
            send({"jsonrpc": "2.0", "id": msg["id"], "result": {"sessionId": "flood"}})
        elif method == "session/prompt":
            session = msg.get("params", {}).get("sessionId", "flood")
            out = sys.stdout.buffer
            n = 0
            while True:
                batch = []
                for _ in range(256):
                    batch.append(
                        json.dumps(
                            {
                                "jsonrpc": "2.0",
                                "method": "session/update",
                                "params": {
                                    "sessionId": session,
                                    "update": {
                                        "sessionUpdate": "agent_message_chunk",
                                        "content": {"type": "text", "text": "flood %d " % n + "x" * 200},
                                    },
                                },
                            }
                        ).encode()
                        + b"\n"
                    )
                    n += 1
                out.write(b"".join(batch))
                out.flush()


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, ConnectionResetError):
        sys.stderr.write("flood: the reader closed the pipe\n")
        sys.exit(0)
