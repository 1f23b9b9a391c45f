"""Fan out hundreds of API calls from two processes, never more than K at once in total.

The script starts a tiny local HTTP "API" that counts how many requests it is serving at once,
then calls it from this process's event loop *and* from a second worker process. Both
decorate their call with @throttle on one named ProcessSemaphore, so the bound holds across
the two processes: the server never sees more than --limit requests at once.

    python examples/throttle_async_calls.py [--calls 200] [--limit 5]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time

from procthrottle import ProcessSemaphore, throttle


class CountingServer:
    """An HTTP server that answers after 10 ms and records its peak concurrency."""

    def __init__(self) -> None:
        self.in_flight = self.peak = self.served = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        self.served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()


async def call_api(port: int, sem: ProcessSemaphore, calls: int) -> int:
    @throttle(sem)
    async def get(i: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /item/{i} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        body = await reader.read()
        writer.close()
        await writer.wait_closed()
        return body

    replies = await asyncio.gather(*(get(i) for i in range(calls)))
    return sum(reply.endswith(b"ok") for reply in replies)


def worker(port: int, name: str, limit: int, calls: int) -> None:
    sem = ProcessSemaphore(limit, name=name)  # the same host-wide permits as the parent's
    ok = asyncio.run(call_api(port, sem, calls))
    print(f"worker process {os.getpid()}: {ok}/{calls} calls succeeded", flush=True)


async def main(calls: int, limit: int) -> None:
    name = f"example-api-{os.getpid()}"
    sem = ProcessSemaphore(limit, name=name)
    server = CountingServer()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    proc = multiprocessing.get_context("spawn").Process(
        target=worker, args=(port, name, limit, calls)
    )
    start = time.monotonic()
    try:
        proc.start()
        ok = await call_api(port, sem, calls)
        print(f"main process {os.getpid()}: {ok}/{calls} calls succeeded", flush=True)
        await asyncio.to_thread(proc.join)
    finally:
        listener.close()
        sem.unlink()
    print(
        f"server answered {server.served} requests in {time.monotonic() - start:.2f}s; "
        f"peak concurrent requests seen by the server: {server.peak} (limit {limit})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per process")
    parser.add_argument("--limit", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.limit))
