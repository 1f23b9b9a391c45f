"""Import cost: what ``import procthrottle`` and a ``procthrottle run`` call pay before any work.

    python benchmarks/bench_import.py [--quick]

Each figure is the median over fresh interpreters (after one warm-up run that writes the
bytecode caches, as an installed wheel has them). Import times are ``python -X importtime``'s
cumulative microseconds of the modules the statement imports (interpreter start-up not
counted); "every public name" touches each name of ``procthrottle.__all__``, which is what
every import cost before the async, rate and pool names became lazy. The CLI row is the wall
time of a whole ``procthrottle run --name N --limit 2 -- true`` (start-up, imports, the
semaphore, the command), against ``flock`` running the same command.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import HEADER

MARK = "-- bench_import: measured from here --"
HEAVY = ("asyncio", "anyio", "ssl", "concurrent.futures.process")


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure as installed: bytecode cached
    return env


def import_cost(statement: str) -> tuple[float, int, list[str]]:
    """Seconds ``statement`` spends importing (``-X importtime``), modules it added, and which
    of the heavy modules are among them."""
    code = (
        f"import sys; before = set(sys.modules); print({MARK!r}, file=sys.stderr, flush=True)\n"
        f"{statement}\n"
        "import json; added = set(sys.modules) - before\n"
        f"print(json.dumps([len(added), sorted(added & set({HEAVY!r}))]))"
    )
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=child_env(),
                         capture_output=True, text=True, check=True)
    lines = out.stderr.split(MARK, 1)[1].splitlines()
    total_us = 0
    for line in lines:
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        if not name[1:].startswith(" "):  # top level: imported by the statement itself
            total_us += int(cumulative)
    count, heavy = json.loads(out.stdout.splitlines()[-1])
    return total_us / 1e6, count, heavy


def median_import(statement: str, runs: int) -> tuple[float, int, list[str]]:
    import_cost(statement)  # warm-up: writes the bytecode caches
    results = [import_cost(statement) for _ in range(runs)]
    return statistics.median(r[0] for r in results), results[0][1], results[0][2]


def wall(command: list[str], runs: int) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds (children included) of ``command``."""
    subprocess.run(command, env=child_env(), check=True)  # warm-up
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, env=child_env(), check=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def cli_command() -> list[str]:
    script = Path(sys.executable).with_name("procthrottle")
    return [str(script)] if script.exists() else [sys.executable, "-m", "procthrottle"]


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer runs (smoke test)")
    args = parser.parse_args()
    runs = 5 if args.quick else 21
    every = "import procthrottle\nfor n in procthrottle.__all__: getattr(procthrottle, n)"
    full, full_count, _ = median_import(every, runs)
    print("Import cost (`python -X importtime`, median of", runs, "fresh interpreters)\n")
    print(HEADER)
    for statement in ("import procthrottle", "from procthrottle import ProcessSemaphore"):
        cost, count, heavy = median_import(statement, runs)
        loaded = ", ".join(heavy) or "none of asyncio, anyio, ssl, concurrent.futures.process"
        print(f"| `{statement}`: {count} modules, heavy ones: {loaded} | {ms(cost)} | "
              f"every public name: {ms(full)}, {full_count} modules | {cost / full:.2f}x | "
              "< 20 ms |")
    name = f"bench-import-{os.getpid()}"
    cli = cli_command()
    ours, ours_cpu = wall([*cli, "run", "--name", name, "--limit", "2", "--", "true"], runs)
    subprocess.run([*cli, "unlink", name], env=child_env(), capture_output=True, check=False)
    start_up, _ = wall([sys.executable, "-c", "pass"], runs)
    if shutil.which("flock"):
        with tempfile.NamedTemporaryFile() as lock:
            base, base_cpu = wall(["flock", lock.name, "true"], runs)
        print(f"| `procthrottle run -- true` vs `flock FILE true`, wall (CPU) | {ms(ours)} "
              f"({ms(ours_cpu)}) | {ms(base)} ({ms(base_cpu)}) | {ours / base:.2f}x | < 60 ms |")
    print(f"| `procthrottle run -- true` vs interpreter start-up (`python -c pass`), wall | "
          f"{ms(ours)} | {ms(start_up)} | {ours / start_up:.2f}x | - |")


if __name__ == "__main__":
    main()
