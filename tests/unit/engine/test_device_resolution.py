"""Device resolution: ``--device`` to a TensorFlow device, named once in the log."""

from __future__ import annotations

import logging

import pytest
import tensorflow as tf

from processor.engine.device import DeviceAnnouncer, describe_device, resolve_device


def test_resolve_device_names_the_device_once_per_announcer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    announcer = DeviceAnnouncer()
    with caplog.at_level(logging.INFO, logger="processor.engine.device"):
        assert resolve_device("cpu", announcer) == "/CPU:0"
        assert resolve_device("/CPU:0", announcer) == "/CPU:0"
    lines = [r.getMessage() for r in caplog.records if r.name == "processor.engine.device"]
    assert lines == [f"device: {describe_device('/CPU:0')}"]
    assert lines[0].startswith("device: /CPU:0 (")


def test_describe_device_says_which_gpus_are_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus: list[str] = []
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: list(gpus))
    monkeypatch.setattr(
        tf.config.experimental, "get_device_details", lambda dev: {"device_name": f"Card {dev}"}
    )
    assert describe_device("/CPU:0") == "/CPU:0 (no GPU visible)"
    gpus[:] = ["g0", "g1"]
    assert describe_device("/CPU:0") == "/CPU:0 (2 GPUs visible, not used)"
    assert describe_device("/GPU:1") == "/GPU:1 (Card g1, 2 GPUs visible)"
    gpus[:] = ["g0"]
    assert describe_device("/GPU:0") == "/GPU:0 (Card g0, 1 GPU visible)"
    # A detail TensorFlow cannot give is left out.
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda dev: {})
    assert describe_device("/GPU:0") == "/GPU:0 (1 GPU visible)"
