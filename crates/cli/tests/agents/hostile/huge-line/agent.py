"""Answers initialize, then answers session/new with one 64 MiB line that never ends (no
newline), written in 1 MiB pieces as fast as the reader takes them; then waits for the end of
its stdin. Python standard library only."""

import json
import sys

SIZE = 64 * 1024 * 1024
PIECE = 1024 * 1024


def send(obj):
    sys.stdout.buffer.write(json.dumps(obj).encode() + b"\n")
    sys.stdout.buffer.flush()


def main():
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("method") == "initialize":
            send({"jsonrpc": "2.0", "id": msg["id"], "result": {"protocolVersion": 1, "agentCapabilities": {}}})
        elif msg.get("method") == "session/new":
            head = b'{"jsonrpc": "2.0", "id": %s, "result": {"sessionId": "' % json.dumps(msg["id"]).encode()
            out.write(head)
            written = len(head)
            piece = b"x" * PIECE
            while written < SIZE:
                n = min(PIECE, SIZE - written)
                out.write(piece[:n])
                written += n
            out.flush()
            sys.stderr.write("huge-line: wrote %d bytes without a newline\n" % written)
            sys.stderr.flush()


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, ConnectionResetError):
        sys.stderr.write("huge-line: the reader closed the pipe\n")
        sys.exit(0)
