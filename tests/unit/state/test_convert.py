"""Storage dtypes and their host representation: rounding as the device table rounds."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from processor.dtypes import STATE_DTYPES
from processor.errors import ConfigError
from processor.state.convert import HOST_DTYPES, check_storage_dtype, from_host, to_host


def test_every_state_dtype_has_a_host_representation() -> None:
    assert tuple(HOST_DTYPES) == STATE_DTYPES
    assert HOST_DTYPES["bfloat16"] == np.uint16  # its raw bits
    for name in STATE_DTYPES:
        check_storage_dtype(name)
    with pytest.raises(ConfigError, match=r"state dtype 'int8' not supported; choose one of"):
        check_storage_dtype("int8")


def test_load_rounds_like_the_device_table(rng: np.random.Generator) -> None:
    # Arbitrary float32 values: load() stores them rounded as TensorFlow's cast rounds.
    x = rng.normal(0, 5, 4096).astype(np.float32)
    x[:4] = [np.inf, -np.inf, 0.0, -0.0]
    for dtype in ("float16", "bfloat16"):
        want = tf.cast(tf.cast(x, dtype), tf.float32).numpy()
        np.testing.assert_array_equal(from_host(to_host(x, dtype), dtype), want)
    nan = from_host(to_host(np.array([np.nan], np.float32), "bfloat16"), "bfloat16")
    assert np.isnan(nan).all()
    np.testing.assert_array_equal(from_host(to_host(x, "float32"), "float32"), x)
