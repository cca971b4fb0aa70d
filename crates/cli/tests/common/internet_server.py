# The test internet's web servers (see internet.rs): HTTP on :80, HTTPS on :443 (certificate
# from the test's CA) and a plain TCP sink on :9000, all on every address of the test network
# namespace, serving the files of ROOT (the package index, the git repository) plus
#   GET  /bytes/N   N bytes of "x" (N at most 1 GiB)
#   GET  /hello     "hello\n"
#   POST /v1/chat/completions  an OpenAI-compatible model with a script (see MODEL below)
#   POST|PUT any    reads the body (Content-Length) and answers {"received": n}
# Every connection and request is written to stdout as one JSON line, flushed:
#   {"kind": "request", "conn", "server", "local", "sni", "host", "method", "path", "status", "headers"}
#   {"kind": "connection", "conn", "server", "local", "port", "peer", "sni", "bytes_in", "bytes_out",
#    "requests", "tls_error"}
# bytes_in/bytes_out are the kernel's TCP payload counts (TCP_INFO bytes_received/bytes_acked)
# read when the connection ends, so TLS records are counted as they crossed the wire.
# Usage: internet_server.py ROOT CERT KEY
import http.server
import itertools
import json
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time

ROOT, CERT, KEY = sys.argv[1], sys.argv[2], sys.argv[3]
LOCK = threading.Lock()
IDS = itertools.count(1)


def emit(record):
    line = json.dumps(record)
    with LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def tcp_counts(sock, fin_in):
    """(bytes in, bytes out) of a connection whose end this side sent (and whose end the peer
    sent when fin_in): TCP_INFO counts each FIN as a byte, and out is read once all is acked."""
    try:
        for _ in range(100):
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 192)
            (unacked,) = struct.unpack_from("I", info, 24)
            if unacked == 0:
                break
            time.sleep(0.02)
        acked, received = struct.unpack_from("QQ", info, 120)
        return received - (1 if fin_in and received else 0), max(acked - 1, 0)
    except OSError:
        return None, None


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def __init__(self, *args, conn=None, **kwargs):
        self.conn = conn
        super().__init__(*args, directory=ROOT, **kwargs)

    def log_message(self, *args):
        pass

    def send_response(self, code, message=None):
        self._status = code
        super().send_response(code, message)

    def record(self):
        self.conn["requests"] += 1
        emit({
            "kind": "request",
            "conn": self.conn["conn"],
            "server": self.conn["server"],
            "local": self.conn["local"],
            "sni": self.conn["sni"],
            "host": self.headers.get("Host"),
            "method": self.command,
            "path": self.path,
            "status": getattr(self, "_status", None),
            "headers": {k: v for k, v in self.headers.items()},
        })

    def do_GET(self):
        if self.path.startswith("/bytes/"):
            try:
                n = int(self.path[len("/bytes/"):])
            except ValueError:
                n = -1
            if n < 0 or n > (1 << 30):
                self.send_error(400)
            else:
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(n))
                self.end_headers()
                chunk = b"x" * 65536
                left = n
                while left > 0:
                    self.wfile.write(chunk[: min(left, len(chunk))])
                    left -= min(left, len(chunk))
        elif self.path == "/hello":
            body = b"hello\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            super().do_GET()
        self.record()

    def do_HEAD(self):
        super().do_HEAD()
        self.record()

    def do_POST(self):
        if self.path == "/v1/chat/completions":
            n = int(self.headers.get("Content-Length") or 0)
            try:
                answer = model(json.loads(self.rfile.read(n)))
            except (ValueError, KeyError, IndexError) as e:
                answer = None
                sys.stderr.write(f"model: {e!r}\n")
            body = json.dumps(answer or {"error": {"message": "no script for this request"}}).encode()
            self.send_response(200 if answer else 400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.record()
            return
        n = int(self.headers.get("Content-Length") or 0)
        got = 0
        while got < n:
            b = self.rfile.read(min(65536, n - got))
            if not b:
                break
            got += len(b)
        body = json.dumps({"received": got}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.record()

    do_PUT = do_POST


# MODEL: a scripted OpenAI-compatible chat model for the agent tests. The turn's script is the
# first word of the last user message; its step is the number of tool answers since then.
#   fix    read_file calc.py, write_file calc.py (the fix), run `python3 test_calc.py`, then say
#          "Fixed add(). The test said: <the run's answer, on one line>"
#   hello  says "Hello from the model."
FIXED_CALC = "def add(a, b):\n    return a + b\n"


def model(req):
    messages = req["messages"]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    script = (messages[last_user]["content"] or "").split()[0]
    tools = [m for m in messages[last_user + 1:] if m["role"] == "tool"]
    step = len(tools)
    usage = {"prompt_tokens": 100 + step, "completion_tokens": 10 + step, "total_tokens": 110 + 2 * step}

    def call(name, **args):
        tool = {"id": f"call_{script}_{step}", "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)}}
        return {"id": f"c{step}", "object": "chat.completion", "model": req.get("model", "m"), "usage": usage,
                "choices": [{"index": 0, "finish_reason": "tool_calls",
                             "message": {"role": "assistant", "content": None, "tool_calls": [tool]}}]}

    def say(text):
        return {"id": f"s{step}", "object": "chat.completion", "model": req.get("model", "m"), "usage": usage,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}]}

    if script == "fix":
        if step == 0:
            return call("read_file", path="calc.py")
        if step == 1:
            return call("write_file", path="calc.py", content=FIXED_CALC)
        if step == 2:
            return call("run", command="python3 test_calc.py")
        return say("Fixed add(). The test said: " + " ".join((tools[-1]["content"] or "").split()))
    if script == "hello":
        return say("Hello from the model.")
    return None


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, name, port, tls):
        self.name = name
        self.tls = tls
        super().__init__(("0.0.0.0", port), None)

    def process_request_thread(self, sock, peer):
        conn = {
            "conn": next(IDS),
            "server": self.name,
            "local": sock.getsockname()[0],
            "port": sock.getsockname()[1],
            "peer": peer[0],
            "sni": None,
            "requests": 0,
            "tls_error": None,
        }
        stream = sock
        try:
            if self.tls is not None:
                sock.settimeout(30)
                stream = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                try:
                    stream.do_handshake()
                except (ssl.SSLError, OSError) as e:
                    conn["tls_error"] = type(e).__name__ + ": " + str(e)
                    conn["sni"] = getattr(stream, "bulkhead_sni", None)
                    raise
                conn["sni"] = getattr(stream, "bulkhead_sni", None)
            if stream is not None:
                stream.settimeout(60)
                if self.name == "tcp":
                    stream.sendall(b"hello\n")
                    while stream.recv(65536):
                        pass
                else:
                    Handler(stream, peer, self, conn=conn)
        except (OSError, ValueError):
            pass
        finally:
            counted = stream
            try:
                counted.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            fin_in = False
            try:
                counted.settimeout(2)
                while counted.recv(65536):
                    pass
                fin_in = True
            except (OSError, ValueError):
                pass
            conn["bytes_in"], conn["bytes_out"] = tcp_counts(counted, fin_in)
            try:
                counted.close()
            except OSError:
                pass
            conn["kind"] = "connection"
            emit(conn)


def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(CERT, KEY)

    def on_sni(s, name, _c):
        s.bulkhead_sni = name

    ctx.sni_callback = on_sni
    servers = [Server("http", 80, None), Server("https", 443, ctx), Server("tcp", 9000, None)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    emit({"kind": "ready"})
    threading.Event().wait()


main()
