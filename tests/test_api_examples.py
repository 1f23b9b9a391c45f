"""The API reference teaches by example: every public name has one, and the examples run.

`docs/api.md` renders each public class and function with a ``::: procthrottle.X`` directive
(mkdocstrings); the example that goes with it is the ```python block written right after the
directive. tests/test_docs.py runs every block under spawn; the Redis examples, which need a
server, are marked ``# not run: ...`` there and run here, against a real redis-server.

The docstrings behind the reference are checked too: each argument of a public class,
function or method is described, and each public class and function (and the pool's task
methods) says what it raises.
"""

from __future__ import annotations

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

from helpers import PYTHON, python_env

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api.md"
PUBLIC_MODULES = ["procthrottle", "procthrottle.redis"]
DIRECTIVE = re.compile(r"^::: (procthrottle(?:\.redis)?\.\w+)\s*$")
#: First line of an example that needs a Redis server: skipped by test_docs, run here.
REDIS_MARK = "# not run: needs a Redis server (its URL in REDIS_URL)"
#: Methods whose failures a caller must plan for: their docstrings list what they raise.
MUST_SAY_WHAT_THEY_RAISE = {"acquire", "release", "submit", "schedule", "map", "amap", "run"}


def public_names() -> list[str]:
    names = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        names += [f"{module_name}.{name}" for name in module.__all__]
    return names


def entries() -> dict[str, str]:
    """Each ``::: name`` directive of api.md, with the text up to the next one or heading."""
    found: dict[str, str] = {}
    current: str | None = None
    fenced = False
    for line in API.read_text().splitlines():
        match = DIRECTIVE.match(line)
        if line.startswith("```"):
            fenced = not fenced
        if match and not fenced:
            current = match.group(1)
            found[current] = ""
        elif line.startswith("#") and not fenced:
            current = None  # a heading ends the entry
        elif current is not None:
            found[current] += line + "\n"
    return found


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def test_every_public_name_has_a_reference_entry_with_an_example() -> None:
    found = entries()
    missing = [name for name in public_names() if name not in found]
    assert not missing, f"no '::: name' directive in docs/api.md for {missing}"
    no_example = []
    for name in public_names():
        short = name.rpartition(".")[2]
        if not any(short in block for block in python_blocks(found[name])):
            no_example.append(name)
    assert not no_example, (
        f"no ```python example using the name right after its directive in docs/api.md: "
        f"{no_example}"
    )
    unknown = sorted(set(found) - set(public_names()))
    assert not unknown, f"directives for names that are not public: {unknown}"


# -- docstrings: arguments and raises -------------------------------------------------------------

def sections(doc: str) -> dict[str, list[str]]:
    """Google-style sections of a docstring: title -> the names its entries start with."""
    result: dict[str, list[str]] = {}
    title = None
    for line in doc.splitlines():
        heading = re.match(r"^(\w[\w ]*):\s*$", line)
        if heading:
            title = heading.group(1)
            result[title] = []
            continue
        entry = re.match(r"^    (\**\w+)(?: \([^)]*\))?:", line)
        if title is not None and entry:
            result[title].append(entry.group(1).lstrip("*"))
        elif line and not line.startswith(" "):
            title = None
    return result


def documented(*objects: object) -> dict[str, list[str]]:
    merged: dict[str, list[str]] = {}
    for obj in objects:
        for title, names in sections(inspect.getdoc(obj) or "").items():
            merged.setdefault(title, []).extend(names)
    return merged


def parameters(function: object) -> list[str]:
    signature = inspect.signature(function)  # type: ignore[arg-type]
    return [p for p in signature.parameters if p not in ("self", "cls")]


def api_objects() -> Iterator[tuple[str, object, list[object]]]:
    """(dotted name, callable, the docstrings that describe it) for every public callable."""
    for dotted in public_names():
        module_name, _, name = dotted.rpartition(".")
        obj = getattr(importlib.import_module(module_name), name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            continue
        if not inspect.isclass(obj):
            yield dotted, obj, [obj]
            continue
        yield dotted, obj, [obj, obj.__init__]
        for member in dir(obj):
            if member.startswith("_"):
                continue
            owner = next(k for k in obj.__mro__ if member in vars(k))
            if owner.__module__.partition(".")[0] != "procthrottle":
                continue
            attribute = vars(owner)[member]
            function = getattr(attribute, "__func__", attribute)
            if inspect.isfunction(function):
                yield f"{dotted}.{member}", function, [function]


def test_every_argument_is_described() -> None:
    missing = []
    for dotted, obj, docs in api_objects():
        described = documented(*docs).get("Args", [])
        missing += [f"{dotted}({p})" for p in parameters(obj) if p not in described]
    assert not missing, f"arguments without an 'Args:' entry in their docstring: {missing}"


def test_classes_functions_and_task_methods_say_what_they_raise() -> None:
    silent = []
    for dotted, obj, docs in api_objects():
        member = dotted.rpartition(".")[2]
        top_level = dotted.count(".") == (2 if dotted.startswith("procthrottle.redis.") else 1)
        if top_level and not parameters(obj):
            continue  # nothing to pass, nothing to refuse
        if (top_level or member in MUST_SAY_WHAT_THEY_RAISE) and not documented(*docs).get(
                "Raises"):
            silent.append(dotted)
    assert not silent, f"no 'Raises:' section in the docstring of {silent}"


def test_the_section_parser_reads_google_style() -> None:
    doc = "Text.\n\nArgs:\n    a: one\n        more.\n    *b: two\n\nRaises:\n    ValueError: x\n"
    assert sections(doc) == {"Args": ["a", "b"], "Raises": ["ValueError"]}


# -- the Redis examples, against a real server ----------------------------------------------------

REDIS_EXAMPLES = {
    f"{name}:{i}": block
    for name, text in entries().items()
    for i, block in enumerate(python_blocks(text))
    if block.startswith(REDIS_MARK)
}
SPAWN = 'import multiprocessing\nmultiprocessing.set_start_method("spawn", force=True)\n'


def test_redis_examples_are_marked_for_this_file() -> None:
    assert len(REDIS_EXAMPLES) >= 5  # one per name of procthrottle.redis
    for where, text in entries().items():
        if ".redis." in where:
            for block in python_blocks(text):
                assert block.startswith(REDIS_MARK), f"{where}: first line {REDIS_MARK!r}"


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
@pytest.mark.timeout(90)
@pytest.mark.parametrize("where", sorted(REDIS_EXAMPLES))
def test_redis_example_runs(where: str, tmp_path: Path) -> None:
    pytest.importorskip("redis")
    from redis_server import redis_server

    (tmp_path / "sitecustomize.py").write_text(SPAWN)
    script = tmp_path / "example.py"
    script.write_text(REDIS_EXAMPLES[where])
    env = python_env()
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    with redis_server() as url:
        env["REDIS_URL"] = url
        proc = subprocess.run([PYTHON, str(script)], cwd=tmp_path, env=env, text=True,
                              capture_output=True, timeout=60)
    assert proc.returncode == 0, f"{where} failed:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


# -- what a reader sees ------------------------------------------------------------------------

@pytest.mark.timeout(150)
def test_the_built_reference_shows_the_examples_and_the_design_page_a_diagram(
        tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (the docs extra)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run([mkdocs, "build", "--strict", "--quiet", "--site-dir", str(tmp_path)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    page = (tmp_path / "api" / "index.html").read_text()
    positions = {name: page.find(f'id="{name}"') for name in public_names()}
    assert all(p >= 0 for p in positions.values()), positions
    order = sorted(positions, key=positions.__getitem__)
    for name, after in zip(order, [*order[1:], None], strict=True):
        end = len(page) if after is None else positions[after]
        entry = page[positions[name]:end]
        example = entry.find("<strong>Example</strong>")
        assert example >= 0, f"no **Example** in the rendered entry of {name}"
        assert '<div class="highlight"><pre>' in entry[example:], (
            f"no highlighted example in the rendered entry of {name}")
    design = (tmp_path / "design" / "index.html").read_text()
    assert '<pre class="mermaid"><code>sequenceDiagram' in design
