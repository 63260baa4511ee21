"""Engine options shared by every command that runs the model (replay, demo, run, bench).

One place defines the flags, their defaults and help, and one function turns them into a
ready Engine, so the commands cannot drift apart.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from processor.cache import STORAGE_DTYPES, StateCache, resolve_device
from processor.engine import Engine, configure_threads
from processor.model import StepModel, load_step_model


@dataclass(frozen=True)
class EngineOptions:
    """Everything needed to build an Engine (a frozen view of the engine flags)."""

    model: str | None = None
    init_model: str | None = None
    device: str = "auto"
    state_dtype: str = "float32"
    cache_capacity: int = 65_536
    spill_capacity: int = 262_144
    idle_timeout: float | None = None
    max_batch: int = 1024
    scan_min_steps: int = 4
    max_scan_steps: int = 64
    xla: bool = False
    threads: int = 2

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EngineOptions:
        names = cls.__dataclass_fields__
        return cls(**{k: getattr(args, k) for k in names if hasattr(args, k)})


def add_engine_arguments(
    parser: argparse.ArgumentParser, *, model_required: bool = True, max_batch: int = 1024
) -> None:
    """Add the engine flags to ``parser`` (defaults shown by ArgumentDefaultsHelpFormatter)."""
    d = EngineOptions()
    g = parser.add_argument_group("model and engine")
    g.add_argument(
        "--model",
        required=model_required,
        default=None,
        help="trained model: a Keras 3 '.keras' file or a SavedModel directory with a 'step' "
        "signature",
    )
    g.add_argument(
        "--init-model",
        default=None,
        help="optional '.keras' model mapping a stream's first input to its initial states "
        "(one output per state tensor); default: zero initial states",
    )
    g.add_argument(
        "--device",
        default=d.device,
        help="TensorFlow device for the state tables and the step: auto (first GPU, else "
        "CPU), cpu, gpu, gpu:N or a full device name",
    )
    g.add_argument(
        "--state-dtype",
        default=d.state_dtype,
        choices=sorted(STORAGE_DTYPES),
        help="storage dtype of the cached states (computation is always float32)",
    )
    g.add_argument(
        "--cache-capacity",
        type=int,
        default=d.cache_capacity,
        help="streams whose state stays on the device; beyond it the least recently used are "
        "spilled to host memory",
    )
    g.add_argument(
        "--spill-capacity",
        type=int,
        default=d.spill_capacity,
        help="evicted streams whose state is kept in host memory; beyond it the oldest are "
        "dropped (logged and counted; they restart from the initial state)",
    )
    g.add_argument(
        "--idle-timeout",
        type=float,
        default=d.idle_timeout,
        help="seconds after which an idle stream is evicted to the spill store (default: never)",
    )
    g.add_argument(
        "--max-batch",
        type=int,
        default=max_batch,
        help="most streams in one compiled step (batches are padded to a few bucket sizes: "
        "powers of two, and 1.5x steps from 192 rows)",
    )
    g.add_argument(
        "--scan-min-steps",
        type=int,
        default=d.scan_min_steps,
        help="a stream with at least this many pending records is caught up with one "
        "multi-step scan instead of single-step waves (0 = never scan)",
    )
    g.add_argument(
        "--max-scan-steps",
        type=int,
        default=d.max_scan_steps,
        help="most time steps in one scan call",
    )
    g.add_argument(
        "--xla",
        action="store_true",
        default=d.xla,
        help="compile the step with XLA (jit_compile)",
    )
    g.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        help="TensorFlow intra-op threads (inter-op: 1); 0 = TensorFlow's default",
    )


def build_engine(options: EngineOptions, model: StepModel | None = None) -> Engine:
    """Configure TensorFlow's threads, load the model (unless given) and build the engine."""
    if options.threads:
        configure_threads(options.threads, 1)
    if model is None:
        if options.model is None:
            raise ValueError("no model given")
        model = load_step_model(options.model, options.init_model)
    cache = StateCache(
        model.state_spec,
        options.cache_capacity,
        device=resolve_device(options.device),
        storage_dtype=options.state_dtype,
        spill_capacity=options.spill_capacity,
        idle_timeout_s=options.idle_timeout,
    )
    return Engine(
        model,
        cache,
        max_batch=options.max_batch,
        scan_min_steps=options.scan_min_steps,
        max_scan_steps=options.max_scan_steps,
        jit_compile=options.xla,
    )
