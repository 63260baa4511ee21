"""Engine options shared by every command that runs the model (replay, demo, run, bench).

:class:`EngineOptions` declares each option once (see :mod:`processor.config.declare`): its
flag, default, help, checks, and for ``run`` its environment variable and TOML key.
:func:`add_engine_arguments` puts the flags on a command's parser,
:meth:`EngineOptions.from_args` reads them back, and
:func:`processor.engine.build.build_engine` turns the options into a ready Engine, so the
commands cannot drift apart.

``replay``, ``demo`` and ``bench`` read these options from their flags only: their results
must follow from their command line. ``run`` also reads the environment and a TOML file
(:mod:`processor.kafka.settings`).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from processor.config.declare import above, at_least, at_least_or, option, options_of, problems
from processor.config.flags import add_arguments
from processor.dtypes import STATE_DTYPES
from processor.errors import ConfigError

__all__ = ["ENGINE_GROUP", "EngineOptions", "add_engine_arguments"]

#: The ``--help`` section of the engine flags.
ENGINE_GROUP = "model and engine"


@dataclass(frozen=True)
class EngineOptions:
    """Everything needed to build an Engine, validated on construction.

    Construction raises :class:`ConfigError` listing every invalid value, so a command
    rejects bad engine options before it loads a model or touches Kafka. The device name is
    the one value checked later (by :func:`processor.engine.build.build_engine`): finding the
    devices initialises TensorFlow, after which its thread pools can no longer be sized.
    """

    model: str | None = option(
        None,
        "trained model: a Keras 3 '.keras' file or a SavedModel directory with a 'step' signature",
        group=ENGINE_GROUP,
    )
    init_model: str | None = option(
        None,
        "optional '.keras' model mapping a stream's first input to its initial states (one "
        "output per state tensor); none = zero initial states",
        group=ENGINE_GROUP,
    )
    device: str = option(
        "auto",
        "TensorFlow device for the state tables and the step: auto (first GPU, else CPU), "
        "cpu, gpu, gpu:N or a full device name",
        group=ENGINE_GROUP,
    )
    state_dtype: str = option(
        "float32",
        "storage dtype of the cached states (computation is always float32)",
        choices=sorted(STATE_DTYPES),
        group=ENGINE_GROUP,
    )
    cache_capacity: int = option(
        65_536,
        "streams whose state stays on the device; beyond it the least recently used are "
        "moved to host memory (--spill-capacity), then to disk",
        check=at_least(1),
        group=ENGINE_GROUP,
    )
    spill_capacity: int = option(
        262_144,
        "rows of the host-memory table that holds the states evicted from the device; it "
        "takes rows x bytes per stream of RAM as it fills (262,144 rows: 128 MiB for 512 B "
        "states, 512 MiB for 2 KiB), and beyond it the least recently used states move to "
        "the disk store (--state-dir); nothing is dropped",
        check=at_least(0),
        group=ENGINE_GROUP,
    )
    state_dir: str | None = option(
        None,
        "directory in which the disk tier of the state cache makes its own subdirectory, "
        "created on first use and deleted at shutdown (the states there are a cache, never "
        "reused by another run); none = the system's temporary directory",
        group=ENGINE_GROUP,
    )
    idle_timeout: float | None = option(
        None,
        "seconds after which an idle stream is evicted to host memory; none = never",
        check=above(0),
        group=ENGINE_GROUP,
    )
    max_batch: int = option(
        1024,
        "most streams in one compiled step (batches are padded to a few bucket sizes: "
        "powers of two, and 1.5x steps from 192 rows); at most --cache-capacity",
        check=at_least(1),
        group=ENGINE_GROUP,
    )
    scan_min_steps: int = option(
        4,
        "a stream with at least this many pending records is caught up with one multi-step "
        "scan instead of single-step waves (0 = never scan)",
        check=at_least_or(2, 0, "never scan"),
        group=ENGINE_GROUP,
    )
    max_scan_steps: int = option(
        64, "most time steps in one scan call", check=at_least(2), group=ENGINE_GROUP
    )
    xla: bool = option(False, "compile the step with XLA (jit_compile)", group=ENGINE_GROUP)
    threads: int = option(
        2,
        "TensorFlow intra-op threads (inter-op: 1); 0 = TensorFlow's default",
        check=at_least(0),
        group=ENGINE_GROUP,
    )

    def __post_init__(self) -> None:
        found = problems(self)
        if not found and self.max_batch > self.cache_capacity:
            # A step needs a cache slot for every stream in it.
            found.append(
                f"--max-batch {self.max_batch} exceeds --cache-capacity {self.cache_capacity}"
            )
        if found:
            raise ConfigError("invalid engine options: " + "; ".join(found))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EngineOptions:
        """The options of flags added by :func:`add_engine_arguments` (called by the
        commands' ``main``). A missing attribute or ``None`` means "not given": the
        declared default applies (a command may default a flag to ``None`` and fill the
        value in itself). Raises :class:`ConfigError` for invalid values."""
        given = {o.name: getattr(args, o.name, None) for o in options_of(cls)}
        return cls(**{name: value for name, value in given.items() if value is not None})


def add_engine_arguments(
    parser: argparse.ArgumentParser,
    *,
    model_required: bool = True,
    max_batch: int = 1024,
    defaults: Mapping[str, Any] | None = None,
    helps: Mapping[str, str] | None = None,
) -> None:
    """Add the engine flags to ``parser`` in a "model and engine" group, each with its
    declared default (``max_batch`` and ``defaults`` override those) stated in its help;
    ``--model`` is a required flag when ``model_required``; ``helps`` rewords a flag's help
    for one command. Read them back with :meth:`EngineOptions.from_args`."""
    group = parser.add_argument_group(ENGINE_GROUP)
    add_arguments(
        group,
        options_of(EngineOptions),
        layered=False,
        defaults={"max_batch": max_batch, **(defaults or {})},
        required={"model"} if model_required else (),
        helps=helps,
    )
