"""An async program feeding a process pool from a large generator, with a progress bar.

The pool does CPU work on every worker while at most --limit tasks run at once; amap() keeps
only --buffersize items in flight, so the generator can be huge (or endless), and results come
back in input order. Runs on asyncio; pass --trio to run the same code on trio.

    python examples/async_pipeline.py [--items 2000] [--limit 2] [--trio]
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import anyio

from procthrottle import ThrottledProcessPool


def records(n: int) -> Iterator[int]:
    """Stand-in for a big input: a file, a database cursor, a queue."""
    yield from range(n)


def score(record: int) -> int:
    return sum(i % 7 for i in range(record % 500))


async def main(items: int, limit: int, progress: bool) -> None:
    total = 0
    async with ThrottledProcessPool(4, limit) as pool:
        results = pool.amap(score, records(items), buffersize=64, progress=progress)
        async for value in results:
            total += value
        stats = pool.stats()
    print(
        f"scored {stats['completed']} records, total {total}; at most "
        f"{stats['max_in_section']} tasks ran at once (limit {limit})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--limit", type=int, default=2)
    parser.add_argument("--trio", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    anyio.run(
        main, args.items, args.limit, not args.no_progress,
        backend="trio" if args.trio else "asyncio",
    )
