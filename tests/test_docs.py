"""The documentation is complete and runs: docstrings, the rendered API reference, snippets.

Every fenced ```python block in README.md and docs/*.md runs in a fresh interpreter whose
multiprocessing start method is spawn (macOS's and Windows' default), as ``__main__``, with a
timeout, and must leave no kernel object behind. A block whose first line is
``# not run: <reason>`` is skipped.
"""

from __future__ import annotations

import html
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from _leaks import sets_left_since
from helpers import PYTHON, python_env, sysv_sets, unique_name

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PUBLIC_MODULES = ["procthrottle", "procthrottle.redis"]
SPHINX_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|exc|mod|data|obj|const):(?:`|<code>)")
NOT_RUN = re.compile(r"# not run: \S")

# Public names and methods allowed to lack a docstring (none: the test fails on any gap, and
# on a stale entry once a gap is filled).
KNOWN_UNDOCUMENTED: set[str] = set()
# Source files allowed to contain Sphinx roles, which mkdocstrings renders literally (none).
KNOWN_SPHINX_ROLES: dict[str, int] = {}


# -- docstrings ---------------------------------------------------------------------------------

def public_objects() -> Iterator[tuple[str, object]]:
    """``(dotted name, object)`` of every public name and every public member of a class."""
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        yield module_name, module
        for name in module.__all__:
            obj = getattr(module, name)
            yield f"{module_name}.{name}", obj
            if not inspect.isclass(obj):
                continue
            for member in dir(obj):
                if member.startswith("_"):
                    continue
                owner = next(k for k in obj.__mro__ if member in vars(k))
                if owner.__module__.partition(".")[0] != "procthrottle":
                    continue  # inherited from the standard library (Exception, Executor)
                yield f"{module_name}.{name}.{member}", vars(owner)[member]


def undocumented() -> set[str]:
    missing = set()
    for dotted, obj in public_objects():
        target = obj.__func__ if isinstance(obj, (staticmethod, classmethod)) else obj
        if not (inspect.getdoc(target) or "").strip():
            missing.add(dotted)
    return missing


def test_every_public_name_and_method_has_a_docstring() -> None:
    missing = undocumented()
    new = sorted(missing - KNOWN_UNDOCUMENTED)
    assert not new, f"public names without a docstring: {new}"
    filled = sorted(KNOWN_UNDOCUMENTED - missing)
    assert not filled, f"documented now: remove from KNOWN_UNDOCUMENTED: {filled}"


def sphinx_roles_in_sources() -> dict[str, int]:
    found = {}
    for path in sorted((ROOT / "src").rglob("*.py")):
        count = len(SPHINX_ROLE.findall(path.read_text()))
        if count:
            found[str(path.relative_to(ROOT))] = count
    return found


def test_no_sphinx_roles_in_docstrings() -> None:
    found = sphinx_roles_in_sources()
    worse = {p: n for p, n in found.items() if n > KNOWN_SPHINX_ROLES.get(p, 0)}
    assert not worse, f"Sphinx roles (write `Name` or [Name][procthrottle.Name]): {worse}"
    stale = {p: n for p, n in KNOWN_SPHINX_ROLES.items() if found.get(p, 0) < n}
    assert not stale, f"fewer roles now: lower KNOWN_SPHINX_ROLES to {found}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (the docs extra)")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run([mkdocs, "build", "--strict", "--quiet", "--site-dir", str(out)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    return out


def page_text(path: Path) -> str:
    page = path.read_text()
    page = page[page.find("<article"):page.find("</article>")]
    return html.unescape(page)


@pytest.mark.timeout(150)
def test_rendered_docs_have_no_sphinx_roles(site: Path) -> None:
    pages = sorted(site.rglob("*.html"))
    assert pages
    offending = [str(p.relative_to(site)) for p in pages if SPHINX_ROLE.search(page_text(p))]
    assert not offending, f"Sphinx roles rendered literally in {offending}"


@pytest.mark.timeout(150)
def test_api_reference_shows_every_argument_and_no_private_base(site: Path) -> None:
    text = re.sub(r"<[^>]+>", "", page_text(site / "api" / "index.html"))
    for argument in ["max_workers", "mp_context", "initializer", "initargs",
                     "max_tasks_per_child", "crash_safe", "lease"]:
        assert argument in text, argument
    assert "HoldsPermits" not in text
    assert "Could not find" not in text
    for name in ["ThrottledExecutor", "AsyncRedisSemaphore"]:
        section = text[text.index(name):]
        assert "submit" in section or "acquire" in section  # members are rendered
    links = page_text(site / "api" / "index.html")
    assert 'href="#procthrottle.AsyncSemaphore"' in links  # cross-references are links


# -- snippets -----------------------------------------------------------------------------------

def python_blocks() -> Iterator[tuple[str, str]]:
    for path in DOCUMENTS:
        lines = path.read_text().splitlines()
        start = None
        for number, line in enumerate(lines, 1):
            stripped = line.strip()
            if start is None and stripped == "```python":
                start = number
            elif start is not None and stripped == "```":
                yield f"{path.relative_to(ROOT)}:{start + 1}", "\n".join(lines[start:number - 1])
                start = None


BLOCKS = dict(python_blocks())
SPAWN = """\
import multiprocessing
multiprocessing.set_start_method("spawn", force=True)
"""


#: ``name="..."`` in a snippet: each run gets names of its own (see `isolate_names`).
NAME_ARGUMENT = re.compile(r"""(name=)(["'])([A-Za-z0-9._-]+)\2""")


def isolate_names(code: str) -> tuple[str, list[str]]:
    """The snippet with every literal ``name="X"`` made unique to this run, and those names.

    The snippets use everyday names ("gpu"), which another program on the host may be using:
    the test must neither meet that program's semaphore nor remove it afterwards.
    """
    names: list[str] = []

    def unique(match: re.Match[str]) -> str:
        name = unique_name(match[3])
        names.append(name)
        return f"{match[1]}{match[2]}{name}{match[2]}"

    return NAME_ARGUMENT.sub(unique, code), names


def remove_names(names: list[str]) -> None:
    """Remove what the snippet's names left on the host: names stay until unlinked, by design."""
    from procthrottle._kernel import _inventory

    for name in names:
        _inventory.unlink_any(name)
        if len(name) <= 195:
            _inventory.unlink_any(f"{name}.rate")


def anonymous_files(pid: int) -> set[str]:
    """The anonymous POSIX semaphores of process `pid` (their file name has the pid)."""
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob(f"sem.pt-anon-{pid}-*")} if shm.is_dir() else set()


def test_snippets_are_found_and_every_skip_gives_a_reason() -> None:
    assert len(BLOCKS) >= 10
    for where, code in BLOCKS.items():
        first = code.lstrip().splitlines()[0] if code.strip() else ""
        if first.startswith("# not run"):
            assert NOT_RUN.match(first), f"{where}: '# not run: <reason>'"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts Linux kernel objects")
@pytest.mark.timeout(120)
@pytest.mark.usefixtures("other_procthrottle_user")
@pytest.mark.parametrize("where", sorted(BLOCKS))
def test_snippet_runs_under_spawn(where: str, tmp_path: Path) -> None:
    code = BLOCKS[where]
    if code.lstrip().startswith("# not run"):
        pytest.skip(code.lstrip().splitlines()[0][2:])
    (tmp_path / "sitecustomize.py").write_text(SPAWN)
    code, names = isolate_names(code)
    script = tmp_path / "snippet.py"
    script.write_text(code + "\n")
    env = python_env()
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    before = sysv_sets()
    try:
        proc = subprocess.Popen([PYTHON, str(script)], cwd=tmp_path, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = proc.communicate(timeout=100)
    finally:
        remove_names(names)
    assert proc.returncode == 0, f"{where} failed:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    left = sets_left_since(before) | anonymous_files(proc.pid)
    assert not left, f"{where} (pid {proc.pid}) left kernel objects behind: {left}"


OTHER_USER = """\
import sys, time
from pathlib import Path
from procthrottle import ProcessSemaphore
sem = ProcessSemaphore(2, name=sys.argv[1])
print("ready", flush=True)
uses = 0
while not Path(sys.argv[2]).exists() or uses < 10:
    with sem:               # raises SemaphoreClosedError if someone unlinked the name
        time.sleep(0.001)
    uses += 1
sem.close()
print(uses, flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts Linux kernel objects")
@pytest.mark.timeout(150)
def test_readme_program_twice_at_once_beside_another_user_of_its_name(tmp_path: Path) -> None:
    """The README's first program, run twice at once while another program uses its name:
    all three succeed (no copy removes the name from under the others)."""
    where = next(w for w in sorted(BLOCKS, key=lambda w: int(w.partition(":")[2]))
                 if w.startswith("README.md:"))
    code, names = isolate_names(BLOCKS[where])
    assert len(names) == 1, "the README's first program shares one name"
    (tmp_path / "sitecustomize.py").write_text(SPAWN)
    (tmp_path / "readme.py").write_text(code + "\n")
    (tmp_path / "other.py").write_text(OTHER_USER)
    stop = tmp_path / "stop"
    env = python_env()
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]

    def start(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([PYTHON, *args], cwd=tmp_path, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    try:
        other = start("other.py", names[0], str(stop))
        assert other.stdout is not None
        assert other.stdout.readline() == "ready\n"
        copies = [start("readme.py"), start("readme.py")]
        for copy in copies:
            _, err = copy.communicate(timeout=100)
            assert copy.returncode == 0, err[-3000:]
        stop.touch()
        out, err = other.communicate(timeout=30)
        assert other.returncode == 0, err[-3000:]  # its every acquire and release worked
        assert int(out) >= 10
    finally:
        remove_names(names)



def test_spawn_is_really_the_start_method(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(SPAWN)
    env = python_env()
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    code = "import multiprocessing; print(multiprocessing.get_start_method())"
    out = subprocess.run([PYTHON, "-c", code], env=env, capture_output=True, text=True,
                         timeout=30, check=True)
    assert out.stdout == "spawn\n"


# -- claims made once, and links ------------------------------------------------------------------

def requires_python() -> str:
    match = re.search(r'^requires-python = ">=(3\.\d+)"', (ROOT / "pyproject.toml").read_text(),
                      re.MULTILINE)
    assert match is not None
    return match.group(1)


def test_python_version_claims_match_requires_python() -> None:
    minimum = requires_python()
    for path in DOCUMENTS:
        for claim in re.findall(r"Python (3\.\d+)\+", path.read_text()):
            assert claim == minimum, f"{path.name} says Python {claim}+, pyproject {minimum}"
    classifiers = re.findall(r"Programming Language :: Python :: (3\.\d+)",
                             (ROOT / "pyproject.toml").read_text())
    assert classifiers[0] == minimum


def test_speed_claims_match_the_benchmarks() -> None:
    """Speed claims quote the ratio of the last full run, the one place to compare areas
    (benchmarks/results.md, shown on docs/benchmarks.md), and no absolute figures."""
    table = (ROOT / "benchmarks" / "results.md").read_text()

    def nanoseconds(label: str) -> float:
        row = next(line for line in table.splitlines() if line.startswith(f"| {label}"))
        value, unit = row.split("|")[2].split()
        return float(value) * {"ns": 1.0, "µs": 1e3}[unit]

    ratio = nanoseconds("acquire+release, crash_safe=True") / nanoseconds(
        "acquire+release, crash_safe=False")
    for path in DOCUMENTS:
        for claim in re.findall(r"about (\d+)x faster", path.read_text()):
            assert int(claim) == round(ratio), f"{path.name}: {claim}x, benchmarks {ratio:.1f}x"
    readme = " ".join((ROOT / "README.md").read_text().split())
    if re.search(r"crash_safe=False`.{0,400}is not faster than the crash-safe kernel", readme):
        assert ratio <= 1.1, f"README: not faster; benchmarks: {ratio:.2f}x faster"
    else:
        assert re.search(r"about \d+x faster", readme), "README: say how the kernels compare"
    assert not re.search(r"\d (?:ns|µs) against", readme), "quote the ratio, not figures"


def test_relative_links_in_the_readme_exist() -> None:
    for target in re.findall(r"\]\(([^)#:]+)\)", (ROOT / "README.md").read_text()):
        assert (ROOT / target).exists(), target


def test_import_of_the_redis_module_without_redis_names_the_extra() -> None:
    code = "import sys; sys.modules['redis'] = None\nimport procthrottle.redis"
    out = subprocess.run([PYTHON, "-c", code], env=python_env(), capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        "ImportError: procthrottle.redis needs the redis client library, which is not "
        "installed: pip install 'procthrottle[redis]'"
    )


# -- set-up: one environment for ./scripts/demo and ./scripts/test ------------------------------

def test_demo_and_test_share_one_environment(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "pip.log"
    fake = venv / "bin" / "python"  # stands for the venv's python: records each pip install
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)

    def source(extras: str) -> list[str]:
        before = log.read_text().splitlines() if log.exists() else []
        subprocess.run(["bash", "-c", f'source scripts/_venv.sh "{extras}"'], cwd=ROOT,
                       env={**os.environ, "PROCTHROTTLE_VENV": str(venv)}, check=True,
                       timeout=30)
        return (log.read_text().splitlines() if log.exists() else [])[len(before):]

    assert [line.split()[-1] for line in source("")] == [str(ROOT)]  # the demo: no extras
    assert [line.split()[-1] for line in source("test,docs")] == [f"{ROOT}[docs,test]"]
    assert source("") == []  # alternating installs nothing
    assert source("test,docs") == []
    assert source("docs") == []
