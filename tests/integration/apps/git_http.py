"""A small smart-HTTP git server for cutover's tests (standard library only).

    python3 git_http.py --root DIR --port PORT [--user USER --password PASS]
                        [--ready-file PATH] [--git GIT]

Serves every bare repository under DIR at http://127.0.0.1:PORT/<name>.git by
running `git http-backend` as a CGI script (GIT_PROJECT_ROOT=DIR,
GIT_HTTP_EXPORT_ALL=1). Pushes need `http.receivepack true` in the bare repo's
config (http-backend only enables receive-pack by itself for an authenticated
REMOTE_USER).

With --user/--password every request needs HTTP Basic auth; otherwise it gets
401 with `WWW-Authenticate: Basic realm="git"`.

--port 0 picks a free port. The ready file, written atomically once the socket
listens, holds the base URL (http://127.0.0.1:PORT). SIGTERM/SIGINT stop the
server and exit 0. One line per request goes to stderr: method, path, status.

HTTP/1.1 with keep-alive: a CGI response without Content-Length is sent with
chunked transfer-encoding (or, to an HTTP/1.0 client, closed after the body).
Chunked request bodies (git sends them for requests larger than
http.postBuffer) are decoded into a temporary file so that the CGI gets an
exact CONTENT_LENGTH. gzip request bodies are passed through untouched with
HTTP_CONTENT_ENCODING; http-backend inflates them. The Git-Protocol header is
passed as HTTP_GIT_PROTOCOL, so protocol v2 works.
"""
import argparse, base64, hmac, os, shutil, signal, subprocess, sys, tempfile, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COPY = 64 * 1024
# Variables that would point the CGI at another repository or leak a request.
SCRUB = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
         "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_PROTOCOL",
         "GIT_COMMON_DIR", "GIT_CEILING_DIRECTORIES")


def log(msg):
    sys.stderr.write(f"git_http: {msg}\n")
    sys.stderr.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "git_http"
    timeout = 300  # idle keep-alive connections do not live forever

    # ---- logging: exactly one line per request -------------------------
    def log_request(self, code="-", size="-"):
        log(f"{self.command} {self.path} {int(code) if isinstance(code, int) else code}")

    def log_message(self, fmt, *args):
        pass

    # ---- auth ----------------------------------------------------------
    def authorized(self):
        """True if no auth is configured or the Basic credentials match."""
        cfg = self.server.auth
        if cfg is None:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except ValueError:
            return False
        user, sep, password = decoded.partition(b":")
        # Compare both, always, so timing does not tell which one was wrong.
        ok_user = hmac.compare_digest(user, cfg[0])
        ok_pass = hmac.compare_digest(password, cfg[1])
        return bool(sep) and ok_user and ok_pass

    def send_401(self):
        body = b"authentication required\n"
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="git"')
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_expect_100(self):
        # Answer 401 instead of "100 Continue" so the client never sends the
        # body of a request we are going to refuse.
        if not self.authorized():
            self.close_connection = True
            self.send_401()
            return False
        return super().handle_expect_100()

    # ---- request bodies --------------------------------------------------
    def is_chunked(self):
        te = self.headers.get("Transfer-Encoding", "")
        return "chunked" in te.lower()

    def content_length(self):
        value = self.headers.get("Content-Length")
        if value is None:
            return None
        n = int(value)
        if n < 0:
            raise ValueError("negative Content-Length")
        return n

    def read_chunked(self, sink):
        """Decode a chunked body from the socket, writing it to sink(bytes)."""
        total = 0
        while True:
            line = self.rfile.readline(1024)
            if not line:
                raise ConnectionError("EOF in chunked body")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            while size:
                data = self.rfile.read(min(size, COPY))
                if not data:
                    raise ConnectionError("EOF in chunk")
                sink(data)
                size -= len(data)
                total += len(data)
            if self.rfile.readline(1024) not in (b"\r\n", b"\n"):
                raise ValueError("bad chunk terminator")
        while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return total

    def discard_body(self):
        """Consume an unwanted body so the connection can be reused."""
        if self.is_chunked():
            self.read_chunked(lambda _data: None)
            return
        n = self.content_length() or 0
        while n:
            data = self.rfile.read(min(n, COPY))
            if not data:
                self.close_connection = True
                return
            n -= len(data)

    # ---- dispatch ----------------------------------------------------------
    def do_GET(self):
        self.handle_git()

    def do_POST(self):
        self.handle_git()

    def handle_git(self):
        try:
            if not self.authorized():
                try:
                    self.discard_body()
                except (ValueError, ConnectionError):
                    self.close_connection = True
                self.send_401()
                return
            self.run_cgi()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def cgi_env(self, content_length, user):
        path, _, query = self.path.partition("?")
        env = {k: v for k, v in os.environ.items()
               if k not in SCRUB and not k.startswith("HTTP_")
               and k not in ("CONTENT_LENGTH", "CONTENT_TYPE", "REMOTE_USER", "AUTH_TYPE")}
        env.update({
            "GIT_PROJECT_ROOT": self.server.root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_SOFTWARE": self.server_version,
            "SERVER_PROTOCOL": self.request_version,
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": str(self.server.server_address[1]),
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            "PATH_INFO": path,  # http-backend refuses ".." itself
            "QUERY_STRING": query,
            "REMOTE_ADDR": self.client_address[0],
        })
        if content_length is not None:
            env["CONTENT_LENGTH"] = str(content_length)
        if self.headers.get("Content-Type"):
            env["CONTENT_TYPE"] = self.headers["Content-Type"]
        if user is not None:
            env["REMOTE_USER"] = user
            env["AUTH_TYPE"] = "Basic"
        for header, var in (("Content-Encoding", "HTTP_CONTENT_ENCODING"),
                            ("Git-Protocol", "HTTP_GIT_PROTOCOL"),
                            ("Accept", "HTTP_ACCEPT"),
                            ("User-Agent", "HTTP_USER_AGENT")):
            if self.headers.get(header):
                env[var] = self.headers[header]
        return env

    def run_cgi(self):
        user = self.server.auth[0].decode() if self.server.auth else None
        spool = None
        try:
            if self.is_chunked():
                # Decode to a file first: the CGI then gets an exact length.
                spool = tempfile.TemporaryFile(prefix="git_http-")
                length = self.read_chunked(spool.write)
                spool.flush()
                spool.seek(0)
            else:
                length = self.content_length()
                if self.command == "GET" and not length:
                    length = None
        except (ValueError, ConnectionError) as e:
            if spool:
                spool.close()
            self.close_connection = True
            self.send_error(400, f"bad request body: {e}")
            return

        env = self.cgi_env(length, user)
        stdin = spool if spool is not None else (subprocess.PIPE if length else subprocess.DEVNULL)
        try:
            proc = subprocess.Popen([self.server.git, "http-backend"], env=env,
                                    stdin=stdin, stdout=subprocess.PIPE)
        except OSError as e:
            if spool:
                spool.close()
            self.close_connection = True
            self.send_error(500, f"cannot run git http-backend: {e}")
            return
        if spool is not None:
            spool.close()  # the child holds its own descriptor

        feeder = None
        body_left = [0]
        if stdin is subprocess.PIPE:
            # Stream the body to the CGI in a thread while we read its output,
            # so neither side can fill a pipe and deadlock the other.
            body_left[0] = length

            def feed():
                try:
                    while body_left[0]:
                        data = self.rfile.read(min(body_left[0], COPY))
                        if not data:
                            break
                        body_left[0] -= len(data)
                        proc.stdin.write(data)
                except (BrokenPipeError, ConnectionError, OSError):
                    pass
                finally:
                    try:
                        proc.stdin.close()
                    except OSError:
                        pass

            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()

        try:
            self.relay_response(proc)
        finally:
            if feeder is not None:
                feeder.join()
                if body_left[0]:
                    self.close_connection = True  # unread body on the socket
            proc.stdout.close()
            proc.wait()

    def relay_response(self, proc):
        out = proc.stdout
        status, headers = 200, []
        while True:
            line = out.readline(65536)
            if not line:
                # Died before finishing its headers.
                self.close_connection = True
                self.send_error(502, "git http-backend sent no response")
                return
            line = line.rstrip(b"\r\n")
            if not line:
                break
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                self.close_connection = True
                self.send_error(502, "bad CGI header from git http-backend")
                return
            name, value = name.strip(), value.strip()
            if name.lower() == "status":
                status = int(value.split(None, 1)[0])
            else:
                headers.append((name, value))

        names = {n.lower() for n, _ in headers}
        chunked = False
        if "content-length" not in names:
            if self.request_version == "HTTP/1.1" and self.command != "HEAD":
                chunked = True
            else:
                self.close_connection = True
        self.send_response(status)
        for name, value in headers:
            if name.lower() in ("connection", "transfer-encoding", "keep-alive"):
                continue
            self.send_header(name, value)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

        while True:
            data = out.read1(COPY)
            if not data:
                break
            if chunked:
                self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))
            else:
                self.wfile.write(data)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    p = argparse.ArgumentParser(description="smart-HTTP git server for tests")
    p.add_argument("--root", required=True, help="directory holding bare repos")
    p.add_argument("--port", type=int, required=True, help="port on 127.0.0.1 (0: any)")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--ready-file")
    p.add_argument("--git", default="git", help="git executable (default: git on PATH)")
    args = p.parse_args()
    if (args.user is None) != (args.password is None):
        p.error("--user and --password go together")
    git = shutil.which(args.git)
    if git is None:
        p.error(f"git executable not found: {args.git}")

    server = Server(("127.0.0.1", args.port), Handler)
    server.root = os.path.abspath(args.root)
    server.git = git
    server.auth = None if args.user is None else (args.user.encode(), args.password.encode())
    port = server.server_address[1]

    def stop(*_):
        # shutdown() waits for serve_forever() to return, which runs in this
        # (main) thread: call it from another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    url = f"http://127.0.0.1:{port}"
    log(f"serving {server.root} at {url}" + (" (basic auth)" if server.auth else ""))
    if args.ready_file:
        tmp = f"{args.ready_file}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(url + "\n")
        os.replace(tmp, args.ready_file)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    log("stopped")


if __name__ == "__main__":
    main()
