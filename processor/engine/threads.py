"""Thread configuration: TensorFlow's thread pools, sized once before it runs anything."""

from __future__ import annotations

import logging

import tensorflow as tf

import processor  # noqa: F401  (TF environment defaults)

__all__ = ["configure_threads"]

log = logging.getLogger(__name__)


def configure_threads(intra_op: int | None, inter_op: int | None) -> None:
    """Size TensorFlow's thread pools; must run before TensorFlow executes anything.

    TensorFlow sizes both default pools to the core count, so on a small machine the two
    together oversubscribe the cores. ``None`` leaves a pool at TensorFlow's default.
    """
    try:
        if intra_op:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        if inter_op:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError as exc:  # TF already initialised: keep going with what it has
        log.warning("cannot change TensorFlow thread pools now: %s", exc)
