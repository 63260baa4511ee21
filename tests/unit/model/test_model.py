"""StepModel loading: what is refused (and why), what the StepModel reports about a model,
the file paths (.keras in safe mode, SavedModel directories) and the SavedModel contract.

Numerical equivalence with the offline model is in ``test_oracle.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from processor.errors import ModelLoadError
from processor.model import KerasStepModel, SavedModelStep, StateSpec, load_step_model

import keras  # isort: skip
import tensorflow as tf  # isort: skip

L = keras.layers


def _seq(*layers: Any, features: tuple[int | None, ...] = (None, 4)) -> Any:
    """Sequential ``Input(features) -> layers`` (``features`` includes the time axis)."""
    return keras.Sequential([keras.Input(features), *layers])


def _fn(build: Callable[[Any], Any], features: tuple[int | None, ...] = (None, 4)) -> Any:
    """Functional model ``Input(features) -> build(input)``."""
    inp = keras.Input(features)
    return keras.Model(inp, build(inp))


def _return_state(inp: Any) -> Any:
    out, _h, _c = L.LSTM(3, return_state=True, name="with_state")(inp)
    return L.Dense(2)(out)


def _branches(inp: Any) -> Any:
    a = L.Dense(5, name="left")(inp)
    b = L.Dense(5, name="right")(inp)
    return L.LSTM(3)(L.Add(name="merge")([a, b]))


def _self_attention(inp: Any) -> Any:
    h = L.Dense(8)(inp)
    return L.LSTM(3)(L.MultiHeadAttention(2, 4, name="att")(h, h))


def _dot_attention(inp: Any) -> Any:
    h = L.Dense(8)(inp)
    return L.LSTM(3)(L.Attention(name="dot_att")([h, h]))


@keras.saving.register_keras_serializable(package="lstm_stream_tests")
class Doubler(keras.layers.Layer):
    """A custom layer lstm-stream cannot know to be per-step."""

    def call(self, x: Any) -> Any:
        return x * 2.0


# (case id, model builder, fragments the error message must contain). Every message must
# name the offending layer (its name and class) and say why it cannot be stepped.
REFUSALS: list[tuple[str, Callable[[], Any], list[str]]] = [
    (
        "bidirectional",
        lambda: _seq(L.Bidirectional(L.LSTM(3), name="bidi")),
        ["'bidi'", "Bidirectional", "mixes time steps", "backwards"],
    ),
    (
        "multi_head_attention",
        lambda: _fn(_self_attention),
        ["'att'", "MultiHeadAttention", "attention looks at every time step"],
    ),
    (
        "dot_attention",
        lambda: _fn(_dot_attention),
        ["'dot_att'", "Attention", "attention looks at every time step"],
    ),
    (
        "conv1d_kernel3",
        lambda: _seq(L.Conv1D(4, 3, padding="causal", name="tconv"), L.LSTM(3)),
        ["'tconv'", "Conv1D", "kernel (3,)", "mixes time steps"],
    ),
    (
        "conv1d_stride2",
        lambda: _seq(L.Conv1D(4, 1, strides=2, name="strided"), L.LSTM(3)),
        ["'strided'", "strides (2,)", "mixes time steps"],
    ),
    (
        "conv1d_channels_first",
        lambda: _seq(
            L.Conv1D(4, 1, data_format="channels_first", name="cf"), L.LSTM(3), features=(6, 4)
        ),
        ["'cf'", "channels_first", "time axis"],
    ),
    (
        "go_backwards",
        lambda: _seq(L.LSTM(3, go_backwards=True, name="rev")),
        ["'rev'", "LSTM", "go_backwards=True", "backwards"],
    ),
    (
        "return_state",
        lambda: _fn(_return_state),
        ["'with_state'", "LSTM", "return_state=True"],
    ),
    (
        "global_average_pooling",
        lambda: _seq(L.LSTM(3, return_sequences=True), L.GlobalAveragePooling1D(name="gap")),
        ["'gap'", "GlobalAveragePooling1D", "pools over the time axis"],
    ),
    (
        "masking",
        lambda: _seq(L.Masking(name="mask"), L.LSTM(3)),
        ["'mask'", "Masking", "masking changes which steps"],
    ),
    (
        "embedding_mask_zero",
        lambda: _seq(L.Embedding(10, 4, mask_zero=True, name="emb"), L.LSTM(3), features=(None,)),
        ["'emb'", "mask_zero=True"],
    ),
    (
        "branches_merged_with_add",
        lambda: _fn(_branches),
        ["'merge'", "Add", "'left'", "'right'", "no branches or merges"],
    ),
    (
        "custom_layer",
        lambda: _seq(Doubler(name="doubler"), L.LSTM(3)),
        ["'doubler'", "Doubler", "not a layer lstm-stream knows"],
    ),
    (
        "permute",
        lambda: _seq(L.Permute((1, 2), name="perm"), L.LSTM(3)),
        ["'perm'", "Permute", "not a layer lstm-stream knows"],
    ),
    (
        "generic_rnn_wrapper",
        lambda: _seq(L.RNN(L.LSTMCell(3), name="generic")),
        ["'generic'", "RNN", "only LSTM, GRU and SimpleRNN"],
    ),
    (
        "layer_norm_over_time",
        lambda: _seq(L.LayerNormalization(axis=1, name="ln_t"), L.LSTM(3), features=(6, 4)),
        ["'ln_t'", "LayerNormalization", "axis 1", "time"],
    ),
    (
        "layer_norm_over_time_and_features",
        lambda: _seq(L.LayerNormalization(axis=[-2, -1], name="ln_tf"), L.LSTM(3), features=(6, 4)),
        ["'ln_tf'", "axis -2", "time"],
    ),
    (
        "softmax_over_time",
        lambda: _seq(L.Softmax(axis=1, name="sm_t"), L.LSTM(3)),
        ["'sm_t'", "Softmax", "axis 1"],
    ),
    (
        "einsum_dense_over_time",
        lambda: _seq(L.EinsumDense("abc,bd->adc", (5, 4), name="ein"), L.LSTM(3), features=(6, 4)),
        ["'ein'", "EinsumDense", "abc,bd->adc"],
    ),
    (
        "sequences_false_before_more_recurrent_layers",
        lambda: _seq(L.LSTM(3, name="early"), L.Reshape((1, 3)), L.GRU(2)),
        ["'early'", "return_sequences=False", "more recurrent layers follow"],
    ),
    (
        "time_mixing_after_the_stack",
        lambda: _seq(L.LSTM(3), L.RepeatVector(4, name="rep")),
        ["'rep'", "RepeatVector", "not supported after the recurrent stack"],
    ),
    (
        "no_recurrent_layer",
        lambda: _seq(L.Dense(3), L.Dense(2)),
        ["no LSTM, GRU or SimpleRNN layer"],
    ),
    (
        "flatten_over_time",
        lambda: _seq(L.Flatten(name="flat"), L.Dense(3), features=(6, 4)),
        ["'flat'", "Flatten", "not a layer lstm-stream knows"],
    ),
]


@pytest.mark.parametrize(
    ("build", "fragments"), [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS]
)
def test_refused_models_name_the_layer_and_the_reason(
    build: Callable[[], Any], fragments: list[str], tmp_path: Path
) -> None:
    model = build()
    with pytest.raises(ModelLoadError) as info:
        KerasStepModel.from_model(model)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    if fragments[0].startswith("'"):  # layer-level refusals: "layer 'name' (Class) ..."
        assert re.search(r"layer '[^']+' \([A-Za-z0-9_]+\)", message), message
    # The file path refuses the same model for the same reason (safe-mode load first).
    path = tmp_path / "refused.keras"
    model.save(path)
    with pytest.raises(ModelLoadError) as from_file:
        load_step_model(path)
    assert str(from_file.value) == str(info.value)


def test_model_with_several_outputs_is_refused_naming_them() -> None:
    inp = keras.Input((None, 4))
    out, h, c = L.LSTM(3, return_state=True, name="stateful_out")(inp)
    with pytest.raises(ModelLoadError, match=r"1 inputs and 3 outputs.*'stateful_out'"):
        KerasStepModel.from_model(keras.Model(inp, [out, h, c]))


def test_model_with_two_inputs_is_refused() -> None:
    a, b = keras.Input((None, 4)), keras.Input((None, 4))
    model = keras.Model([a, b], L.LSTM(3)(L.Concatenate()([a, b])))
    with pytest.raises(ModelLoadError, match="2 inputs and 1 outputs"):
        KerasStepModel.from_model(model)


def test_unbuilt_model_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="not built"):
        KerasStepModel.from_model(keras.Sequential([L.LSTM(3)]))


def test_layer_applied_twice_is_refused() -> None:
    def build(inp: Any) -> Any:
        d = L.Dense(4, name="twice")
        return L.LSTM(3)(d(d(inp)))

    with pytest.raises(ModelLoadError, match=r"'twice' \(Dense\) is used 2 times"):
        KerasStepModel.from_model(_fn(build))


# --------------------------------------------------------------------------------------------
# Accepted edge cases: layers that look suspicious but act on each step
# --------------------------------------------------------------------------------------------


def _step_all(sm: Any, x: np.ndarray) -> np.ndarray:
    states = sm.initial_state(tf.constant(x[:, 0]))
    ys = []
    for t in range(x.shape[1]):
        y, states = sm.step(tf.constant(x[:, t]), states)
        ys.append(np.asarray(y))
    return np.stack(ys, axis=1)


@pytest.mark.parametrize(
    "layers",
    [
        pytest.param(
            lambda: [L.Conv1D(6, 1, activation="relu"), L.LSTM(4, return_sequences=True)],
            id="conv1d_k1",
        ),
        pytest.param(
            lambda: [
                L.EinsumDense("abc,cd->abd", (None, 6), bias_axes="d"),
                L.GRU(4, return_sequences=True),
            ],
            id="einsum_per_step",
        ),
        pytest.param(
            lambda: [
                L.LayerNormalization(axis=2),
                L.Softmax(axis=-1),
                L.SimpleRNN(4, return_sequences=True),
            ],
            id="features_axis_norms",
        ),
    ],
)
def test_per_step_layers_with_axes_are_accepted_and_exact(
    layers: Callable[[], list[Any]],
    build_chain: Callable[..., Any],
    random_weights: Callable[..., None],
    rng: np.random.Generator,
) -> None:
    model = build_chain(layers(), (4,))
    random_weights(model, rng)
    sm = KerasStepModel.from_model(model)
    x = rng.normal(size=(3, 6, 4)).astype(np.float32)
    np.testing.assert_allclose(
        _step_all(sm, x), np.asarray(model(x, training=False)), rtol=1e-4, atol=1e-5
    )


def test_layer_shared_with_another_model_is_still_a_chain(
    random_weights: Callable[..., None], rng: np.random.Generator
) -> None:
    """A layer also used by another in-memory model (e.g. a training model) has inbound
    nodes there; only this model's nodes decide whether it is a chain."""
    dense = L.Dense(5, activation="tanh")
    inp = keras.Input((None, 4))
    model = keras.Model(inp, L.LSTM(3, return_sequences=True)(dense(inp)))
    other = keras.Input((None, 4))
    keras.Model(other, dense(other))
    random_weights(model, rng)
    sm = KerasStepModel.from_model(model)
    x = rng.normal(size=(2, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(
        _step_all(sm, x), np.asarray(model(x, training=False)), rtol=1e-4, atol=1e-5
    )


# --------------------------------------------------------------------------------------------
# What a StepModel reports
# --------------------------------------------------------------------------------------------


def test_state_spec_shapes_and_flops_of_a_known_model() -> None:
    model = _seq(
        L.Dense(8, name="enc"),
        L.LSTM(6, return_sequences=True, name="l1"),
        L.GRU(4, name="g2"),
        L.Dense(3, name="out"),
        features=(None, 5),
    )
    sm = KerasStepModel.from_model(model)
    assert sm.state_spec == (
        StateSpec("l1/h", (6,)),
        StateSpec("l1/c", (6,)),
        StateSpec("g2/h", (4,)),
    )
    assert (sm.input_shape, sm.input_dtype, sm.output_shape) == ((5,), "float32", (3,))
    assert not sm.has_init_model
    # Matmul FLOPs per step: Dense 2*5*8, LSTM 2*(8+6)*4*6, GRU 2*(6+4)*3*4, Dense 2*4*3.
    assert sm.flops_per_step == 80 + 672 + 240 + 24


@pytest.mark.parametrize(
    ("layers", "output_shape"),
    [
        pytest.param(lambda: [L.GRU(7)], (7,), id="sequences_false_no_head"),
        pytest.param(lambda: [L.LSTM(7, return_sequences=True)], (7,), id="sequences_no_head"),
        pytest.param(lambda: [L.LSTM(7), L.Dense(2)], (2,), id="sequences_false_head"),
        pytest.param(
            lambda: [L.LSTM(6), L.Reshape((2, 3)), L.Dense(4)], (2, 4), id="reshaped_head"
        ),
        pytest.param(
            lambda: [L.SimpleRNN(5, return_sequences=True), L.TimeDistributed(L.Dense(2))],
            (2,),
            id="time_distributed_head",
        ),
    ],
)
def test_output_shape_is_per_step(
    layers: Callable[[], list[Any]],
    output_shape: tuple[int, ...],
    build_chain: Callable[..., Any],
    rng: np.random.Generator,
) -> None:
    """``output_shape`` has no batch and no time axis, also when the model ends with a
    return_sequences=False recurrent layer (regression: it used to report ``()``)."""
    sm = KerasStepModel.from_model(build_chain(layers(), (3,)))
    assert sm.output_shape == output_shape
    y, _ = sm.step(
        tf.constant(rng.normal(size=(2, 3)).astype(np.float32)),
        [tf.zeros((2, *s.shape)) for s in sm.state_spec],
    )
    assert tuple(y.shape) == (2, *output_shape)
    assert y.dtype == tf.float32


def test_step_is_pure_and_initial_state_is_zero(rng: np.random.Generator) -> None:
    """Same inputs, same outputs: the step keeps no state of its own; new states are
    float32 with the spec's shapes; without an init model the initial states are zeros."""
    sm = KerasStepModel.from_model(_seq(L.LSTM(4, return_sequences=True), L.GRU(3)))
    x = tf.constant(rng.normal(size=(5, 4)).astype(np.float32))
    states = [tf.constant(rng.normal(size=(5, *s.shape)).astype(np.float32)) for s in sm.state_spec]
    y1, new1 = sm.step(x, states)
    y2, new2 = sm.step(x, states)
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))
    for a, b, spec in zip(new1, new2, sm.state_spec, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert tuple(a.shape) == (5, *spec.shape) and a.dtype == tf.float32
    for s, spec in zip(sm.initial_state(x), sm.state_spec, strict=True):
        np.testing.assert_array_equal(np.asarray(s), np.zeros((5, *spec.shape)))


def test_step_traces_once_for_any_batch_size(rng: np.random.Generator) -> None:
    """The step works under tf.function with an unknown batch size (the engine's buckets)."""
    sm = KerasStepModel.from_model(_seq(L.Dense(3), L.LSTM(4)))
    fn = tf.function(
        sm.step,
        input_signature=[
            tf.TensorSpec([None, 4]),
            [tf.TensorSpec([None, 4]), tf.TensorSpec([None, 4])],
        ],
    )
    for b in (1, 8, 33):
        x = rng.normal(size=(b, 4)).astype(np.float32)
        s = [tf.zeros((b, 4))] * 2
        y, _ = fn(tf.constant(x), s)
        want, _ = sm.step(tf.constant(x), s)
        np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=1e-6, atol=1e-7)
    assert fn.experimental_get_tracing_count() == 1


def test_identity_distinguishes_weights_and_init_models(rng: np.random.Generator) -> None:
    """States of one model must not be continued by another: two models with the same
    layers but other weights (or another init model) have other identities."""
    a = _seq(L.LSTM(4))
    b = keras.models.clone_model(a)
    b.set_weights(a.get_weights())
    assert KerasStepModel.from_model(a).identity == KerasStepModel.from_model(b).identity
    b.set_weights([w + 0.01 for w in a.get_weights()])
    assert KerasStepModel.from_model(a).identity != KerasStepModel.from_model(b).identity
    inp = keras.Input((4,))
    init = keras.Model(inp, [L.Dense(4)(inp), L.Dense(4)(inp)])
    with_init = KerasStepModel.from_model(a, init)
    assert with_init.has_init_model
    assert with_init.identity != KerasStepModel.from_model(a).identity


def test_file_identity_is_stable_and_depends_on_the_file(tmp_path: Path) -> None:
    model = _seq(L.LSTM(4))
    model.save(tmp_path / "a.keras")
    first = load_step_model(tmp_path / "a.keras")
    assert load_step_model(str(tmp_path / "a.keras")).identity == first.identity
    model.set_weights([w * 2 for w in model.get_weights()])
    model.save(tmp_path / "b.keras")
    assert load_step_model(tmp_path / "b.keras").identity != first.identity


# --------------------------------------------------------------------------------------------
# Init models
# --------------------------------------------------------------------------------------------


def _init_for(outputs: list[int], features: int = 4) -> Any:
    inp = keras.Input((features,))
    outs = [L.Dense(n, activation="tanh")(inp) for n in outputs]
    return keras.Model(inp, outs if len(outs) > 1 else outs[0])


def test_init_model_states_come_from_the_first_input(
    rng: np.random.Generator, tmp_path: Path
) -> None:
    model = _seq(L.LSTM(5, return_sequences=True), L.GRU(3))
    init = _init_for([5, 5, 3])
    model.save(tmp_path / "m.keras")
    init.save(tmp_path / "init.keras")
    sm = load_step_model(tmp_path / "m.keras", init_model=str(tmp_path / "init.keras"))
    assert sm.has_init_model
    x = rng.normal(size=(6, 4)).astype(np.float32)
    got = sm.initial_state(tf.constant(x))
    want = init(x)
    assert len(got) == 3
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-7)


def test_single_state_init_model_with_one_output(rng: np.random.Generator) -> None:
    sm = KerasStepModel.from_model(_seq(L.GRU(3)), _init_for([3]))
    (s,) = sm.initial_state(tf.constant(rng.normal(size=(2, 4)).astype(np.float32)))
    assert tuple(s.shape) == (2, 3)


@pytest.mark.parametrize(
    ("init", "message"),
    [
        pytest.param(
            lambda: _init_for([5, 5]), r"expected one output per state.*'g/h'", id="too_few"
        ),
        pytest.param(
            lambda: _init_for([5, 4, 3]), r"shapes \[\(5,\), \(4,\), \(3,\)\]", id="wrong_shape"
        ),
        pytest.param(
            lambda: _init_for([5, 5, 3], features=7),
            r"input shape \(7,\) does not match.*\(4,\)",
            id="wrong_input",
        ),
    ],
)
def test_mismatched_init_model_is_refused(init: Callable[[], Any], message: str) -> None:
    model = _seq(L.LSTM(5, return_sequences=True, name="l"), L.GRU(3, name="g"))
    with pytest.raises(ModelLoadError, match=message):
        KerasStepModel.from_model(model, init())


def test_init_model_path_must_be_a_keras_file(tmp_path: Path) -> None:
    _seq(L.LSTM(3)).save(tmp_path / "m.keras")
    with pytest.raises(ModelLoadError, match=r"must be an existing '\.keras' file"):
        load_step_model(tmp_path / "m.keras", init_model=str(tmp_path / "missing.keras"))
    (tmp_path / "init.h5").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match=r"must be an existing '\.keras' file"):
        load_step_model(tmp_path / "m.keras", init_model=str(tmp_path / "init.h5"))


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_step_model(tmp_path / "nope.keras")


@pytest.mark.parametrize("name", ["model.h5", "model.txt", "model"])
def test_non_keras_file_is_refused(name: str, tmp_path: Path) -> None:
    (tmp_path / name).write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(ModelLoadError, match=r"is not a Keras 3 '\.keras' file"):
        load_step_model(tmp_path / name)


def test_corrupt_keras_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "broken.keras").write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(ModelLoadError, match="cannot load Keras model"):
        load_step_model(tmp_path / "broken.keras")


def test_directory_without_saved_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"is not a SavedModel \(no saved_model\.pb\)"):
        load_step_model(tmp_path / "empty")


def _lambda_model() -> Any:
    return _seq(L.Lambda(lambda x: x * 2.0, name="lam"), L.LSTM(3))


def test_lambda_layer_is_refused_by_safe_mode(tmp_path: Path) -> None:
    _lambda_model().save(tmp_path / "lambda.keras")
    with pytest.raises(ModelLoadError) as info:
        load_step_model(tmp_path / "lambda.keras")
    message = str(info.value)
    assert "Lambda" in message and "safe mode" in message


def test_lambda_is_refused_even_after_global_unsafe_deserialization(tmp_path: Path) -> None:
    """lstm-stream passes safe_mode=True explicitly: a process-wide
    ``keras.config.enable_unsafe_deserialization()`` does not open the door."""
    from keras.src.backend.common import global_state

    _lambda_model().save(tmp_path / "lambda.keras")
    before = global_state.get_global_attribute("safe_mode_saving")
    keras.config.enable_unsafe_deserialization()
    try:
        with pytest.raises(ModelLoadError, match="Lambda"):
            load_step_model(tmp_path / "lambda.keras")
    finally:
        global_state.set_global_attribute("safe_mode_saving", before)


def test_unregistered_custom_layer_in_a_file_is_refused(tmp_path: Path) -> None:
    """A .keras file naming a class this process does not know cannot be loaded."""

    class Unregistered(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            return x

    _seq(Unregistered(name="stranger"), L.LSTM(3)).save(tmp_path / "custom.keras")
    with pytest.raises(ModelLoadError) as info:
        load_step_model(tmp_path / "custom.keras")
    message = str(info.value)
    assert message.startswith("cannot load Keras model")
    assert "Could not locate class 'Unregistered'" in message
    assert len(message) < 1500  # not the whole model config


def test_registered_custom_layer_loads_but_is_refused_as_unknown(tmp_path: Path) -> None:
    _seq(Doubler(name="dbl"), L.LSTM(3)).save(tmp_path / "custom.keras")
    with pytest.raises(ModelLoadError, match=r"'dbl' \(Doubler\) is not a layer"):
        load_step_model(tmp_path / "custom.keras")


# --------------------------------------------------------------------------------------------
# SavedModel contract
# --------------------------------------------------------------------------------------------


def test_saved_model_steps_like_the_cell_run_directly(
    lstm_step_module: Callable[..., Any], rng: np.random.Generator, tmp_path: Path
) -> None:
    module = lstm_step_module(with_init=False)
    sm = load_step_model(module.export(tmp_path / "saved"))
    assert isinstance(sm, SavedModelStep)
    assert sm.input_shape == (4,) and sm.input_dtype == "float32"
    assert sm.output_shape == (3,)
    assert sm.state_spec == (StateSpec("state_0", (6,)), StateSpec("state_1", (6,)))
    assert not sm.has_init_model
    assert sm.flops_per_step == 0
    x = rng.normal(size=(5, 7, 4)).astype(np.float32)
    states = [tf.zeros((5, 6))] * 2
    ref = [tf.zeros((5, 6))] * 2
    for t in range(7):
        y, states = sm.step(tf.constant(x[:, t]), states)
        out = module.step_fn(tf.constant(x[:, t]), *ref)
        ref = [out["state_0"], out["state_1"]]
        np.testing.assert_allclose(np.asarray(y), np.asarray(out["y"]), rtol=1e-6, atol=1e-6)
        for a, b in zip(states, ref, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    for s in sm.initial_state(tf.constant(x[:, 0])):
        np.testing.assert_array_equal(np.asarray(s), np.zeros((5, 6)))
    # The identity is a digest of the directory: stable across loads.
    assert load_step_model(tmp_path / "saved").identity == sm.identity


def test_saved_model_initial_state_signature(
    lstm_step_module: Callable[..., Any], rng: np.random.Generator, tmp_path: Path
) -> None:
    module = lstm_step_module(with_init=True)
    sm = load_step_model(module.export(tmp_path / "saved"))
    assert sm.has_init_model
    x = tf.constant(rng.normal(size=(3, 4)).astype(np.float32))
    want = module.init_fn(x)
    got = sm.initial_state(x)
    for g, name in zip(got, ("state_0", "state_1"), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(want[name]), rtol=1e-6)


def test_init_model_flag_is_refused_for_a_saved_model(
    lstm_step_module: Callable[..., Any], tmp_path: Path
) -> None:
    path = lstm_step_module().export(tmp_path / "saved")
    with pytest.raises(ModelLoadError, match="'initial_state' signature"):
        load_step_model(path, init_model=str(tmp_path / "init.keras"))


class _Custom(tf.Module):
    """A hand-written step (tf ops only) whose signatures each test chooses."""

    def __init__(self) -> None:
        super().__init__()
        self.w = tf.Variable(tf.ones((4, 3)))


def _save_signatures(path: Path, signatures: dict[str, Any]) -> Path:
    module = _Custom()
    tf.saved_model.save(module, str(path), signatures={k: f(module) for k, f in signatures.items()})
    return path


def _sig(fn: Callable[..., Any], **specs: Any) -> Callable[[Any], Any]:
    """A signature factory: ``fn(module, **inputs)`` traced with the given input specs."""
    return lambda module: tf.function(lambda **kw: fn(module, **kw)).get_concrete_function(**specs)


X = tf.TensorSpec([None, 4], tf.float32)
S = tf.TensorSpec([None, 3], tf.float32)


def _good_step(m: Any, x: Any, state_0: Any) -> dict[str, Any]:
    h = tf.tanh(x @ m.w + state_0)
    return {"y": h, "state_0": h}


BAD_SAVED_MODELS: list[tuple[str, dict[str, Callable[[Any], Any]], str]] = [
    (
        "no_step_signature",
        {"serving_default": _sig(_good_step, x=X, state_0=S)},
        r"has signatures \['serving_default'\]; it must export a 'step' signature",
    ),
    (
        "states_not_named_state_i",
        {"step": _sig(lambda m, x, h: {"y": x @ m.w + h, "h": h}, x=X, h=S)},
        r"'step' signature inputs are \['h', 'x'\]; expected 'x' and 'state_0'",
    ),
    (
        "no_x_input",
        {
            "step": _sig(
                lambda m, inputs, state_0: _good_step(m, inputs, state_0), inputs=X, state_0=S
            )
        },
        r"'step' signature inputs \['inputs', 'state_0'\] lack 'x'",
    ),
    (
        "no_state_at_all",
        {"step": _sig(lambda m, x: {"y": x @ m.w}, x=X)},
        r"'step' signature inputs are \['x'\]; expected 'x' and 'state_0'",
    ),
    (
        "wrong_output_names",
        {
            "step": _sig(
                lambda m, x, state_0: {"out": x @ m.w, "new_state": state_0}, x=X, state_0=S
            )
        },
        r"'step' signature outputs are \['new_state', 'out'\]; expected 'y'",
    ),
    (
        "float64_state",
        {
            "step": _sig(
                lambda m, x, state_0: {"y": x @ m.w, "state_0": state_0},
                x=X,
                state_0=tf.TensorSpec([None, 3], tf.float64),
            )
        },
        r"state_0 is float64; states must be float32",
    ),
    (
        "undefined_input_shape",
        {
            "step": _sig(
                lambda m, x, state_0: {"y": state_0, "state_0": state_0},
                x=tf.TensorSpec([None, None], tf.float32),
                state_0=S,
            )
        },
        r"'step' input x has shape \(None, None\).*fully defined",
    ),
    (
        "new_state_of_another_shape",
        {"step": _sig(lambda m, x, state_0: {"y": state_0, "state_0": x}, x=X, state_0=S)},
        r"'step' output state_0 is float32\[4\]; expected .*\[3\] like input state_0",
    ),
    (
        "initial_state_with_wrong_outputs",
        {
            "step": _sig(_good_step, x=X, state_0=S),
            "initial_state": _sig(lambda m, x: {"h0": x @ m.w}, x=X),
        },
        r"'initial_state' signature outputs are \['h0'\]; expected \['state_0'\]",
    ),
    (
        "initial_state_with_wrong_input",
        {
            "step": _sig(_good_step, x=X, state_0=S),
            "initial_state": _sig(
                lambda m, x: {"state_0": x[:, :3]}, x=tf.TensorSpec([None, 5], tf.float32)
            ),
        },
        r"'initial_state' input x is float32\[5\]; expected float32\[4\]",
    ),
]


@pytest.mark.parametrize(
    ("signatures", "message"),
    [c[1:] for c in BAD_SAVED_MODELS],
    ids=[c[0] for c in BAD_SAVED_MODELS],
)
def test_saved_model_violating_the_contract_is_refused(
    signatures: dict[str, Callable[[Any], Any]], message: str, tmp_path: Path
) -> None:
    path = _save_signatures(tmp_path / "bad", signatures)
    with pytest.raises(ModelLoadError, match=message):
        load_step_model(path)


def test_hand_written_saved_model_is_accepted(tmp_path: Path) -> None:
    """The minimal contract (tf ops, one state, no init) loads and steps."""
    path = _save_signatures(tmp_path / "ok", {"step": _sig(_good_step, x=X, state_0=S)})
    sm = load_step_model(path)
    x = tf.ones((2, 4))
    y, (s,) = sm.step(x, [tf.zeros((2, 3))])
    np.testing.assert_allclose(np.asarray(y), np.tanh(np.full((2, 3), 4.0)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(s), np.asarray(y))


def test_unloadable_saved_model_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "saved_model.pb").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="cannot load SavedModel"):
        load_step_model(tmp_path / "junk")
