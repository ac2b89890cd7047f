# Starts uvicorn on the socket cutover holds (fd 3) with the example's settings;
# the command in cutover.toml: /opt/venv/bin/python /etc/cutover/serve.py
# Checked with uvicorn 0.54.0 (scripts/python-requirements.txt).
#
# Why not `uvicorn --fd 3 app:app`: uvicorn wraps the fd as an AF_UNIX socket
# (socket.fromfd(fd, AF_UNIX, ...) in uvicorn/server.py and config.py), whatever it
# really is. asyncio then takes every accepted TCP connection for a Unix one and never
# sets TCP_NODELAY on it, so on a kept-alive connection each answer (headers and body
# are two writes) waits for the client's delayed ACK: ~40 ms per request, 90 requests/s
# on 4 connections instead of thousands. Here the socket is wrapped with its real
# family (socket.socket(fileno=3) asks the kernel) and handed to uvicorn's Server, which
# is what the CLI runs too. One more thing the CLI cannot do: send sd_notify READY=1
# once the app serves (cutover.toml's [ready] notify).
#
# No drain of its own is needed: uvicorn's graceful shutdown closes connections it
# accepted but has not read a request from yet, and cutover sends SIGTERM only once
# no new connection reaches this instance and its accept queue is empty ([reload]
# drain, on the instance's own socket).
#
# Without LISTEN_FDS (run by hand) uvicorn binds 127.0.0.1:$PORT (default 8000) itself.
import os
import socket
import sys

import uvicorn

# `app:app` is imported from the working directory, the release cutover started
# this instance in (as the CLI's default --app-dir "." does).
sys.path.insert(0, os.getcwd())

def notify(state):
    """Sends `state` to NOTIFY_SOCKET (sd_notify), if cutover set one."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr[0] == "@":  # abstract socket
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError:
        pass  # readiness is advisory: never break the server over it


class Server(uvicorn.Server):
    # uvicorn sends no READY=1 of its own. Server.run imports the app first
    # (Config.load, which exits on an import error), then startup() runs the
    # lifespan startup and starts accepting; `started` is set only if all of that
    # worked. So READY=1 here means: this release's app imported, started, serves.
    async def startup(self, sockets=None):
        await super().startup(sockets=sockets)
        if self.started:
            notify(f"READY=1\nSTATUS=uvicorn {uvicorn.__version__} serving pid {os.getpid()}")


config = uvicorn.Config(
    "app:app",
    port=int(os.environ.get("PORT", "8000")),
    # after SIGTERM/SIGINT: requests in flight get this long, then are cut
    # (under cutover's stop_timeout)
    timeout_graceful_shutdown=20,
    # a line per request would go to cutover's output
    access_log=False,
)
server = Server(config)

sockets = None
if os.environ.get("LISTEN_FDS") and os.environ.get("LISTEN_PID") == str(os.getpid()):
    # fd 3, as systemd passes it; not inherited by anything this process starts
    sockets = [socket.socket(fileno=3)]
    sockets[0].set_inheritable(False)
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)

# Installs uvicorn's SIGTERM/SIGINT handlers: stop accepting, close idle keep-alive
# connections, let requests in flight finish, run the lifespan shutdown, exit.
server.run(sockets=sockets)
# an app that failed to import or start makes uvicorn return without serving
sys.exit(0 if server.started else 3)
