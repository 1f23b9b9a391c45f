"""Typing names that moved into ``typing`` after Python 3.10."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    from typing import Self as Self
else:  # pragma: no cover
    from typing_extensions import Self as Self
