"""Every benchmark in one command: tables and plots for docs/benchmarks.md.

    python -m benchmarks [--quick] [--repeats 3] [--only pool,async]

Installs the peers it compares against from the ``bench`` extra when they are missing, runs
every ``benchmarks/bench_*.py`` script ``--repeats`` times (each measuring procthrottle and
its baselines in the same run, as ratios), keeps the median of each row, and writes

* ``benchmarks/results.md``: machine, command, and one table per script (docs/benchmarks.md
  includes it);
* ``docs/img/bench-<script>.png``: the ratios side by side, with the targets;
* ``docs/img/scaling-*.png``: the pool's scaling curves against ProcessPoolExecutor.
* plots a script draws itself into the same folder (it is told where in ``BENCH_IMG``), e.g.
  ``docs/img/bench-rate-processes.png``.

``--quick`` runs each script once at smoke-test sizes (about a minute in all), and writes its
page and plots into a new temporary folder (printed) unless ``--results``/``--img`` say where:
smoke-test numbers never replace the published ones.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = ["pebble", "loky", "aiomultiprocess", "mpire", "aiometer", "aiolimiter",
         "pyrate_limiter", "filelock", "limits", "throttled", "posix_ipc", "matplotlib"]
RATIO = re.compile(r"^([0-9.]+)x$")
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
TARGET = re.compile(r"^([<>]=)\s*([0-9.]+)x?$")


def ensure_peers() -> None:
    missing = [name for name in PEERS if importlib.util.find_spec(name) is None]
    if missing:
        print(f"== installing the bench extra (missing: {', '.join(missing)})", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "-e", f"{ROOT}[bench]"], check=True)


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}, "
            f"{platform.python_implementation()} {platform.python_version()}")


Table = tuple[list[str], list[list[str]]]  # header cells, rows of cells


def run_script(script: Path, quick: bool, curves: Path | None, img: Path) -> list[Table]:
    """The markdown tables the script printed, each with its own header."""
    command = [sys.executable, script.name] + (["--quick"] if quick else [])
    if curves is not None:
        command += ["--json", str(curves)]
    print(f"== {script.name}", flush=True)
    env = {**os.environ, "BENCH_IMG": str(img)}  # where a script may draw plots of its own
    out = subprocess.run(command, cwd=HERE, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        sys.exit(f"{script.name} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    lines = [line.strip() for line in out.stdout.splitlines()]
    tables: list[Table] = []
    for i, line in enumerate(lines):
        if not line.startswith("| "):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if i + 1 < len(lines) and lines[i + 1].startswith("|--"):
            tables.append((cells, []))  # a header: a new table starts
        elif set(cells[0]) <= set("-:"):
            continue  # the separator under a header
        elif tables:
            tables[-1][1].append(cells)
    return tables


def median_tables(runs: list[list[Table]]) -> list[Table]:
    """Row by row (matched by position), the run whose ratio is the median; rows without a
    ratio come from the middle run."""
    merged: list[Table] = []
    for t, (header, rows) in enumerate(runs[0]):
        ratio_at = header.index("ratio") if "ratio" in header else None
        out_rows = []
        for r in range(len(rows)):
            same = [run[t][1][r] for run in runs if t < len(run) and r < len(run[t][1])]
            ratios = [] if ratio_at is None else [
                (float(m.group(1)), row) for row in same
                if len(row) > ratio_at and (m := RATIO.match(row[ratio_at]))
            ]
            if ratios and len(ratios) == len(same):
                ratios.sort(key=lambda pair: pair[0])
                out_rows.append(ratios[len(ratios) // 2][1])
            else:
                out_rows.append(same[len(same) // 2])
        merged.append((header, out_rows))
    return merged


def plot_ratios(name: str, rows: list[list[str]], out: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(r[0], float(m.group(1)), r[4] if len(r) > 4 else "") for r in rows
            if len(r) > 3 and (m := RATIO.match(r[3]))]
    if not bars:
        return False
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(bars) + 1.2))
    labels = [label if len(label) < 70 else label[:67] + "..." for label, _, _ in bars]
    ax.barh(range(len(bars)), [ratio for _, ratio, _ in bars], color="#3b7dd8")
    for i, (_, ratio, target) in enumerate(bars):
        ax.text(ratio, i, f" {ratio:.2f}x", va="center", fontsize=8)
        if m := TARGET.match(target):
            ax.plot([float(m.group(2))] * 2, [i - 0.4, i + 0.4], color="#d83b3b", lw=2)
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_yticks(range(len(bars)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("procthrottle / baseline (same run); red: target")
    ax.set_title(name)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def plot_curves(curves: dict[str, list[dict[str, float]]], img: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    specs = [
        ("workers", "ours", "ppe", "workers (limit = workers)", "no-op tasks / s", False),
        ("workers", "ours_p99", "ppe_p99", "workers (limit = workers)",
         "p99 submit-to-result (s)", False),
        ("tasks", "ours", "ppe", "tasks submitted", "no-op tasks / s", True),
        ("limit", "ours", "ppe", "limit (4 workers, 2 ms tasks)", "tasks / s", False),
    ]
    for key, ours, ppe, xlabel, ylabel, logx in specs:
        points = curves.get(key) or []
        if not points or ours not in points[0]:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.4))
        xs = [p["x"] for p in points]
        ax.plot(xs, [p[ours] for p in points], "o-", label="ThrottledProcessPool")
        ax.plot(xs, [p[ppe] for p in points], "s--", label="ProcessPoolExecutor")
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        name = f"scaling-{key}-{ours.replace('ours', 'rate').replace('_', '-')}.png"
        fig.savefig(img / name, dpi=110)
        plt.close(fig)
        made.append(name)
    return made


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="smoke-test sizes, one repeat; writes into a new temporary folder "
                             "unless --results/--img are given")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each script (median)")
    parser.add_argument("--only", help="comma-separated script names, e.g. pool,async")
    parser.add_argument("--results", type=Path, default=None,
                        help="the results page to write (default: benchmarks/results.md, "
                             "which docs/benchmarks.md includes; with --quick, results.md in a "
                             "new temporary folder)")
    parser.add_argument("--img", type=Path, default=None,
                        help="folder for the plots (default: docs/img/; with --quick, img/ in "
                             "the folder of the results page)")
    parser.add_argument("--no-install", action="store_true", help="do not pip install peers")
    args = parser.parse_args()
    if args.results is None:
        args.results = (Path(tempfile.mkdtemp(prefix="procthrottle-bench-")) / "results.md"
                        if args.quick else HERE / "results.md")
    published = args.results.resolve() == (HERE / "results.md").resolve()
    if args.img is None:
        args.img = ROOT / "docs" / "img" if published else args.results.parent / "img"
    if args.quick and published:
        print("== --quick: smoke-test figures over the published results page, as asked",
              flush=True)
    if not args.no_install:
        ensure_peers()
    if not HAVE_MATPLOTLIB:
        print("== matplotlib is not installed: tables only, no plots", flush=True)
    repeats = 1 if args.quick else max(1, args.repeats)
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        wanted = {f"bench_{name.strip()}.py" for name in args.only.split(",")}
        scripts = [s for s in scripts if s.name in wanted]
    img = args.img
    img.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks" + (" --quick" if args.quick else f" --repeats {repeats}")
    lines = [
        "<!-- written by `python -m benchmarks`: do not edit by hand -->",
        f"Machine: {machine()}. Run on {datetime.date.today():%Y-%m-%d} with `{command}`; "
        f"each row is the median of {repeats} run(s) of its script.",
        "",
    ]
    curves: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for script in scripts:
            json_path = Path(tmp) / "curves.json" if script.name == "bench_scaling.py" else None
            runs = [run_script(script, args.quick, json_path, img) for _ in range(repeats)]
            tables = median_tables(runs)
            if json_path is not None and json_path.exists():
                curves = json.loads(json_path.read_text())
            title = script.stem.removeprefix("bench_")
            lines += [f"### `{script.name}`"]
            ratio_rows: list[list[str]] = []
            for header, rows in tables:
                lines += ["", "| " + " | ".join(header) + " |",
                          "|" + "---|" * len(header)]
                lines += ["| " + " | ".join(row) + " |" for row in rows]
                if header[:4] == ["measure", "procthrottle", "baseline", "ratio"]:
                    ratio_rows += rows
            if HAVE_MATPLOTLIB and plot_ratios(f"{script.name}: ratios against baselines",
                                               ratio_rows, img / f"bench-{title}.png"):
                lines += ["", f"![{title} ratios](img/bench-{title}.png)"]
            lines.append("")
    if curves and HAVE_MATPLOTLIB:
        lines += [f"![{name}](img/{name})" for name in plot_curves(curves, img)]
    args.results.write_text("\n".join(lines) + "\n")
    print(f"== wrote {args.results} and {img}/", flush=True)


if __name__ == "__main__":
    main()
