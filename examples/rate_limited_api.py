"""Call an API "at most 20 requests per second" from a pool of worker processes.

A local HTTP server stands in for the API and records when each request arrives. Eight
worker processes send the requests; one RateLimiter, passed to each task, spaces them out
across all the workers, with a burst of 5 at the start. The workers start by "forkserver" (the
default on Linux from Python 3.14): forking this process, which already runs the server's
thread, is deprecated from Python 3.12.

    python examples/rate_limited_api.py [--requests 60] [--rate 20/s] [--burst 5]
"""

from __future__ import annotations

import argparse
import http.server
import multiprocessing
import threading
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor

from procthrottle import RateLimiter

arrivals: list[float] = []


class Api(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        arrivals.append(time.monotonic())
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet


def call_api(limiter: RateLimiter, url: str) -> int:
    limiter.acquire()  # waits for this request's turn, shared by every worker
    with urllib.request.urlopen(url, timeout=10) as response:
        status: int = response.status
        return status


def busiest_second(times: list[float]) -> int:
    times = sorted(times)
    best = lo = 0
    for hi, t in enumerate(times):
        while times[lo] <= t - 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--rate", default="20/s")
    parser.add_argument("--burst", type=int, default=5)
    args = parser.parse_args()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/items"
    limiter = RateLimiter(args.rate, burst=args.burst)
    with ProcessPoolExecutor(8, mp_context=multiprocessing.get_context("forkserver")) as pool:
        list(pool.map(time.sleep, [0.01] * 8))  # start the workers before the clock runs
        start = time.monotonic()
        statuses = list(pool.map(call_api, [limiter] * args.requests, [url] * args.requests))
        elapsed = time.monotonic() - start
    server.shutdown()
    server.server_close()
    limiter.close()

    print(f"{statuses.count(200)} of {args.requests} requests answered in {elapsed:.2f} s")
    times = sorted(arrivals)
    half = len(times) // 2
    if len(times) - half > 2 and half >= args.burst:  # steady state: the second half
        observed = (len(times) - 1 - half) / (times[-1] - times[half])
        print(f"observed rate after the burst: {observed:.1f} requests/s (limit {args.rate})")
    # The limiter admits at most rate + burst in any second; an arrival also carries its
    # worker's wake-up and the request's own delay, which can move it into another window.
    print(
        f"most requests arriving in any 1 s window: {busiest_second(arrivals)} "
        f"(admitted by the limiter: at most {limiter.rate / limiter.per:g} + burst {args.burst})"
    )


if __name__ == "__main__":
    main()
