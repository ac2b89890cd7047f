# gunicorn settings for running the example app under cutover (checked with gunicorn
# 27.0.1, pinned in scripts/python-requirements.txt). Pass it with an ABSOLUTE path:
#   gunicorn --config /etc/cutover/gunicorn.conf.py --chdir /srv/app/current app:app
# (a relative --config is looked up in the current directory, which gunicorn changes to
# --chdir, so it breaks on SIGHUP). Unknown names are ignored by older gunicorns, so
# settings live here rather than as flags an older gunicorn would reject.
#
# How the flags and settings fit cutover:
# * No `bind`. cutover holds the listening socket and hands it over as fd 3 with
#   LISTEN_FDS=1 and LISTEN_PID=<gunicorn's own pid>. gunicorn then uses fd 3 and
#   ignores every bind address (gunicorn/arbiter.py:190-204, sock.py:205-214); it pops
#   LISTEN_FDS/LISTEN_PID (systemd.py:41-43), so workers never see them. Do NOT also pass
#   `--bind fd://3`: fd 3 is then used twice and gunicorn dies with EBADF. If LISTEN_PID
#   is not gunicorn's pid (e.g. a wrapper shell that does not `exec`), gunicorn silently
#   binds its default 127.0.0.1:8000 (0.0.0.0:$PORT when PORT is set) instead.
# * `--chdir /srv/app/current` (on the command line): on SIGHUP gunicorn chdirs to that
#   path again, so it follows the flipped symlink and new workers import the new release.
#   Without it gunicorn uses $PWD when $PWD names the current directory, else the
#   resolved releases/<id>, and a SIGHUP then reloads the OLD code.
# * control_socket_disable: gunicorn >= 25.1 opens a control socket at one fixed path
#   ($XDG_RUNTIME_DIR or ~/.gunicorn/gunicorn.ctl). Two overlapping instances would
#   fight over it, and the old one deletes it when it stops.
# * graceful_timeout (25 s) stays under cutover's stop_timeout (30 s), so in-flight
#   requests finish before cutover escalates to SIGKILL.
# * Readiness (NOTIFY_SOCKET): gunicorn's master sends "READY=1" right after taking the
#   socket, BEFORE any worker has imported the app (arbiter.py:210), so that message
#   proves nothing about the new code. These hooks hide NOTIFY_SOCKET from the master and
#   send READY=1 from each worker once the app has been imported (post_worker_init),
#   and RELOADING=1 from the master when a SIGHUP starts a reload. cutover must
#   therefore accept messages from any process of the instance, not only its main pid.
import os
import socket
import time

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
    # runs before the master's own premature READY=1 (arbiter.py:184 vs :210)
    addr = os.environ.pop("NOTIFY_SOCKET", None)
    if addr:
        os.environ[_NOTIFY_ENV] = addr


def on_reload(server):
    # master, on SIGHUP, after re-reading the config and before forking new workers
    _notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}\n"
            "STATUS=reloading")


def post_worker_init(worker):
    # worker, after importing the app and just before it starts accepting
    _notify(f"READY=1\nSTATUS=worker {worker.pid} booted (age {worker.age})")
