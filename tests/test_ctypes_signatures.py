"""Every C function the package calls through ctypes has its argument types declared.

Without ``argtypes`` ctypes guesses each argument's C type from the Python value, and treats a
variadic function (``semctl``, ``prctl``) as if every argument were a fixed one: on arm64 macOS
a variadic argument is passed elsewhere than a fixed one, so the callee reads garbage. The
declarations must therefore name a variadic function's fixed arguments only (ctypes passes the
ones beyond them as variadic), and the others' arguments all.
"""

from __future__ import annotations

import ctypes
import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any

import procthrottle

#: The class of every C function object (``CDLL(...).name``, ``CFUNCTYPE(...)(address)``).
FUNCTION_TYPE: type[Any] = ctypes.CFUNCTYPE(None).__mro__[1]

#: Variadic C functions: how many fixed arguments each declares before its ``...``.
VARIADIC_FIXED = {"semctl": 3, "prctl": 1, "fcntl": 2, "ioctl": 2, "open": 2, "printf": 1}


def package_modules() -> Iterator[str]:
    yield "procthrottle"
    for info in pkgutil.walk_packages(procthrottle.__path__, "procthrottle."):
        if not info.name.endswith(".__main__"):  # importing it runs the command line
            yield info.name


def ctypes_functions() -> Iterator[tuple[str, Any]]:
    """``(where, function)`` for each ctypes function object a module of the package keeps,
    directly or cached on a loaded library (``libc.semctl``)."""
    seen: set[int] = set()
    for name in package_modules():
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            found: list[tuple[str, object]] = [(f"{name}.{attr}", value)]
            if isinstance(value, ctypes.CDLL):
                found += [(f"{name}.{attr}.{k}", v) for k, v in vars(value).items()]
            for where, obj in found:
                if isinstance(obj, FUNCTION_TYPE) and id(obj) not in seen:
                    seen.add(id(obj))
                    yield where, obj


def test_the_walk_finds_the_package_s_c_functions() -> None:
    names = {function.__name__ for _, function in ctypes_functions()}
    assert {"semctl", "semop", "prctl"} <= names, names


def test_every_ctypes_function_declares_its_argument_types() -> None:
    undeclared = [where for where, function in ctypes_functions() if function.argtypes is None]
    assert not undeclared, f"ctypes functions without argtypes: {undeclared}"


def test_variadic_functions_declare_their_fixed_arguments_only() -> None:
    wrong = [
        f"{where}: {len(function.argtypes or ())} argtypes, {fixed} fixed arguments"
        for where, function in ctypes_functions()
        if (fixed := VARIADIC_FIXED.get(function.__name__)) is not None
        and function.argtypes is not None
        and len(function.argtypes) != fixed
    ]
    assert not wrong, wrong
