"""A tiny HTTP server for cutover's tests: serves on the socket cutover
passes as fd 3 (LISTEN_FDS), answers `/` with the contents of ./version and
its pid, `/healthz` with 200, and says READY=1 on NOTIFY_SOCKET if set.

Behaviour switches, read from files in the working directory at start:
  boot-delay       seconds to sleep before serving (a slow boot)
  crash            exit 3 at start (broken code)
  unhealthy        /healthz answers 503 (lives, but never ready)
  unhealthy-after  seconds after start from which /healthz answers 503
  greedy-stop      seconds to go on accepting after SIGTERM, closing each
                   connection unanswered: a server that drops what it
                   accepted but had not read yet when it shuts down
"""
import os, signal, socket, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

if os.path.exists("crash"):
    print("fdserver: broken release, exiting", file=sys.stderr, flush=True)
    sys.exit(3)
if os.path.exists("boot-delay"):
    time.sleep(float(open("boot-delay").read().strip() or 0))

assert os.environ.get("LISTEN_PID") == str(os.getpid()), "LISTEN_PID must be our pid"
assert os.environ.get("LISTEN_FDS") == "1"
VERSION = open("version").read().strip() if os.path.exists("version") else "none"
STARTED = time.monotonic()

def setting(name):
    return float(open(name).read().strip() or 0) if os.path.exists(name) else None

UNHEALTHY = os.path.exists("unhealthy")
UNHEALTHY_AFTER = setting("unhealthy-after")
GREEDY_STOP = setting("greedy-stop")

def healthy():
    if UNHEALTHY:
        return False
    return UNHEALTHY_AFTER is None or time.monotonic() - STARTED < UNHEALTHY_AFTER

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        if self.path == "/healthz" and not healthy():
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = (f"{VERSION} {os.getpid()}\n" if self.path != "/healthz" else "ok\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

class FdServer(HTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self.socket = socket.socket(fileno=3)
        # Another instance on the same socket may take the connection that
        # woke us; a blocking accept() would then sleep past our SIGTERM.
        self.socket.setblocking(False)

server = FdServer()
server.timeout = 0.05
stopping = False

def stop(*_):
    # Graceful, like a real app server: finish the request in hand, accept no
    # more; what waits in the shared backlog goes to the other instance.
    global stopping
    stopping = True

signal.signal(signal.SIGTERM, stop)
notify = os.environ.get("NOTIFY_SOCKET")
if notify:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(b"READY=1", notify)
while not stopping:
    server.handle_request()
if GREEDY_STOP:
    end = time.monotonic() + GREEDY_STOP
    while time.monotonic() < end:
        try:
            conn, _ = server.socket.accept()
            conn.close()
        except BlockingIOError:
            time.sleep(0.002)
