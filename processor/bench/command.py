"""The ``lstm-stream bench`` command: its flags (:func:`add_arguments`) and :func:`main`,
which sizes the run (:mod:`processor.bench.config`), runs it (:func:`processor.bench.suite.run`)
and writes results.json, results.md and the plots into ``--out``
(:func:`processor.bench.report.write_all`) with a verdict on each of the project's
performance goals (:data:`processor.bench.goals.GOALS`, explained in
``docs/benchmarks/goals.md``).

The exit code is 0 when every section ran and every method agreed with the Keras model
(goals that are missed are findings, reported as MISS, not failures), 1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import processor  # noqa: F401  (TF environment defaults)
from processor.engine.threads import configure_threads

if TYPE_CHECKING:
    from processor.bench.config import Config

DEFAULT_OUT = "bench-out"

#: Writes a run's results into a directory and lists the plot files it wrote in
#: ``results["plots"]`` (as :func:`processor.bench.report.write_all` does).
WriteResults = Callable[[dict[str, Any], Path], None]


class RunSuite(Protocol):
    """What runs the sections: :func:`processor.bench.suite.run`'s contract (the results
    dict of ``cfg``, with ``goals``, ``errors`` and ``agreement``; ``command`` and
    ``threads`` are recorded in it)."""

    def __call__(
        self, cfg: Config, *, command: str, threads: tuple[int, int]
    ) -> dict[str, Any]: ...


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``lstm-stream bench``."""
    from processor.bench.models import DEFAULT_MODELS, MODELS

    parser.add_argument(
        "--quick",
        action="store_true",
        help="one small model, a few batch sizes, tiny counts (well under a minute); the "
        "figures are indicative only",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help="directory for the results")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=sorted(MODELS),
        default=None,
        help=f"models to run (default: {' '.join(DEFAULT_MODELS)}; with --quick: lstm2x256)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="TensorFlow intra-op threads (set before TensorFlow runs anything); 0 = TF default",
    )
    parser.add_argument(
        "--inter-threads",
        type=int,
        default=1,
        help="TensorFlow inter-op threads; 0 = TF default",
    )
    parser.add_argument(
        "--min-time",
        type=float,
        default=None,
        help="seconds of timed calls per measured point (default: 1.0, with --quick 0.1)",
    )
    parser.add_argument(
        "--bootstrap-servers",
        default=None,
        help="Kafka bootstrap servers for the end-to-end measurement (default: not run)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and inputs")


def main(
    args: argparse.Namespace,
    *,
    configure: Callable[[int | None, int | None], None] = configure_threads,
    run: RunSuite | None = None,
    write: WriteResults | None = None,
) -> int:
    """Run the benchmark described by ``args`` (see :func:`add_arguments`) through
    :func:`run_and_write`; see the module docstring for the exit code. ``configure`` sizes
    TensorFlow's intra- and inter-op thread pools from ``--threads`` and
    ``--inter-threads`` (None for 0) before anything else (default:
    :func:`~processor.engine.threads.configure_threads`); ``run`` and ``write``: see
    :func:`run_and_write`."""
    # Before anything makes TensorFlow run an op (model building does).
    configure(args.threads or None, args.inter_threads or None)
    from processor.bench.config import full_config, quick_config
    from processor.bench.models import DEFAULT_MODELS

    models = tuple(args.models or (("lstm2x256",) if args.quick else DEFAULT_MODELS))
    make = quick_config if args.quick else full_config
    cfg = replace(
        make(models, args.min_time), bootstrap_servers=args.bootstrap_servers, seed=args.seed
    )
    return run_and_write(cfg, args, run=run, write=write)


def run_and_write(
    cfg: Config,
    args: argparse.Namespace,
    *,
    run: RunSuite | None = None,
    write: WriteResults | None = None,
) -> int:
    """Run the sections ``cfg`` sizes, write the results into ``args.out`` and print where
    they are and each goal's verdict. ``args`` (the command's flags) gives the command line
    recorded in the results and the thread counts requested. Returns the exit code (see
    the module docstring). ``run`` runs the sections (None:
    :func:`processor.bench.suite.run`), ``write`` writes the results (None:
    :func:`processor.bench.report.write_all`); the real ones are imported only here, once
    :func:`main` has sized the thread pools."""
    import tensorflow as tf

    from processor.bench import report, suite

    run_sections = run if run is not None else suite.run
    write_results = write if write is not None else report.write_all

    # Engine warm-up traces one function per bucket on purpose; TF's "retracing" warning
    # about it is noise here (retraces in timed regions are counted and reported instead).
    tf.get_logger().setLevel(logging.ERROR)
    command = "lstm-stream bench " + " ".join(shlex.quote(a) for a in _argv_of(args))
    results = run_sections(cfg, command=command, threads=(args.threads, args.inter_threads))
    out = Path(args.out)
    write_results(results, out)
    print(f"bench: results in {out}/ (results.json, results.md, {', '.join(results['plots'])})")
    for g in results["goals"]:
        print(f"  {g['status']:<8} {g['goal']}: {g['measured']}")
    ok = not results["errors"] and all(a.get("ok") for a in results["agreement"].values())
    if not ok:
        print("bench: some sections failed or methods disagree; see results.md", file=sys.stderr)
    return 0 if ok else 1


def _argv_of(args: argparse.Namespace) -> list[str]:
    """The flags of ``args`` as a command line that repeats the run."""
    out = []
    if args.quick:
        out.append("--quick")
    out += ["--out", str(args.out)]
    if args.models:
        out += ["--models", *args.models]
    out += ["--threads", str(args.threads), "--inter-threads", str(args.inter_threads)]
    if args.min_time is not None:
        out += ["--min-time", str(args.min_time)]
    if args.bootstrap_servers:
        out += ["--bootstrap-servers", args.bootstrap_servers]
    out += ["--seed", str(args.seed)]
    return out
