"""Marks more than one test file uses."""

from __future__ import annotations

import pytest

from glm4_local.tools.sandbox import find_sandbox

SANDBOX = find_sandbox()
needs_sandbox = pytest.mark.skipif(SANDBOX is None, reason="no sandbox on this machine (Linux: apt install "
                                   "bubblewrap; .ci/run installs it)")


def cases(table: dict, quick: set[str]) -> list:
    """Every case of a table; those not in `quick` run only in the full (heavy) suite."""
    return [pytest.param(c, id=c, marks=() if c in quick else pytest.mark.heavy) for c in table]
