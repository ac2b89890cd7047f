// A tiny HTTP app for cutover's Node example and tests/integration/program/servers.rs,
// on Node's own `http` module (no npm packages, so a release is this one file).
//   /         200 "hello from <VERSION> pid <pid> ppid <parent pid> dir <release dir>"
//   /healthz  200 "ok"
//   other     404
// The first words match examples/gunicorn/app/app.py, so the tests read the
// version the same way (the 3rd word).
//
// Socket: cutover holds the listening socket and passes it as fd 3
// (LISTEN_FDS=1). Node has no socket activation of its own, but
// `listen({ fd: 3 })` accepts on an inherited listening socket. Without
// LISTEN_FDS (run by hand) it binds PORT itself.
//
// Stop: cutover sends SIGTERM (stop_signal). Node's default for SIGTERM is to
// die at once, cutting requests in flight, so the handler below stops
// accepting (server.close: new connections stay queued on cutover's socket
// for the next instance), closes idle keep-alive connections, lets requests
// in flight finish, then exits.
"use strict";
const http = require("http");
const path = require("path");
const fs = require("fs");

const VERSION = "v1";

// where this code was loaded from: releases/<id>, even via the `current` symlink
const RELEASE_DIR = path.dirname(fs.realpathSync(__filename));

let stopping = false;

const server = http.createServer((req, res) => {
  let status = 200;
  let body;
  if (req.url === "/healthz") {
    body = "ok\n";
  } else if (req.url === "/") {
    body = `hello from ${VERSION} pid ${process.pid} ppid ${process.ppid} dir ${RELEASE_DIR}\n`;
  } else {
    status = 404;
    body = "not found\n";
  }
  res.writeHead(status, {
    "Content-Type": "text/plain; charset=utf-8",
    "Content-Length": Buffer.byteLength(body),
    "X-App-Version": VERSION,
    // once stopping, a keep-alive client is told to reconnect (to the next instance)
    ...(stopping ? { Connection: "close" } : {}),
  });
  res.end(body);
});

// Keep-alive connections that stay idle longer than this are closed by Node;
// during a stop they are closed at once (below).
server.keepAliveTimeout = 5000;

if (process.env.LISTEN_FDS && Number(process.env.LISTEN_PID) === process.pid) {
  server.listen({ fd: 3 });
} else {
  server.listen(Number(process.env.PORT || 8000), "127.0.0.1");
}

process.on("SIGTERM", () => {
  stopping = true;
  // No new connections; the callback runs once every open connection is gone.
  server.close(() => process.exit(0));
  // Idle keep-alive connections would otherwise hold close() open until their
  // timeout; busy ones end after their current answer (Connection: close).
  server.closeIdleConnections();
});
