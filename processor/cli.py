"""The ``lstm-stream`` command: the composition root.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``main(args) -> int``. Only the chosen subcommand's module is imported, so ``--help`` and
the light commands do not pay for importing TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from processor.tfenv import quiet_tensorflow_startup

# name -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "processor.demo.command",
        "the embedded main job: synthetic live feeds for thousands of streams through the "
        "real engine, with a live display (no broker needed)",
    ),
    "replay": (
        "processor.replay",
        "run a file of msgpack input records through the engine into a file of outputs",
    ),
    "example-model": (
        "processor.demo.example_command",
        "build and train the small example forecasting model the demo uses",
    ),
    "run": (
        "processor.kafka.command",
        "the Kafka stream processor (consumer group in, topics out)",
    ),
    "produce": (
        "processor.kafka.tools.produce",
        "load generator: synthetic sensor or frame streams to Kafka",
    ),
    "tail": (
        "processor.kafka.tools.tail",
        "decode and print output or dead-letter records from Kafka",
    ),
    "bench": ("processor.bench.command", "benchmarks: the engine against baselines, side by side"),
}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _top_parser() -> argparse.ArgumentParser:
    epilog = "commands:\n" + "\n".join(f"  {n:<14} {d}" for n, (_, d) in COMMANDS.items())
    epilog += "\n\n'lstm-stream COMMAND --help' lists a command's options with their defaults."
    parser = argparse.ArgumentParser(
        prog="lstm-stream",
        description="Run a trained recurrent model one step at a time over many live streams.",
        epilog=epilog,
        formatter_class=_Formatter,
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (put it before COMMAND)",
    )
    return parser


def command_parser(name: str) -> tuple[argparse.ArgumentParser, ModuleType]:
    """The argument parser of one command (a key of :data:`COMMANDS`) and the module that
    implements it, imported on demand. Used by :func:`main` and by tests and checks that
    need a command's real options."""
    module_name, description = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"lstm-stream {name}", description=description, formatter_class=_Formatter
    )
    adder = getattr(module, f"add_{name.replace('-', '_')}_arguments", None) or module.add_arguments
    adder(parser)
    return parser, module


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    # Split "[--log-level L] COMMAND rest..." without importing any command module.
    head: list[str] = []
    while argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        head.append(argv.pop(0))
        if "=" not in head[-1] and argv:
            head.append(argv.pop(0))
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    opts = top.parse_args([*head, argv[0]])
    logging.basicConfig(
        level=opts.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The command's module may import TensorFlow, whose start-up lines (CUDA probing...)
    # read like failures: shown only with --log-level DEBUG or if the import fails.
    with quiet_tensorflow_startup(show=opts.log_level == "DEBUG"):
        parser, module = command_parser(opts.command)
    args = parser.parse_args(argv[1:])
    args.command = opts.command
    runner = getattr(module, f"main_{opts.command.replace('-', '_')}", None) or module.main
    return int(runner(args))


if __name__ == "__main__":
    sys.exit(main())
