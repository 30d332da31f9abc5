"""An open-loop HTTP load generator for the end-to-end tests (python3 standard library only).

Run on a test host against its Nginx:

    python3 load.py URL --rate 100 --out FILE --stop-file FILE [--timeout 5] [--ready FILE]

Sends one GET every 1/rate seconds, each on its own thread, whatever the answers take: a
stalled server does not slow the sending down, so every request it fails to answer is
counted (a closed-loop tool waits for answers and under-counts). Stops sending once the stop
file exists, waits for the requests in flight (each at most --timeout), then writes a JSON
report to --out (atomically: a temporary file renamed into place):

    sent, ok (2xx), failed (everything else), max_lag_ms (how late the sender ever was),
    failures: {kind: count}, kind "HTTP <status>" or an exception class name,
    bodies: [{body, count, first_ms, last_ms}] (2xx bodies, stripped, in order of the first
        request that got each; first_ms/last_ms: when those requests were sent, from start),
    latency_ms: {p50, p99, max} (every request, failed ones included),
    first_failures: [{at_ms, wall, kind}] (the first 10, in the order they were sent).

--ready FILE is created once the first request has been sent.
"""

import argparse
import http.client
import json
import os
import threading
import time
import urllib.parse
from datetime import datetime, timezone

FIRST_FAILURES = 10


class Result:
    __slots__ = ("sent_ms", "wall", "latency_ms", "ok", "kind", "body")

    def __init__(self, sent_ms, wall):
        self.sent_ms = sent_ms
        self.wall = wall
        self.latency_ms = None
        self.ok = False
        self.kind = None
        self.body = None


def request(url, timeout, result, started):
    parts = urllib.parse.urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read()
        if 200 <= response.status < 300:
            result.ok = True
            result.body = body.decode("utf-8", "replace").strip()
        else:
            result.kind = f"HTTP {response.status}"
    except Exception as e:  # every failure is counted by its kind, none stops the run
        result.kind = type(e).__name__
    finally:
        conn.close()
        result.latency_ms = (time.monotonic() - started) * 1000


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return round(sorted_values[index], 1)


def report(results, max_lag_ms):
    failures = {}
    bodies = {}
    for r in results:
        if r.ok:
            entry = bodies.setdefault(
                r.body, {"body": r.body, "count": 0, "first_ms": r.sent_ms, "last_ms": r.sent_ms}
            )
            entry["count"] += 1
            entry["first_ms"] = min(entry["first_ms"], r.sent_ms)
            entry["last_ms"] = max(entry["last_ms"], r.sent_ms)
        else:
            failures[r.kind] = failures.get(r.kind, 0) + 1
    failed = [r for r in results if not r.ok]
    latencies = sorted(r.latency_ms for r in results)
    return {
        "sent": len(results),
        "ok": len(results) - len(failed),
        "failed": len(failed),
        "max_lag_ms": round(max_lag_ms, 1),
        "failures": failures,
        "bodies": [
            dict(b, first_ms=round(b["first_ms"], 1), last_ms=round(b["last_ms"], 1))
            for b in sorted(bodies.values(), key=lambda b: b["first_ms"])
        ],
        "latency_ms": {
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
            "max": round(latencies[-1], 1) if latencies else None,
        },
        "first_failures": [
            {"at_ms": round(r.sent_ms, 1), "wall": r.wall, "kind": r.kind}
            for r in failed[:FIRST_FAILURES]
        ],
    }


def main():
    parser = argparse.ArgumentParser(description="open-loop HTTP load")
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--out", required=True, help="where the JSON report goes")
    parser.add_argument("--stop-file", required=True, help="stop sending once this exists")
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
    parser.add_argument("--ready", help="created once the first request is sent")
    args = parser.parse_args()

    interval = 1.0 / args.rate
    results = []  # in the order sent
    threads = []
    start = time.monotonic()
    max_lag = 0.0
    n = 0
    while not os.path.exists(args.stop_file):
        due = start + n * interval
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
            now = time.monotonic()
        max_lag = max(max_lag, now - due)
        wall = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        result = Result((now - start) * 1000, wall)
        results.append(result)
        t = threading.Thread(target=request, args=(args.url, args.timeout, result, now))
        t.start()
        threads.append(t)
        if n == 0 and args.ready:
            open(args.ready, "w").close()
        n += 1
        if n % 1000 == 0:
            threads = [t for t in threads if t.is_alive()]
    for t in threads:
        t.join()

    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report(results, max_lag * 1000), f, indent=1)
        f.write("\n")
    os.rename(tmp, args.out)


if __name__ == "__main__":
    main()
