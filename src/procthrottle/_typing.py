"""Typing names that moved into ``typing`` after Python 3.10."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    from typing import Self as Self
    from typing import TypeVarTuple as TypeVarTuple
    from typing import Unpack as Unpack
else:  # pragma: no cover
    from typing_extensions import Self as Self
    from typing_extensions import TypeVarTuple as TypeVarTuple
    from typing_extensions import Unpack as Unpack
