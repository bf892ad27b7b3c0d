"""The load generator's floor: a trivial HTTP/1.1 server that reads each request's body and answers
a fixed JSON of our answer's size, with no model behind it. Measured by the same generator on the
same cores, its latencies are what the generator, the loopback and one Python server thread cost
by themselves; a served p99 near it has nothing left to remove on the server's side.

    python -m scripts.bench.peers.floor --port 8099     # then loadtest --url http://127.0.0.1:8099/x
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# An answer as long as ours (five predictions, model, version): the same bytes on the wire.
ANSWER = json.dumps({"model": "floor", "version": "0", "predictions": [
    {"label": f"class_{i:03d}", "index": i, "probability": 0.2} for i in range(5)]}).encode()


class Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as TorchServe and uvicorn
    # TCP_NODELAY, as Netty and uvicorn set it: headers and body leave as two writes, and with
    # Nagle on, the body would wait for the client's delayed ACK (40 ms on Linux).
    disable_nagle_algorithm = True

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(ANSWER)))
        self.end_headers()
        self.wfile.write(ANSWER)

    def do_GET(self) -> None:  # noqa: N802
        self.do_POST()

    def log_message(self, *args) -> None:  # no line per request
        pass


def serve(port: int) -> None:
    ThreadingHTTPServer(("127.0.0.1", port), Answer).serve_forever()


def start(port: int, timeout: float = 30.0) -> subprocess.Popen:
    """The floor server in its own process (as the servers under test are), once it answers."""
    proc = subprocess.Popen([sys.executable, "-m", "scripts.bench.peers.floor", "--port", str(port)],
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the floor server exited with {proc.returncode}") from None
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError(f"the floor server did not answer within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    serve(parser.parse_args(argv).port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
