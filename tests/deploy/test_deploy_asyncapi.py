"""schemas/asyncapi.yaml: the real AsyncAPI parser accepts it and resolves its $refs, it names
exactly the headers, reason codes and topic defaults the code uses, and records the code
writes validate against the schemas its messages reference.

This module also holds :class:`AsyncApiContract`, the validator of Kafka records against the
document, which ``tests/integration/test_asyncapi_records.py`` loads from here by path (the
same checks on records read from a real broker).
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import yaml
from jsonschema import ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
ASYNCAPI = SCHEMAS / "asyncapi.yaml"
SCRIPT = ROOT / "tests" / "tools" / "validate-asyncapi.mjs"
CHANNELS = {"input", "output", "deadLetter", "state"}
MESSAGES = {"inputRecord", "outputRecord", "deadLetter", "stateRecord", "stateTombstone"}
OPERATIONS = {
    "consumeInput": ("receive", "input"),
    "sendOutput": ("send", "output"),
    "sendDeadLetter": ("send", "deadLetter"),
    "checkpointState": ("send", "state"),
    "restoreState": ("receive", "state"),
}

#: Kafka headers as aiokafka gives and takes them.
Headers = Sequence[tuple[str, bytes]]


# ---- the contract: Kafka records against the document ------------------------------------


def to_json(value: object) -> object:
    """Unpacked msgpack as the JSON value schemas/README.md validates: bin -> base64 string."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def text_or_base64(raw: bytes | None) -> str | None:
    """A Kafka key or header value as a JSON value: None stays null, UTF-8 bytes are their
    text (keys are stream ids, header values UTF-8), other bytes their base64 (msgpack bin's
    mapping)."""
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii")


def _schema_resource(contents: Any) -> Resource[Any]:
    return Resource.from_contents(contents, default_specification=DRAFT202012)


class AsyncApiContract:
    """schemas/asyncapi.yaml loaded for validating records.

    ``$ref`` s resolve as the AsyncAPI parser resolves them: ``#/...`` within the document,
    ``./x.schema.json#/...`` from the document's folder (each schema file is also known by
    its ``$id``, for the references inside it). Each schema is validated with the validator
    of the dialect it declares (draft 2020-12 when it declares none).
    """

    def __init__(self, path: Path = ASYNCAPI) -> None:
        self.path = path
        self.doc: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
        self.uri = path.resolve().as_uri()
        resources = [(self.uri, _schema_resource(self.doc))]
        for file in sorted(path.parent.glob("*.schema.json")):
            resource = _schema_resource(yaml.safe_load(file.read_text(encoding="utf-8")))
            resources.append((file.resolve().as_uri(), resource))
            if resource.id():
                resources.append((str(resource.id()), resource))
        self.registry: Registry[Any] = Registry().with_resources(resources)
        self._validators: dict[str, Validator] = {}

    def resolve(self, node: Any) -> Any:
        """``node`` with its chain of ``$ref`` s followed (the target's contents)."""
        resolver = self.registry.resolver(base_uri=self.uri)
        while isinstance(node, dict) and "$ref" in node:
            resolved = resolver.lookup(node["$ref"])
            node, resolver = resolved.contents, resolved.resolver
        return node

    def message(self, message_id: str) -> dict[str, Any]:
        """The message ``components/messages/<message_id>`` (resolved)."""
        found: dict[str, Any] = self.resolve(self.doc["components"]["messages"][message_id])
        return found

    def channel_messages(self, channel_id: str) -> dict[str, dict[str, Any]]:
        """The messages of channel ``channel_id`` by their id in ``components/messages``."""
        out = {}
        for ref in self.doc["channels"][channel_id]["messages"].values():
            message_id = ref["$ref"].rsplit("/", 1)[-1]
            out[message_id] = self.message(message_id)
        return out

    def validator(self, pointer: str) -> Validator:
        """A validator of the schema at JSON pointer ``pointer`` of the document (``#/...``)."""
        if pointer not in self._validators:
            target = self.resolve({"$ref": pointer})
            cls = validator_for(target, default=validator_for({}))
            self._validators[pointer] = cls({"$ref": self.uri + pointer}, registry=self.registry)
        return self._validators[pointer]

    def decode_value(self, message_id: str, raw: bytes | None) -> object:
        """A Kafka value as the JSON value the message's payload schema describes: null for
        no value; an ``application/msgpack`` value unpacked (bin as base64); any other
        content type's bytes as base64. Raises for a value that is not msgpack."""
        if raw is None:
            return None
        content_type = self.message(message_id).get(
            "contentType", self.doc.get("defaultContentType")
        )
        if content_type == "application/msgpack":
            return to_json(msgpack.unpackb(raw, raw=False))
        return base64.b64encode(raw).decode("ascii")

    def errors(
        self, message_id: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> list[str]:
        """Why a Kafka record is not message ``message_id`` (empty when it is): its value
        against the payload schema, its key against the Kafka binding's key schema, its
        headers (values as UTF-8 text) against the headers schema."""
        message = self.message(message_id)
        base = f"#/components/messages/{message_id}"
        out: list[str] = []
        try:
            payload: object = self.decode_value(message_id, value)
        except Exception as exc:  # msgpack raises several unrelated types
            return [f"payload: not decodable: {exc!r}"]
        checks: list[tuple[str, str, object]] = [("payload", f"{base}/payload", payload)]
        if "key" in message.get("bindings", {}).get("kafka", {}):
            checks.append(("key", f"{base}/bindings/kafka/key", text_or_base64(key)))
        if "headers" in message:
            decoded = {name: text_or_base64(v) for name, v in headers}
            checks.append(("headers", f"{base}/headers", decoded))
        for part, pointer, instance in checks:
            for error in self.validator(pointer).iter_errors(instance):
                out.append(f"{part}: {error.message} at {list(error.absolute_path)}")
        return out

    def match(
        self, channel_id: str, key: bytes | None, value: bytes | None, headers: Headers = ()
    ) -> str:
        """The id of the one message of ``channel_id`` a Kafka record is; AssertionError
        listing every message's complaints when it is none of them or several."""
        verdicts = {
            mid: self.errors(mid, key, value, headers) for mid in self.channel_messages(channel_id)
        }
        accepted = [mid for mid, errs in verdicts.items() if not errs]
        assert len(accepted) == 1, (
            f"{channel_id}: record key={key!r} value={(value or b'')[:60]!r} headers="
            f"{list(headers)} is accepted by {accepted or 'no message'}: {verdicts}"
        )
        return accepted[0]


# ---- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def contract() -> AsyncApiContract:
    return AsyncApiContract()


@pytest.fixture
def run_parser(
    need_tool: Callable[[str], str], node_modules: Path
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_parser(*paths)`` -> the finished ``node validate-asyncapi.mjs PATH...``."""
    node = need_tool("node")

    def run(*paths: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [node, str(SCRIPT), *map(str, paths)],
            cwd=node_modules.parent,
            env={"PATH": str(Path(node).parent), "NODE_PATH": str(node_modules)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run


def _reports(stdout: str) -> dict[str, str]:
    """The script's output per file: resolved path -> the lines after its ``file`` line."""
    out: dict[str, str] = {}
    for section in re.split(r"^file ", stdout, flags=re.MULTILINE)[1:]:
        name, _, body = section.partition("\n")
        out[name] = body
    return out


def _summary(report: str) -> dict[str, int]:
    found = re.search(r"^summary (.*)$", report, re.MULTILINE)
    assert found, report
    return {k: int(v) for k, v in (item.split("=") for item in found.group(1).split())}


def _refs(node: object, where: str = "#") -> Iterator[tuple[str, str]]:
    """Every ``(location, $ref value)`` in a YAML/JSON tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield where, v
            else:
                yield from _refs(v, f"{where}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _refs(v, f"{where}/{i}")


# ---- the real parser ----------------------------------------------------------------------


def test_the_asyncapi_parser_resolves_every_channel_operation_and_message(
    run_parser: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    result = run_parser(ASYNCAPI)
    assert result.returncode == 0, result.stdout + result.stderr
    report = _reports(result.stdout)[str(ASYNCAPI)]
    summary = _summary(report)
    assert summary["errors"] == 0 and summary["warnings"] == 0, report
    assert (summary["channels"], summary["operations"], summary["messages"]) == (4, 5, 5)
    # Each payload and headers schema as the parser loaded it (required lists come from the
    # referenced files): proof that the relative $refs were followed.
    lines = set(re.findall(r"^message .*$", report, re.MULTILINE))
    assert lines == {
        "message inputRecord payload=object[seq,x] headers=-",
        "message outputRecord payload=object[stream,seq,y,shape,dtype] headers=-",
        "message deadLetter payload=string headers=object[lstm-stream.reason,"
        "lstm-stream.detail,lstm-stream.source.topic,lstm-stream.source.partition,"
        "lstm-stream.source.offset]",
        "message stateRecord payload=object[v,fp,dtype,seq,s,src] headers=-",
        "message stateTombstone payload=null headers=object[lstm-stream.state.next-offset]",
    }


#: Broken copies of the document: (file name, text replaced, replacement, expected error).
BROKEN = [
    ("broken-ref.yaml", "./output-record.schema.json", "./no-such.schema.json", "invalid-ref"),
    ("v2-action.yaml", "    action: send\n", "    action: publish\n", "asyncapi-document-resolved"),
]  # fmt: skip


def test_the_parser_refuses_broken_copies(
    run_parser: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """A $ref to a missing file, an AsyncAPI 2 verb as an operation's action: each is an
    error, and the script exits 1."""
    for schema in SCHEMAS.glob("*.schema.json"):
        shutil.copy(schema, tmp_path)
    text = ASYNCAPI.read_text(encoding="utf-8")
    for name, old, new, _ in BROKEN:
        assert old in text
        (tmp_path / name).write_text(text.replace(old, new))
    result = run_parser(*(tmp_path / name for name, *_ in BROKEN))
    assert result.returncode == 1, result.stdout + result.stderr
    reports = _reports(result.stdout)
    for name, _, _, diagnostic in BROKEN:
        report = reports[str(tmp_path / name)]
        assert re.search(rf"^error {diagnostic} ", report, re.MULTILINE), report


# ---- the document against the code --------------------------------------------------------


def test_info_version_is_the_package_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    doc = yaml.safe_load(ASYNCAPI.read_text())
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] == project["name"]
    assert doc["info"]["version"] == project["version"]


def test_every_file_ref_is_a_schema_file_and_every_schema_file_is_referenced() -> None:
    doc = yaml.safe_load(ASYNCAPI.read_text())
    files = {p.name for p in SCHEMAS.glob("*.schema.json")}
    referenced = set()
    for where, ref in _refs(doc):
        if ref.startswith("#"):
            continue
        name, _, pointer = ref.partition("#")
        assert name.startswith("./") and name[2:] in files, f"{where}: {ref}"
        referenced.add(name[2:])
        if pointer:  # the fragment must exist in the file
            node: Any = yaml.safe_load((SCHEMAS / name[2:]).read_text())
            for part in pointer.strip("/").split("/"):
                assert part in node, f"{where}: {ref}: no {part!r}"
                node = node[part]
    assert referenced == files


def test_operations_and_channels_are_the_processors(contract: AsyncApiContract) -> None:
    doc = contract.doc
    assert set(doc["channels"]) == CHANNELS
    assert set(doc["components"]["messages"]) == MESSAGES
    got = {
        name: (op["action"], op["channel"]["$ref"].rsplit("/", 1)[-1])
        for name, op in doc["operations"].items()
    }
    assert got == OPERATIONS
    content = {
        m: contract.message(m).get("contentType", doc["defaultContentType"]) for m in MESSAGES
    }
    assert content["deadLetter"] == "application/octet-stream"  # the original bytes
    assert {content[m] for m in MESSAGES - {"deadLetter"}} == {"application/msgpack"}


def test_dead_letter_headers_are_the_ones_the_writer_sends(contract: AsyncApiContract) -> None:
    from processor.kafka.io.output import DLQ_HEADERS

    headers = contract.resolve(contract.message("deadLetter")["headers"])
    assert set(headers["properties"]) == set(DLQ_HEADERS.values())
    always = {DLQ_HEADERS[k] for k in ("reason", "detail", "topic", "partition", "offset")}
    assert set(headers["required"]) == always
    assert headers["additionalProperties"] is True  # the original record's headers


def test_the_tombstone_header_is_the_one_the_checkpoint_writes(
    contract: AsyncApiContract,
) -> None:
    from processor.kafka.checkpoint.states import TOMBSTONE_OFFSET_HEADER

    headers = contract.resolve(contract.message("stateTombstone")["headers"])
    assert list(headers["properties"]) == [TOMBSTONE_OFFSET_HEADER]
    assert headers["required"] == [TOMBSTONE_OFFSET_HEADER]


def test_reason_header_lists_exactly_the_registry_reasons(contract: AsyncApiContract) -> None:
    from processor.codec.reasons import REASONS

    headers = contract.resolve(contract.message("deadLetter")["headers"])
    reason = contract.resolve(headers["properties"]["lstm-stream.reason"])
    assert [c["const"] for c in reason["oneOf"]] == list(REASONS)
    validator = contract.validator("#/components/messages/deadLetter/headers")
    base = {
        "lstm-stream.detail": "d",
        "lstm-stream.source.topic": "t",
        "lstm-stream.source.partition": "0",
        "lstm-stream.source.offset": "7",
    }
    assert all(validator.is_valid({**base, "lstm-stream.reason": r}) for r in REASONS)
    assert not validator.is_valid({**base, "lstm-stream.reason": "no_such_reason"})
    assert not validator.is_valid(
        {**base, "lstm-stream.reason": "oversize", "lstm-stream.source.offset": "x"}
    )


def test_topic_parameters_and_group_default_are_the_settings_defaults(
    contract: AsyncApiContract,
) -> None:
    from processor.config.engine_options import EngineOptions
    from processor.kafka.settings import Settings

    params = contract.doc["components"]["parameters"]
    (source,) = params["inputTopic"]["examples"]
    (output,) = params["outputTopic"]["examples"]
    settings = Settings(
        engine=EngineOptions(model="m.keras"), input_topics=(source,), output_topic=output
    )
    assert params["deadLetterTopic"]["examples"] == [settings.dlq_topic]
    assert params["stateTopic"]["examples"] == [settings.state_topics()[source]]
    group = contract.doc["operations"]["consumeInput"]["bindings"]["kafka"]["groupId"]
    assert group["default"] == settings.group_id


def test_message_examples_validate(contract: AsyncApiContract) -> None:
    checked = 0
    for mid in MESSAGES:
        for example in contract.message(mid).get("examples", []):
            for part in ("payload", "headers"):
                if part in example:
                    pointer = f"#/components/messages/{mid}/{part}"
                    contract.validator(pointer).validate(example[part])
                    checked += 1
    assert checked >= 3


# ---- records the code writes --------------------------------------------------------------

FEATURES = 3


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small LSTM(8) + Dense(2) on 3 features, saved as .keras."""
    import keras

    keras.utils.set_random_seed(5)
    inp = keras.Input((None, FEATURES))
    out = keras.layers.Dense(2)(keras.layers.LSTM(8, return_sequences=True)(inp))
    path = tmp_path_factory.mktemp("asyncapi-model") / "m.keras"
    keras.Model(inp, out).save(path)
    return path


def test_replay_outputs_and_dead_letters_validate_against_the_referenced_schemas(
    contract: AsyncApiContract, model_path: Path, tmp_path: Path
) -> None:
    from processor.cli import main as cli_main
    from processor.codec import encode_input

    rng = np.random.default_rng(3)
    good = [
        encode_input(f"s{i}", seq, rng.standard_normal(FEATURES).astype(np.float32), ts=seq)
        for seq in range(3)
        for i in range(4)
    ]
    good.append(encode_input("s9", 0, rng.standard_normal(FEATURES), include_shape=False))
    bad = {
        b"\xa2\xff\xfe": "undecodable",  # a msgpack str that is not UTF-8
        msgpack.packb([1, 2]): "not_a_map",
        msgpack.packb({"stream": "b", "seq": 0}): "missing_field",
        encode_input("b", 0, np.zeros(5, np.float32)): "shape_mismatch",
        encode_input("b", 1, np.array([1, np.nan, 0], np.float32)): "non_finite",
        encode_input("s0", 0, np.zeros(FEATURES, np.float32)): "non_increasing_seq",
    }
    (tmp_path / "in.msgpack").write_bytes(b"".join(good) + b"".join(bad))
    code = cli_main(
        [
            "replay",
            *("--model", str(model_path), "--input", str(tmp_path / "in.msgpack")),
            *("--output", str(tmp_path / "out.msgpack"), "--dlq", str(tmp_path / "dlq.msgpack")),
        ]
    )
    assert code == 0

    payload = contract.validator("#/components/messages/outputRecord/payload")
    outputs = list(msgpack.Unpacker(io.BytesIO((tmp_path / "out.msgpack").read_bytes()), raw=False))
    assert len(outputs) == len(good)
    for record in outputs:
        payload.validate(to_json(record))
    assert {r["stream"] for r in outputs} == {"s0", "s1", "s2", "s3", "s9"}

    dead = contract.validator("#/components/schemas/deadLetterFileRecord")
    letters = list(msgpack.Unpacker(io.BytesIO((tmp_path / "dlq.msgpack").read_bytes()), raw=False))
    for letter in letters:
        dead.validate(to_json(letter))
    assert {(letter["record"], letter["reason"]) for letter in letters} == set(bad.items())
    # The same checks refuse what is not such a record (they are not vacuous).
    with pytest.raises(ValidationError):
        dead.validate(to_json({**letters[0], "reason": "no_such_reason"}))
    with pytest.raises(ValidationError):
        payload.validate(to_json({**outputs[0], "y": [0.5, 1.0]}))


def test_state_records_and_tombstones_match_the_state_channel(contract: AsyncApiContract) -> None:
    from processor.kafka.checkpoint.states import state_batch
    from processor.kafka.durable.record import StateRecordCodec
    from processor.model import StateSpec
    from processor.state.cache import StreamState

    spec = [StateSpec("lstm/h", (8,)), StateSpec("lstm/c", (8,))]
    state = StreamState(arrays=(np.ones(8, np.float32), np.zeros(8, np.float32)), seq=4)
    values: list[tuple[str, bytes | None]] = [
        (f"s-{dtype}", StateRecordCodec(spec, dtype, "digest").encode(state, ("in", 1, 9)))
        for dtype in ("float32", "float16", "bfloat16")
    ]
    values.append(("ended", None))
    records, _ = state_batch(values, next_offset=10)
    kinds = [contract.match("state", key, value, headers) for key, value, headers in records]
    assert kinds == ["stateRecord"] * 3 + ["stateTombstone"]
    # A tombstone without its header, or a state without a stream id, is no state message.
    with pytest.raises(AssertionError, match="no message"):
        contract.match("state", b"ended", None, [])
    with pytest.raises(AssertionError, match="no message"):
        contract.match("state", b"", records[0][1], [])
