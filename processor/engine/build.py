"""The engine built from :class:`~processor.config.engine_options.EngineOptions`: threads
configured, model loaded, state table on its device, so every command builds it the same way."""

from __future__ import annotations

from collections.abc import Callable

from processor.config.engine_options import EngineOptions
from processor.engine.device import resolve_device
from processor.engine.engine import Engine
from processor.engine.threads import configure_threads
from processor.model import StepModel, load_step_model
from processor.state.cache import StateCache

__all__ = ["build_engine"]


def build_engine(
    options: EngineOptions,
    model: StepModel | None = None,
    *,
    configure: Callable[[int | None, int | None], None] = configure_threads,
    resolve: Callable[[str | None], str] = resolve_device,
) -> Engine:
    """Configure TensorFlow's threads, load the model (unless given) and build the engine.

    ``configure(intra_op, inter_op)`` sizes the thread pools and ``resolve(device)`` names
    the device (by default :func:`~processor.engine.threads.configure_threads` and
    :func:`~processor.engine.device.resolve_device`; a caller that must see the requests
    passes its own). Raises :class:`ConfigError` for a device TensorFlow does not have, and
    what :func:`processor.model.load.load_step_model` raises for a model it cannot
    load."""
    if options.threads:
        configure(options.threads, 1)
    if model is None:
        if options.model is None:
            raise ValueError("no model given")
        model = load_step_model(options.model, options.init_model)
    cache = StateCache(
        model.state_spec,
        options.cache_capacity,
        device=resolve(options.device),
        storage_dtype=options.state_dtype,
        spill_capacity=options.spill_capacity,
        idle_timeout_s=options.idle_timeout,
        state_dir=options.state_dir,
    )
    return Engine(
        model,
        cache,
        max_batch=options.max_batch,
        scan_min_steps=options.scan_min_steps,
        max_scan_steps=options.max_scan_steps,
        jit_compile=options.xla,
    )
