"""Options declared once, on the frozen dataclass they configure, and read from every source.

* :mod:`.declare` -- :func:`~.declare.option` (a field's declaration),
  :class:`~.declare.Option` (everything derived from it: flag, variable, TOML key, value
  syntax), :func:`~.declare.options_of`, the single-value checks (:func:`~.declare.at_least`...)
  and :func:`~.declare.problems`.
* :mod:`.flags` -- :func:`~.flags.add_arguments`: declared options as argparse flags, plain
  (flags only) or layered (over the environment and a TOML file).
* :mod:`.sources` -- :func:`~.sources.resolve` (flags over ``LSTM_STREAM_*`` variables over a
  TOML table), :func:`~.sources.load_toml` and :data:`~.sources.CONFIG_ENV`.
* :mod:`.syntax` -- the boolean and ``KEY=VALUE`` syntax shared with the Kafka options.
* :mod:`.secrets` -- which option values are secrets, and :data:`~.secrets.REDACTED`.
* :mod:`.engine_options` -- :class:`~.engine_options.EngineOptions`, the engine's options
  shared by every command that runs the model, and :func:`~.engine_options.add_engine_arguments`.

This package imports no engine, state, model or transport, nor anything heavy; import the
modules themselves (this face re-exports nothing).
"""
