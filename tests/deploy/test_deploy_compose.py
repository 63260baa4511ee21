"""Static checks of the docker compose stack (deploy/compose): the files match the Compose
specification (check-jsonschema's vendored schema), every reference resolves (services,
volumes, host paths, secrets, the build), every ``LSTM_STREAM_*`` variable is a setting of
the command its service runs and the settings load with the project's own loader, the
commands parse with the project's own parsers, the topics the one-shot service creates
are the ones the processors and the load generator use, and the state cache's disk tier is
on a volume (not the tmpfs) that the image's user may write to.

No container runs: the checks read the files (``compose.yaml`` and each override
``compose.*.yaml``, merged the way Compose merges mappings) and need no broker.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from processor import cli
from processor.config.declare import ENV_PREFIX, Shape, options_of
from processor.kafka.io.clients import client_kwargs
from processor.kafka.settings import CONFIG_ENV as RUN_CONFIG_ENV
from processor.kafka.settings import Settings, run_options, settings_from_args
from processor.kafka.tools.flags import CONFIG_ENV as TOOLS_CONFIG_ENV
from processor.kafka.tools.flags import KafkaSources

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
OVERRIDES = sorted(COMPOSE_DIR.glob("compose.*.yaml"))
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
GRAFANA = ROOT / "deploy" / "grafana"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}
_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")
# Kafka options that name files (aiokafka takes an ssl_context; lstm-stream builds it).
_FILE_OPTIONS = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")


def _interpolate(text: str) -> str:
    """Compose's interpolation with an empty environment: a default when there is one; a
    required variable (``:?``) stands in as its own name in lower case (a value the checks
    can carry, never a real host)."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.groups()
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            return name.lower()
        return ""

    return _VARIABLE.sub(one, text)


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path}: not a mapping"
    return data


def _merge(base: Any, over: Any) -> Any:
    """Compose's merge of an override into a file, as far as these files use it: mappings
    merge key by key, anything else (lists, scalars) is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = _merge(base[key], value) if key in base else value
        return out
    return over


def _project(*overrides: Path) -> dict[str, Any]:
    """compose.yaml with ``overrides`` merged in order."""
    data = _load(COMPOSE)
    for path in overrides:
        data = _merge(data, _load(path))
    return data


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=VALUE", ...]
        env = dict(item.split("=", 1) for item in env)
    return {str(k): _interpolate(str(v)) for k, v in env.items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _runs_lstm_stream(service: dict[str, Any]) -> bool:
    """The service runs the image's ENTRYPOINT (``lstm-stream``) with its command."""
    return "build" in service and "entrypoint" not in service


def _lstm_services(project: dict[str, Any], subcommand: str) -> dict[str, dict[str, Any]]:
    return {
        name: s
        for name, s in project["services"].items()
        if _runs_lstm_stream(s) and _command(s)[:1] == [subcommand]
    }


def _shell_lines(service: dict[str, Any]) -> Iterator[list[str]]:
    """The commands of a ``/bin/sh -c`` service, one word list per line and per ``||``
    alternative."""
    assert service.get("entrypoint", [None])[0] == "/bin/sh", service.get("entrypoint")
    scripts = service["command"]
    for script in [scripts] if isinstance(scripts, str) else scripts:
        for line in str(script).splitlines():
            for part in line.split("||"):
                if part.strip():
                    yield shlex.split(part)


def _parser(command: str) -> argparse.ArgumentParser:
    parser, _ = cli.command_parser(command)
    return parser


def _parse(command: str, argv: list[str]) -> argparse.Namespace:
    """``lstm-stream COMMAND argv`` parsed by the command's own parser; a flag it does not
    know (or a bad value) fails the test with argparse's message."""
    parser = _parser(command)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"lstm-stream {command} {shlex.join(argv)}: {err.getvalue()}")


def _env_names(subcommand: str) -> tuple[set[str], set[str]]:
    """(variables, prefixes of map variables) that ``lstm-stream SUBCOMMAND`` reads, from
    the commands' own option declarations: ``run`` every setting, ``produce`` and ``tail``
    the Kafka client options and the settings file, the others nothing."""
    if subcommand == "run":
        options = run_options()
        config = {RUN_CONFIG_ENV}
    elif subcommand in ("produce", "tail"):
        options = options_of(KafkaSources)
        config = {TOOLS_CONFIG_ENV}
    else:
        return set(), set()
    names = {o.env for o in options if o.shape != Shape.MAP} | config
    return names, {o.env for o in options if o.shape == Shape.MAP}


def _subcommand(service: dict[str, Any]) -> str | None:
    """The ``lstm-stream`` subcommand a service runs (through the image's ENTRYPOINT or a
    shell line), or None."""
    if _runs_lstm_stream(service):
        return _command(service)[0]
    if service.get("entrypoint", [None])[0] == "/bin/sh":
        for words in _shell_lines(service):
            if words[0] == "lstm-stream":
                return words[1]
    return None


def _mount_source(project: dict[str, Any], service: dict[str, Any], target: str) -> Path | None:
    """The host file behind container path ``target`` of ``service``: a secret (target
    under /run/secrets) or a bind mount; None when nothing is mounted there."""
    for secret in service.get("secrets") or []:
        source = secret if isinstance(secret, str) else secret["source"]
        name = source if isinstance(secret, str) else secret.get("target", source)
        path = name if name.startswith("/") else f"/run/secrets/{name}"
        if path == target:
            return COMPOSE_DIR / _interpolate(project["secrets"][source]["file"])
    for volume in service.get("volumes") or []:
        host, _, rest = str(volume).partition(":")
        if host.startswith((".", "/")) and rest.split(":")[0] == target:
            return COMPOSE_DIR / host
    return None


def _settings(project: dict[str, Any], service: dict[str, Any]) -> Settings:
    """The Settings ``run`` would build inside ``service``'s container from its environment
    (a settings file it names through LSTM_STREAM_CONFIG is read from the host file
    mounted there), with the project's own loader: unknown TOML keys and bad values fail."""
    env = _environment(service)
    if RUN_CONFIG_ENV in env:
        host = _mount_source(project, service, env[RUN_CONFIG_ENV])
        assert host is not None and host.is_file(), f"{env[RUN_CONFIG_ENV]} is not mounted"
        env[RUN_CONFIG_ENV] = str(host)
    return settings_from_args(None, environ=env)


def _check_kafka_options(project: dict[str, Any], service: dict[str, Any], s: Settings) -> None:
    """The Kafka client options are aiokafka's (client_kwargs refuses any other), and a
    file option names a file mounted into the container. The placeholder files shipped as
    examples are not certificates, so the system's CA bundle stands in for them while the
    SSL context is built."""
    options = dict(s.kafka)
    for key in _FILE_OPTIONS:
        if key in options:
            assert _mount_source(project, service, options[key]) is not None, (key, options)
            options[key] = ssl.get_default_verify_paths().cafile
    client_kwargs(s.bootstrap_servers, s.group_id, options, drain_timeout=s.drain_timeout)


def _image_user() -> tuple[str, str]:
    """(uid, home directory) of the image's user, from the Dockerfile: the uid its ``USER``
    names, and the ``--home-dir`` of the ``useradd --create-home`` that creates that uid
    (so the directory exists in the image and belongs to the user)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    user = re.search(r"^USER (\d+)", text, re.M)
    assert user is not None, "the Dockerfile names no numeric USER"
    (useradd,) = [line for line in text.splitlines() if "useradd" in line]
    words = shlex.split(useradd[useradd.index("useradd") :].split("&&")[0])
    assert words[words.index("--uid") + 1] == user.group(1), useradd
    assert "--create-home" in words, useradd
    return user.group(1), words[words.index("--home-dir") + 1]


def _mount_under(service: dict[str, Any], path: str) -> tuple[str, str, str]:
    """(kind, source, target) of the mount that holds container ``path`` in ``service``:
    the deepest volume, bind mount or tmpfs whose target contains it; ("image", "", "/")
    when none does."""
    mounts = [("tmpfs", target, "") for target in service.get("tmpfs") or []]
    for volume in service.get("volumes") or []:
        source, target = str(volume).split(":")[:2]
        kind = "bind" if source.startswith((".", "/")) else "volume"
        mounts.append((kind, target, source))
    holding = [m for m in mounts if path == m[1] or path.startswith(m[1].rstrip("/") + "/")]
    if not holding:
        return "image", "", "/"
    kind, target, source = max(holding, key=lambda m: len(m[1]))
    return kind, source, target


def _created_topics(project: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """topic -> {partitions, configs} of every kafka-topics.sh --create in the project."""
    out: dict[str, dict[str, Any]] = {}
    for service in project["services"].values():
        if service.get("entrypoint", [None])[0] != "/bin/sh":
            continue
        for words in _shell_lines(service):
            if not words[0].endswith("kafka-topics.sh") or "--create" not in words:
                continue
            topic = words[words.index("--topic") + 1]
            configs = dict(
                words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "--config"
            )
            out[topic] = {
                "partitions": int(words[words.index("--partitions") + 1]),
                "configs": configs,
                "bootstrap": words[words.index("--bootstrap-server") + 1],
            }
    return out


PROJECTS = {"compose.yaml": ()} | {p.name: (p,) for p in OVERRIDES}


@pytest.fixture(params=sorted(PROJECTS), scope="module")
def project(request: pytest.FixtureRequest) -> dict[str, Any]:
    """compose.yaml alone, then merged with each override file in turn."""
    return _project(*PROJECTS[request.param])


# ---- the files are Compose files ------------------------------------------------------------


@pytest.mark.parametrize("path", [COMPOSE, *OVERRIDES], ids=lambda p: p.name)
def test_compose_file_matches_the_compose_spec(path: Path, need_tool: Callable[[str], str]) -> None:
    done = subprocess.run(
        [need_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_there_is_a_sasl_override() -> None:
    # The SASL_SSL settings are shown as an override file; it must be among those checked.
    assert [p.name for p in OVERRIDES] == ["compose.sasl.yaml"]


# ---- references -----------------------------------------------------------------------------


def test_every_reference_resolves(project: dict[str, Any]) -> None:
    services = project["services"]
    volumes = set(project.get("volumes") or {})
    for name, service in services.items():
        for dep in service.get("depends_on") or []:
            assert dep in services, f"{name} depends on unknown service {dep}"
        for volume in service.get("volumes") or []:
            source = str(volume).split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE_DIR / source).exists(), f"{name}: bind source {source} missing"
            else:
                assert source in volumes, f"{name}: volume {source} is not declared"
        for kind in ("secrets", "configs"):
            for ref in service.get(kind) or []:
                source = ref if isinstance(ref, str) else ref["source"]
                assert source in (project.get(kind) or {}), f"{name}: {kind} {source} undeclared"
        if "build" in service:
            context = COMPOSE_DIR / service["build"]["context"]
            assert context.resolve() == ROOT, context
            assert (context / service["build"]["dockerfile"]).is_file()
    for kind in ("secrets", "configs"):
        for name, spec in (project.get(kind) or {}).items():
            path = COMPOSE_DIR / _interpolate(spec["file"])
            assert path.is_file(), f"{kind} {name}: {path} missing"


def test_depends_on_waits_for_the_one_shot_services_and_the_broker() -> None:
    project = _project()
    for name in ("processor", "loadgen"):
        deps = project["services"][name]["depends_on"]
        assert deps["topics"]["condition"] == "service_completed_successfully", name
        assert deps["model"]["condition"] == "service_completed_successfully", name
    assert project["services"]["processor"]["depends_on"]["kafka"]["condition"] == (
        "service_healthy"
    )
    assert project["services"]["topics"]["depends_on"]["kafka"]["condition"] == ("service_healthy")
    assert "healthcheck" in project["services"]["kafka"]


# ---- settings and commands ------------------------------------------------------------------


def test_lstm_stream_variables_are_settings_of_the_command(project: dict[str, Any]) -> None:
    assert _lstm_services(project, "run"), "no service runs `lstm-stream run`"
    for name, service in project["services"].items():
        env = [k for k in _environment(service) if k.startswith(ENV_PREFIX)]
        subcommand = _subcommand(service)
        names, prefixes = _env_names(subcommand or "")
        unknown = [k for k in env if k not in names and not any(k.startswith(p) for p in prefixes)]
        assert not unknown, f"{name}: `lstm-stream {subcommand}` reads no {unknown}"
        if subcommand == "run":
            settings = _settings(project, service)
            _check_kafka_options(project, service, settings)


def test_the_sasl_override_connects_with_scram_over_tls() -> None:
    project = _project(COMPOSE_DIR / "compose.sasl.yaml")
    processor = project["services"]["processor"]
    settings = _settings(project, processor)
    assert settings.kafka["security_protocol"] == "SASL_SSL"
    assert settings.kafka["sasl_mechanism"] == "SCRAM-SHA-512"
    assert {"sasl_plain_username", "sasl_plain_password", "ssl_cafile"} <= set(settings.kafka)
    # The password comes from the mounted secret file, never from a compose file's
    # environment (which `docker compose config` and `docker inspect` show).
    assert not [k for k in _environment(processor) if "PASSWORD" in k]


def test_commands_parse_with_their_own_parsers(project: dict[str, Any]) -> None:
    services = project["services"]
    for service in services.values():
        if _runs_lstm_stream(service):
            words = _command(service)
            _parse(words[0], words[1:])
        elif service.get("entrypoint", [None])[0] == "/bin/sh":
            for words in _shell_lines(service):
                if words[0] == "lstm-stream":
                    _parse(words[1], words[2:])
    # The one-shot model service writes where the processors and the load generator read.
    (writer,) = [w for w in _shell_lines(services["model"]) if w[0] == "lstm-stream"]
    assert writer[1] == "example-model"
    model = _parse("example-model", writer[2:]).out
    assert _settings(project, services["processor"]).engine.model == model
    loadgen = _parse("produce", _command(services["loadgen"])[1:])
    assert loadgen.model == model


def test_state_dir_is_on_a_disk_volume_the_image_user_owns(project: dict[str, Any]) -> None:
    processor = project["services"]["processor"]
    state_dir = _settings(project, processor).engine.state_dir
    assert state_dir is not None, "the disk tier would go to /tmp, a tmpfs: RAM"
    # On a named volume, not the tmpfs (RAM) nor the read-only image.
    kind, source, target = _mount_under(processor, state_dir)
    assert kind == "volume", (state_dir, kind)
    assert source in (project.get("volumes") or {}), source
    # Mounted on the image user's home directory: a new volume takes that directory's
    # owner, the uid the processors run as. Anywhere the image has no such directory the
    # volume would belong to root and the processors could not write to it.
    uid, home = _image_user()
    assert target == home, (target, home)
    assert str(processor.get("user", uid)).split(":")[0] == uid
    assert processor.get("read_only") is True


def test_topics_created_are_the_ones_used(project: dict[str, Any]) -> None:
    services = project["services"]
    created = _created_topics(project)
    (run_name,) = _lstm_services(project, "run")
    settings = _settings(project, services[run_name])
    (state_topic,) = settings.state_topics().values()
    (input_topic,) = settings.input_topics
    used = {input_topic, settings.output_topic, settings.dlq_topic, state_topic}
    assert set(created) == used
    for name in _lstm_services(project, "produce"):
        assert _parse("produce", _command(services[name])[1:]).topic == input_topic
    replicas = services[run_name]["deploy"]["replicas"]
    assert created[input_topic]["partitions"] >= replicas >= 2
    # The processor refuses a state topic with another partition count or cleanup policy.
    assert created[state_topic]["partitions"] == created[input_topic]["partitions"]
    assert created[state_topic]["configs"]["cleanup.policy"] == "compact"


def test_everything_talks_to_the_advertised_broker() -> None:
    project = _project()
    services = project["services"]
    listeners = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    internal = re.search(r"PLAINTEXT://([^,]+)", listeners)
    assert internal is not None, listeners
    address = internal.group(1)
    assert {t["bootstrap"] for t in _created_topics(project).values()} == {address}
    assert _settings(project, services["processor"]).bootstrap_servers == address
    assert _parse("produce", _command(services["loadgen"])[1:]).bootstrap_servers == address


def test_stop_grace_period_outlasts_the_drain() -> None:
    project = _project()
    processor = project["services"]["processor"]
    match = re.fullmatch(r"(\d+)s", processor["stop_grace_period"])
    assert match is not None, processor["stop_grace_period"]
    assert int(match.group(1)) > _settings(project, processor).drain_timeout + 5


def test_prometheus_scrapes_the_processors_metrics_port() -> None:
    project = _project()
    port = _settings(project, project["services"]["processor"]).metrics_port
    assert port > 0
    mounted = {
        str(v).split(":")[1]: COMPOSE_DIR / str(v).split(":")[0]
        for v in project["services"]["prometheus"]["volumes"]
        if str(v).startswith(".")
    }
    assert mounted["/etc/prometheus/prometheus.yml"].resolve() == PROMETHEUS
    config = _load(PROMETHEUS)
    targets = [
        (name, sd["port"])
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs") or []
        for name in sd["names"]
    ]
    assert ("processor", port) in targets, targets


def test_grafana_reads_the_mounted_dashboards_from_the_prometheus_service() -> None:
    project = _project()
    services = project["services"]
    mounted = {
        str(v).split(":")[1]: (COMPOSE_DIR / str(v).split(":")[0]).resolve()
        for v in services["grafana"]["volumes"]
        if str(v).startswith(".")
    }
    assert mounted["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    providers = [
        p
        for f in (GRAFANA / "provisioning" / "dashboards").glob("*.y*ml")
        for p in _load(f)["providers"]
    ]
    assert {mounted.get(p["options"]["path"]) for p in providers} == {GRAFANA / "dashboards"}
    assert list((GRAFANA / "dashboards").glob("*.json")), "no dashboard to provision"
    datasources = [
        d
        for f in (GRAFANA / "provisioning" / "datasources").glob("*.y*ml")
        for d in _load(f)["datasources"]
        if d["type"] == "prometheus"
    ]
    published = {p.split(":")[-1] for p in services["prometheus"]["ports"]}
    for source in datasources:
        match = re.fullmatch(r"http://([\w-]+):(\d+)/?", source["url"])
        assert match is not None and match.group(1) in services, source["url"]
        assert match.group(2) in published, source["url"]


def test_no_variable_is_left_for_the_host_to_set_in_compose_yaml() -> None:
    # compose.yaml alone must run with no environment: only the override asks for some.
    assert not _VARIABLE.search(COMPOSE.read_text()), "compose.yaml needs host variables"
