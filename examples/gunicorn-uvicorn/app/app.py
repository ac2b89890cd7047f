# A tiny ASGI app for cutover's uvicorn and gunicorn-uvicorn examples and
# tests/integration/program/servers.rs (what a FastAPI app is to the server, without FastAPI).
#   /         200 "hello from <VERSION> pid <worker pid> ppid <parent pid> dir <release dir>"
#   /healthz  200 "ok"
#   other     404
# The first words match examples/gunicorn/app/app.py, so the tests read the version
# the same way (the 3rd word). Standard library only: a release needs nothing beyond
# the server (uvicorn; gunicorn too for the gunicorn-uvicorn example).
import os

VERSION = "v1"

# where this code was loaded from: releases/<id>, even when imported via the
# `current` symlink (its path is resolved once, at import)
RELEASE_DIR = os.path.dirname(os.path.realpath(__file__))


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        # uvicorn and its gunicorn worker run the lifespan protocol: say yes to both
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/healthz":
        status, body = 200, b"ok\n"
    elif path == "/":
        body = (
            f"hello from {VERSION} pid {os.getpid()} ppid {os.getppid()} "
            f"dir {RELEASE_DIR}\n"
        ).encode()
        status = 200
    else:
        status, body = 404, b"not found\n"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"x-app-version", VERSION.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
