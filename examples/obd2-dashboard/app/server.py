#!/usr/bin/env python3
"""OBD2 dashboard API: a small stand-in for the product's Node API, standard library only.

Listens on 127.0.0.1:$PORT behind Nginx (which terminates TLS). Routes:

  GET  /healthz                  200 {"db": "ok", "redis": "ok", ...}, 503 when either fails
  GET  /readyz                   200 when db and Redis answer and every migration in this
                                 release is applied; 503 naming what is missing
  GET  /api/v1/version           the release this process runs
  GET  /api/v1/vehicles          the vehicles table, as JSON
  POST /api/v1/telemetry         {"vin": ..., "rpm": ...}: appended to the Redis stream
  GET  /api/v1/streams/telemetry Server-Sent Events: a `hello` event at once, then every new
                                 telemetry entry, a comment line every 15 s to keep proxies
                                 from timing out
  GET  /api/v1/ws                a WebSocket: a `hello` message, then echoes text messages

Every response carries the request's X-Request-ID (set by Nginx) for log correlation.
"""

import base64
import hashlib
import json
import os
import socket
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import services
from migrate import pending_migrations

HERE = os.path.dirname(os.path.abspath(__file__))
STREAM = "obd2:telemetry"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KEEPALIVE_SECONDS = 15
STREAM_MAX_SECONDS = 3600  # a client reconnects after this (EventSource does by itself)


def release_name():
    # `current` -> releases/<id>: the id is the resolved directory's name.
    return os.path.basename(os.path.realpath(HERE))


def log(request_id, message):
    print(f"request_id={request_id} {message}", file=sys.stderr, flush=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "obd2-dashboard-api"

    def request_id(self):
        return self.headers.get("X-Request-ID", "-")

    def send_json(self, status, body):
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Request-ID", self.request_id())
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self.send_json(*self.health())
        elif path == "/readyz":
            self.send_json(*self.readiness())
        elif path == "/api/v1/version":
            self.send_json(200, {"release": release_name()})
        elif path == "/api/v1/vehicles":
            self.vehicles()
        elif path.startswith("/api/v1/streams/"):
            self.events(path[len("/api/v1/streams/") :])
        elif path == "/api/v1/ws":
            self.websocket()
        else:
            self.send_json(404, {"error": "not found"})

    def do_POST(self):
        if self.path.split("?", 1)[0] != "/api/v1/telemetry":
            self.send_json(404, {"error": "not found"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            reading = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(reading, dict) or not isinstance(reading.get("vin"), str):
                raise ValueError("a JSON object with a `vin` string")
        except ValueError as e:
            self.send_json(400, {"error": f"expected {e}" if "vin" in str(e) else "bad JSON"})
            return
        reading["received_at"] = time.time()
        try:
            entry = services.redis(
                "XADD", STREAM, "MAXLEN", "~", "100000", "*", "data", json.dumps(reading)
            )
        except services.ServiceError as e:
            log(self.request_id(), f"telemetry not stored: {e}")
            self.send_json(503, {"error": "telemetry store unavailable"})
            return
        self.send_json(202, {"id": entry[0]})

    def health(self):
        db, db_error = services.db_ok()
        redis, redis_error = services.redis_ok()
        body = {
            "status": "ok" if db and redis else "fail",
            "db": "ok" if db else "fail",
            "redis": "ok" if redis else "fail",
            "release": release_name(),
        }
        for name, error in (("db", db_error), ("redis", redis_error)):
            if error:
                log(self.request_id(), f"health: {name}: {error}")
        return (200 if db and redis else 503), body

    def readiness(self):
        status, body = self.health()
        if status != 200:
            return status, body
        try:
            pending = pending_migrations(os.path.join(HERE, "migrations"))
        except services.ServiceError as e:
            log(self.request_id(), f"ready: {e}")
            return 503, {**body, "status": "fail", "migrations": "unknown"}
        if pending:
            return 503, {**body, "status": "fail", "pending_migrations": pending}
        return 200, {**body, "status": "ready", "migrations": "ok"}

    def vehicles(self):
        try:
            rows = services.psql(
                "SELECT coalesce(json_agg(v ORDER BY v.id), '[]') FROM "
                "(SELECT id, vin, name FROM vehicles) v"
            )
        except services.ServiceError as e:
            log(self.request_id(), f"vehicles: {e}")
            self.send_json(503, {"error": "database unavailable"})
            return
        self.send_json(200, {"vehicles": json.loads(rows[0])})

    def events(self, topic):
        if topic != "telemetry":
            self.send_json(404, {"error": "no such stream"})
            return
        # No Content-Length: the body ends when the connection does. Buffering is Nginx's
        # business (`proxy_buffering off` on this location); the app does not ask for it.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.send_header("X-Request-ID", self.request_id())
        self.end_headers()
        self.close_connection = True
        # Entries added after this id are news for this client; read before `hello` so that
        # nothing added after the client saw `hello` is missed.
        try:
            last_id = stream_last_id()
        except services.ServiceError as e:
            log(self.request_id(), f"stream: {e}")
            last_id = "$"
        hello = {"stream": topic, "release": release_name(), "at": time.time()}
        try:
            self.send_event("hello", hello)
            deadline = time.monotonic() + STREAM_MAX_SECONDS
            while time.monotonic() < deadline:
                try:
                    reply = services.redis(
                        "XREAD", "COUNT", "100", "BLOCK", str(KEEPALIVE_SECONDS * 1000),
                        "STREAMS", STREAM, last_id,
                        timeout=KEEPALIVE_SECONDS + 10,
                    )
                except services.ServiceError as e:
                    log(self.request_id(), f"stream: {e}")
                    time.sleep(1)
                    reply = []
                # --raw flattens [[stream, [[id, [field, value]], ...]]]: stream name, then
                # id, "data", value per entry (one field per entry, JSON on one line).
                entries = reply[1:] if reply and reply[0] == STREAM else []
                if not entries:
                    self.wfile.write(b": keepalive\n\n")
                    self.wfile.flush()
                for i in range(0, len(entries) - 2, 3):
                    entry_id, field, value = entries[i : i + 3]
                    last_id = entry_id
                    if field == "data":
                        self.send_event("telemetry", json.loads(value), entry_id)
            self.send_event("bye", {"reason": "reconnect"})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away

    def send_event(self, name, data, event_id=None):
        text = f"event: {name}\n"
        if event_id:
            text += f"id: {event_id}\n"
        text += f"data: {json.dumps(data)}\n\n"
        self.wfile.write(text.encode())
        self.wfile.flush()

    def websocket(self):
        key = self.headers.get("Sec-WebSocket-Key", "")
        upgrade = self.headers.get("Upgrade", "").lower()
        if upgrade != "websocket" or not key:
            self.send_json(426, {"error": "a WebSocket upgrade is required"})
            return
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("X-Request-ID", self.request_id())
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        self.connection.settimeout(300)
        try:
            self.ws_send(0x1, json.dumps({"type": "hello", "release": release_name()}).encode())
            while True:
                opcode, payload = self.ws_receive()
                if opcode == 0x8:  # close: answer it, then hang up
                    self.ws_send(0x8, payload[:2])
                    return
                if opcode == 0x9:  # ping
                    self.ws_send(0xA, payload)
                elif opcode == 0x1:
                    self.ws_send(0x1, payload)
        except (EOFError, OSError, socket.timeout):
            pass

    def ws_send(self, opcode, payload):
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([n])
        elif n < 1 << 16:
            head += bytes([126]) + struct.pack("!H", n)
        else:
            head += bytes([127]) + struct.pack("!Q", n)
        self.wfile.write(head + payload)
        self.wfile.flush()

    def ws_receive(self):
        def exactly(n):
            data = self.rfile.read(n)
            if len(data) < n:
                raise EOFError
            return data

        first, second = exactly(2)
        n = second & 0x7F
        if n == 126:
            n = struct.unpack("!H", exactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", exactly(8))[0]
        if n > 1 << 20:
            raise EOFError  # not for this endpoint
        mask = exactly(4) if second & 0x80 else b"\0\0\0\0"
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(exactly(n)))
        return first & 0x0F, payload

    def log_message(self, format, *args):
        log(self.request_id() if hasattr(self, "headers") else "-", format % args)


def stream_last_id():
    info = services.redis("XINFO", "STREAM", STREAM)
    # --raw prints the reply's field names and values one per line.
    for name, value in zip(info, info[1:]):
        if name == "last-generated-id":
            return value
    raise services.ServiceError("XINFO STREAM: no last-generated-id")


class Server(ThreadingHTTPServer):
    daemon_threads = True


def main():
    port = int(os.environ.get("PORT", "3000"))
    server = Server(("127.0.0.1", port), Handler)
    print(f"obd2-dashboard-api {release_name()} listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
