# gunicorn settings for the Django example under cutover (gunicorn 27.0.1). It ships
# in the repository, so every release carries its own; cutover starts each gunicorn
# in releases/<sha>, where `--config gunicorn.conf.py` finds it. The reasons for each
# setting are spelled out in examples/gunicorn/gunicorn.conf.py; in short:
# * no `bind`: gunicorn takes cutover's held socket from LISTEN_FDS (fd 3);
# * control_socket_disable: two overlapping gunicorns would fight over one path;
# * graceful_timeout under cutover's stop_timeout, so requests in flight finish;
# * READY=1 from each worker once Django is loaded, not from the master (whose own
#   READY=1 comes before any worker imported the release).
import os
import socket

wsgi_app = "mysite.wsgi:application"
workers = 2  # the command line's --workers wins
control_socket_disable = True
graceful_timeout = 25

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
    addr = os.environ.pop("NOTIFY_SOCKET", None)
    if addr:
        os.environ[_NOTIFY_ENV] = addr


def post_worker_init(worker):
    # after the worker imported mysite.wsgi (settings read, apps loaded)
    _notify(f"READY=1\nSTATUS=worker {worker.pid} booted (age {worker.age})")
