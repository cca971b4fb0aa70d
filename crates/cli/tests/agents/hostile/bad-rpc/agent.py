"""Speaks broken JSON-RPC around otherwise correct answers. Python standard library only.

Before answering initialize it sends: a response with a wrong id, a result and an error for
requests never made, a request with an unknown method, a notification with an unknown method and
a message without "jsonrpc"; then the right answer. On session/new: a request with invalid
params, the right answer, then the same answer again. On session/prompt: updates for an unknown
session and of an unknown kind, then the right answer. Every answer the client gives to its
requests is logged to stderr ("bad-rpc: client answered ...")."""

import json
import sys


def send(obj):
    sys.stdout.buffer.write(json.dumps(obj).encode() + b"\n")
    sys.stdout.buffer.flush()


def wrong_id(i):
    return i + 1000 if isinstance(i, int) else "%s-wrong" % i


def main():
    session = "bad-rpc-session"
    for line in sys.stdin.buffer:
        try:
            msg = json.loads(line)
        except ValueError:
            sys.stderr.write("bad-rpc: client sent a line that is not JSON\n")
            continue
        if not isinstance(msg, dict):
            continue
        method = msg.get("method")
        if method is None:
            sys.stderr.write("bad-rpc: client answered %s\n" % json.dumps(msg))
            sys.stderr.flush()
            continue
        if "id" not in msg:
            continue
        i = msg["id"]
        if method == "initialize":
            send({"jsonrpc": "2.0", "id": wrong_id(i), "result": {"protocolVersion": 1}})
            send({"jsonrpc": "2.0", "id": "never-asked", "result": {}})
            send({"jsonrpc": "2.0", "id": 424242, "error": {"code": -32603, "message": "an error for nothing"}})
            send({"jsonrpc": "2.0", "id": "bad-rpc-1", "method": "bulkhead/no_such_method", "params": {}})
            send({"jsonrpc": "2.0", "method": "bulkhead/no_such_notification", "params": {}})
            send({"id": "bad-rpc-2", "method": "session/update", "params": {}})
            send({"jsonrpc": "2.0", "id": i, "result": {"protocolVersion": 1, "agentCapabilities": {}}})
        elif method == "session/new":
            send({"jsonrpc": "2.0", "id": "bad-rpc-3", "method": "session/request_permission", "params": {"sessionId": 7}})
            answer = {"jsonrpc": "2.0", "id": i, "result": {"sessionId": session}}
            send(answer)
            send(answer)
        elif method == "session/prompt":
            send({"jsonrpc": "2.0", "method": "session/update", "params": {"sessionId": "no-such-session", "update": {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "to nobody"}}}})
            send({"jsonrpc": "2.0", "method": "session/update", "params": {"sessionId": session, "update": {"sessionUpdate": "no_such_update"}}})
            send({"jsonrpc": "2.0", "id": i, "result": {"stopReason": "end_turn"}})
        else:
            send({"jsonrpc": "2.0", "id": i, "error": {"code": -32601, "message": "Method not found"}})


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, ConnectionResetError):
        sys.exit(0)
