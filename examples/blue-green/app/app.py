"""The shop: a small web app for the blue-green example (python3 standard library only).

One process serves one release on 127.0.0.1:$PORT. shipit runs two of them side by side, one
per port (shop@3001.service, shop@3002.service), and points Nginx at the one that is live.

- The release is the directory this file really lives in, resolved once at boot: `current` is
  a symlink that a later deploy switches, and a running instance must keep serving the code
  and VERSION it started with.
- A release holding a file named BROKEN refuses to start (exit 1): the stand-in for a release
  that crashes at boot, so the example can show a bad release never taking a request.
- BOOT_SECONDS (default 2) pass before the port is opened, as a real app loads its code first.
- SIGTERM (systemctl stop): stop accepting, finish the requests in flight, exit 0.

GET /version: the release's VERSION. GET /healthz: 200 "ok". Anything else: 404.
"""

import http.server
import os
import signal
import sys
import threading
import time
import urllib.parse

RELEASE = os.path.dirname(os.path.realpath(__file__))


def log(message):
    # One line per event (boot, stop), never per request: journald keeps them.
    print(f"shop: {message}", file=sys.stderr, flush=True)


def boot():
    if os.path.exists(os.path.join(RELEASE, "BROKEN")):
        log(f"refusing to start: {RELEASE}/BROKEN exists")
        sys.exit(1)
    with open(os.path.join(RELEASE, "VERSION"), encoding="utf-8") as f:
        version = f.read().strip()
    port = int(os.environ.get("PORT", "3001"))
    boot_seconds = float(os.environ.get("BOOT_SECONDS", "2"))
    return version, port, boot_seconds


class Handler(http.server.BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so no idle keep-alive connection holds a thread
    # (and a graceful stop) open.
    protocol_version = "HTTP/1.0"
    server_version = "shop"

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        if path == "/version":
            self.reply(200, self.server.version)
        elif path == "/healthz":
            self.reply(200, "ok")
        else:
            self.reply(404, "not found")

    def reply(self, status, text):
        body = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass  # no line per request


class Server(http.server.ThreadingHTTPServer):
    # Request threads are joined by server_close(): a stop waits for the requests in flight.
    daemon_threads = False
    block_on_close = True


def main():
    version, port, boot_seconds = boot()
    time.sleep(boot_seconds)
    server = Server(("127.0.0.1", port), Handler)
    server.version = version

    def stop(signum, frame):
        # shutdown() waits for serve_forever() to return: not from the thread running it.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"serving version {version} from {RELEASE} on 127.0.0.1:{port}")
    server.serve_forever()
    server.server_close()
    log(f"stopped (version {version}, port {port})")


if __name__ == "__main__":
    main()
