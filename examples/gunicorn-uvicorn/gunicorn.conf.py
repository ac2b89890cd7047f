# gunicorn settings for the ASGI example app (app/app.py) with uvicorn workers: the
# usual FastAPI production setup, under cutover. Checked with gunicorn 27.0.1 and
# uvicorn 0.54.0 (scripts/python-requirements.txt). Pass it with an ABSOLUTE path:
#   gunicorn --config /etc/cutover/gunicorn.conf.py app:app
# examples/gunicorn/gunicorn.conf.py explains the settings shared with the sync
# example at length; in short:
# * No `bind`: gunicorn takes fd 3 from LISTEN_FDS/LISTEN_PID by itself (never add
#   `--bind fd://3` too: fd 3 would be used twice, EBADF).
# * worker_class: uvicorn's worker for gunicorn. Its shutdown closes connections it
#   accepted but has not read yet; cutover's drain (the instance's own socket, no new
#   connections, empty queue before SIGTERM) leaves it none. uvicorn 0.54 still ships
#   `uvicorn.workers.UvicornWorker` (with a DeprecationWarning that points at the
#   separate `uvicorn-worker` package, whose class is `uvicorn_worker.UvicornWorker`:
#   switch the base class to it when uvicorn drops the module).
# * control_socket_disable: gunicorn >= 25.1's control socket sits at one fixed path
#   that two overlapping instances would fight over.
# * graceful_timeout (20 s) < cutover's stop_timeout (25 s): on SIGTERM the master
#   passes SIGTERM to the workers, uvicorn finishes requests in flight, and gunicorn
#   kills what is left before cutover has to.
# * Readiness: gunicorn's master sends READY=1 before any worker imported the app,
#   so the master is kept away from NOTIFY_SOCKET and each worker sends READY=1 in
#   post_worker_init, which gunicorn calls after the worker imported the app (also
#   for UvicornWorker: it runs before the worker's event loop starts serving).
import os
import socket

workers = 2  # the command line's --workers wins
control_socket_disable = True
graceful_timeout = 20

_NOTIFY_ENV = "CUTOVER_NOTIFY_SOCKET"  # where NOTIFY_SOCKET is kept, away from the master


def _notify(state):
    addr = os.environ.get(_NOTIFY_ENV)
    if not addr:
        return
    if addr[0] == "@":  # abstract socket
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError:
        pass  # readiness is advisory: never break a worker over it


def on_starting(server):
    # runs before the master's own premature READY=1
    addr = os.environ.pop("NOTIFY_SOCKET", None)
    if addr:
        os.environ[_NOTIFY_ENV] = addr


def post_worker_init(worker):
    # worker, after importing the app and just before it starts serving
    _notify(f"READY=1\nSTATUS=worker {worker.pid} booted (age {worker.age})")


worker_class = "uvicorn.workers.UvicornWorker"
