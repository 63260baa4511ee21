"""The container image's build runs in the background while the rest of the suite runs.

``test_deploy_image.py`` needs the image built from scratch on a fresh machine: a Debian base
made with debootstrap, about 600 MB of wheels, and TensorFlow installed into a layer of its
own (about three minutes on 2 cores, most of it waiting on the network, unpacking and
writing). When those tests are selected, :func:`pytest_collection_modifyitems` moves them to
the end of the session and starts ``deploy/docker/offline-build.sh`` right away at the
lowest CPU and I/O priority (``nice -n 19``, ``ionice -c 3``): it takes the time the other
tests leave idle instead of adding its own to the suite's. The fixture
``background_image_build`` hands the build to those tests, which wait for it (and fail with
its log if it failed); the build's timings are printed in the terminal summary. A build still
running at the end of the session (its tests deselected or interrupted) is stopped.

Without ``buildah`` or ``debootstrap`` nothing starts; the image tests then skip or fail
through ``need_tool`` as every checker does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OFFLINE_BUILD = ROOT / "deploy" / "docker" / "offline-build.sh"
IMAGE_TESTS = "test_deploy_image.py"
#: The image the background build makes: every layer but the model's, which the image tests
#: add on top (the build cache keeps the rest).
BACKGROUND_TAG = "localhost/lstm-stream:offline"
BUILD_TIMEOUT_S = 1800.0


@dataclass
class BackgroundBuild:
    """One ``offline-build.sh`` run in the background (its own process group)."""

    process: subprocess.Popen[bytes]
    log: Path
    waited: float | None = None  # seconds the image tests were blocked on it

    @classmethod
    def start(cls, tag: str) -> BackgroundBuild:
        log = Path(tempfile.mkstemp(prefix="lstm-stream-image-build-", suffix=".log")[1])
        polite = ["nice", "-n", "19"] if shutil.which("nice") else []
        if shutil.which("ionice"):
            polite += ["ionice", "-c", "3"]
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*polite, str(OFFLINE_BUILD), tag],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # stopped as a group, with buildah's children
            )
        return cls(process, log)

    def wait(self) -> tuple[int, str]:
        """Block until the build ends: (exit code, its log)."""
        t0 = time.monotonic()
        try:
            rc = self.process.wait(timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.stop()
            rc = -1
        self.waited = (self.waited or 0.0) + time.monotonic() - t0
        return rc, self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def timings(self) -> list[str]:
        """The build's own ``offline-build:`` timing lines."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if line.startswith("offline-build:")]


_BUILD = pytest.StashKey[BackgroundBuild]()


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    image = [item for item in items if item.path.name == IMAGE_TESTS]
    if not image:
        return
    items[:] = [item for item in items if item.path.name != IMAGE_TESTS] + image
    if shutil.which("buildah") and shutil.which("debootstrap") and os.geteuid() == 0:
        config.stash[_BUILD] = BackgroundBuild.start(BACKGROUND_TAG)


def pytest_sessionfinish(session: pytest.Session) -> None:
    build = session.config.stash.get(_BUILD, None)
    if build is not None:
        build.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    build = terminalreporter.config.stash.get(_BUILD, None)
    if build is None:
        return
    waited = "not waited for" if build.waited is None else f"waited for {build.waited:.0f} s"
    terminalreporter.write_line(
        "container image built in the background at the lowest priority while the other "
        f"tests ran ({'; '.join(build.timings()) or 'no timings'}); the image tests "
        f"{waited}"
    )


@pytest.fixture(scope="session")
def background_image_build(request: pytest.FixtureRequest) -> BackgroundBuild | None:
    """The build started at collection, or None when none was started."""
    return request.config.stash.get(_BUILD, None)
