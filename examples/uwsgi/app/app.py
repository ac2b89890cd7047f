# A tiny WSGI app for cutover's uWSGI example and tests/integration/program/servers.rs
# (the same app as examples/gunicorn/app/app.py: uWSGI runs any WSGI app).
#   /         200 "hello from <VERSION> pid <worker pid> ppid <master pid> dir <release dir>"
#   /healthz  200 "ok"
#   other     404
# A deploy edits VERSION (or ships a new releases/<id>/app.py) to prove which code
# answers. The `X-App-Version` and `X-Master-Pid` headers say the same thing to
# probes that only look at headers (the master pid tells two uWSGI instances apart
# while they overlap on one shared listening socket).
# Standard library only, so no release needs anything beyond uWSGI and its python3 plugin.
import os

VERSION = "v1"

# where this code was loaded from: releases/<id>, even when imported via the
# `current` symlink (its path is resolved once, at import)
RELEASE_DIR = os.path.dirname(os.path.realpath(__file__))


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/healthz":
        status, body = "200 OK", b"ok\n"
    elif path == "/":
        body = (
            f"hello from {VERSION} pid {os.getpid()} ppid {os.getppid()} "
            f"dir {RELEASE_DIR}\n"
        ).encode()
        status = "200 OK"
    else:
        status, body = "404 Not Found", b"not found\n"
    start_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("X-App-Version", VERSION),
            ("X-Master-Pid", str(os.getppid())),
        ],
    )
    return [body]
