"""Static checks of the Kubernetes manifests (deploy/k8s), with no cluster:

* every built-in object, in the files and in what each kustomization renders
  (``kubectl kustomize``), passes ``kubernetes-validate --strict`` for the targeted
  Kubernetes version, and the test proves each one was validated (the tool only warns about
  kinds it has no schema for);
* the KEDA objects pass KEDA's own schema (``@kubernetes-models/keda``, run by
  tests/tools/validate-keda.mjs), which refuses a field of the wrong type;
* the pieces agree: the pod's settings (its arguments, environment and the rendered
  ConfigMap) load with the project's own loader, the probes and the Service use the metrics
  port those settings set, the grace period outlasts the drain timeout, the example Secret
  (which no variant applies: the real one is created out of band) and the README's command
  that creates it hold exactly the keys the Deployment references, and the autoscalers
  stop at the input topic's partition count stated in the README.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import re
import shlex
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from processor import cli
from processor.kafka.io.clients import CONSUMER_DEFAULTS, client_kwargs
from processor.kafka.settings import Settings, settings_from_args

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
README = K8S / "README.md"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
VALIDATE_KEDA = ROOT / "tests" / "tools" / "validate-keda.mjs"
KUBERNETES_VERSION = "1.33"

KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
MANIFESTS = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")
KEDA_API = "keda.sh/v1alpha1"
# The variants a user applies (README.md): each must render a whole processor.
APPLIED = {"": "keda", "hpa": "hpa", "gpu": "keda", "base": None}
# The Secret with placeholder values, applied only on purpose (never by a variant).
EXAMPLE_SECRET = "example-secret"

Doc = dict[str, Any]


def _rel(path: Path) -> str:
    return str(path.relative_to(K8S)) or "."


def _docs(text: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(text) if d]


@functools.cache
def _rendered(kubectl: str, directory: str) -> tuple[Doc, ...]:
    """What ``kubectl kustomize deploy/k8s/<directory>`` renders (cached: renders once)."""
    done = subprocess.run(
        [kubectl, "kustomize", str(K8S / directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return tuple(_docs(done.stdout))


Render = Callable[[str], tuple[Doc, ...]]


@pytest.fixture(scope="module")
def render(need_tool: Callable[[str], str]) -> Render:
    """``render(directory)``: the objects ``kubectl kustomize`` renders for
    deploy/k8s/<directory> ("" for deploy/k8s itself)."""
    kubectl = need_tool("kubectl")
    return lambda directory: _rendered(kubectl, directory)


def _one(docs: tuple[Doc, ...] | list[Doc], kind: str) -> Doc:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def _kinds(docs: tuple[Doc, ...] | list[Doc]) -> set[str]:
    return {d["kind"] for d in docs}


def _key(doc: Doc) -> str:
    """How kubernetes-validate names a resource in its report."""
    return f"{doc['kind'].lower()}/{doc['metadata']['name']}"


def _kubernetes_validate(tool: str, files: list[str], stdin: str | None = None) -> str:
    """Run ``kubernetes-validate --strict`` for the targeted version; its report."""
    done = subprocess.run(
        [tool, "-k", KUBERNETES_VERSION, "--strict", *files],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _assert_each_validated(report: str, expected: dict[str, list[Doc]]) -> None:
    """Every built-in object of ``expected`` (file -> documents) passed, and the only
    objects the tool skipped (no schema) are KEDA's, which the KEDA check covers."""
    passed = set(
        re.findall(r"^INFO (\S+) passed for resource (\S+) against version (\S+)$", report, re.M)
    )
    skipped = re.findall(
        r"^WARN (\S+) Couldn't find schema for kind (\S+) with api version (\S+)", report, re.M
    )
    for file, docs in expected.items():
        for doc in docs:
            if doc["apiVersion"] == KEDA_API:
                assert (file, doc["kind"], KEDA_API) in skipped, (file, doc["kind"])
            else:
                assert (file, _key(doc), KUBERNETES_VERSION) in passed, (file, _key(doc))
    assert all(api == KEDA_API for _, _, api in skipped), skipped


# ---- (a) the files, strictly validated -------------------------------------------------------


def test_every_manifest_file_validates_strictly(need_tool: Callable[[str], str]) -> None:
    expected = {str(p): _docs(p.read_text()) for p in MANIFESTS}
    kinds = {d["kind"] for docs in expected.values() for d in docs}
    # Each kind the directory is made of; a file that lost its objects would show here.
    assert kinds == {
        "Deployment", "Service", "PodDisruptionBudget", "PersistentVolumeClaim", "Secret",
        "HorizontalPodAutoscaler", "Job", "ScaledObject", "TriggerAuthentication",
    }  # fmt: skip
    report = _kubernetes_validate(need_tool("kubernetes-validate"), list(expected))
    _assert_each_validated(report, expected)


def test_strict_validation_refuses_an_unknown_field(
    need_tool: Callable[[str], str], tmp_path: Path
) -> None:
    # The check above proves something only if --strict rejects what the API server would.
    deployment = _docs((K8S / "base" / "deployment.yaml").read_text())[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbes"] = {}
    bad = tmp_path / "deployment.yaml"
    bad.write_text(yaml.safe_dump(deployment))
    done = subprocess.run(
        [need_tool("kubernetes-validate"), "-k", KUBERNETES_VERSION, "--strict", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "readinesProbes" in done.stdout, done.stdout


# ---- (b) the KEDA objects against KEDA's schema ---------------------------------------------


def _validate_keda(node_modules: Path, docs: list[Doc]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", str(VALIDATE_KEDA)],
        input=json.dumps(docs),
        cwd=node_modules.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _keda_docs() -> list[Doc]:
    return [d for p in MANIFESTS for d in _docs(p.read_text()) if d["apiVersion"] == KEDA_API]


def test_keda_objects_match_kedas_schema(node_modules: Path, render: Render) -> None:
    docs = _keda_docs() + [d for d in render("") if d["apiVersion"] == KEDA_API]
    assert _kinds(docs) == {"ScaledObject", "TriggerAuthentication"}
    done = _validate_keda(node_modules, docs)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [f"ok {d['kind']}/{d['metadata']['name']}" for d in docs]


def test_keda_schema_refuses_a_wrong_field_type(node_modules: Path) -> None:
    scaled = _one(_keda_docs(), "ScaledObject")
    scaled["spec"]["maxReplicaCount"] = str(scaled["spec"]["maxReplicaCount"])
    done = _validate_keda(node_modules, [scaled])
    assert done.returncode == 1, done.stdout + done.stderr
    assert "maxReplicaCount" in done.stderr and "integer" in done.stderr, done.stderr


def test_keda_checker_refuses_what_it_cannot_check(node_modules: Path, render: Render) -> None:
    # Another kind must be an error, never a silently skipped document.
    done = _validate_keda(node_modules, [_one(render("base"), "Deployment")])
    assert done.returncode == 1 and "not a keda.sh/v1alpha1" in done.stderr, done.stderr


# ---- (c) every kustomization renders, and what it renders validates -------------------------


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_rel)
def test_kustomization_renders_valid_objects(
    directory: Path, need_tool: Callable[[str], str], render: Render
) -> None:
    docs = list(render(str(directory.relative_to(K8S))))
    assert docs, f"{directory} renders nothing"
    report = _kubernetes_validate(
        need_tool("kubernetes-validate"), ["-"], stdin=yaml.safe_dump_all(docs)
    )
    _assert_each_validated(report, {"-": docs})


@pytest.mark.parametrize("variant", sorted(APPLIED), ids=lambda v: v or ".")
def test_each_variant_has_one_autoscaler_or_none(variant: str, render: Render) -> None:
    docs = render(variant)
    assert {"Deployment", "ConfigMap", "Service", "PodDisruptionBudget"} <= _kinds(docs)
    # No variant carries the Secret: applying one must never replace the real Secret,
    # created out of band, with the example's placeholders.
    assert "Secret" not in _kinds(docs)
    scalers = {"ScaledObject": "keda", "HorizontalPodAutoscaler": "hpa"}
    assert [v for k, v in scalers.items() if k in _kinds(docs)] == (
        [APPLIED[variant]] if APPLIED[variant] else []
    )
    # An autoscaled Deployment leaves the replica count to its autoscaler: an apply must
    # not reset it.
    assert ("replicas" in _one(docs, "Deployment")["spec"]) == (APPLIED[variant] is None)


# ---- (d) consistency ------------------------------------------------------------------------


def _container(docs: tuple[Doc, ...]) -> Doc:
    (container,) = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _mounts(docs: tuple[Doc, ...]) -> dict[str, Doc]:
    """Container mount path -> the pod volume mounted there."""
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in _container(docs)["volumeMounts"]}


def _volume_at(docs: tuple[Doc, ...], path: str) -> tuple[str, Doc]:
    """(the path inside the volume, the volume) for a container path."""
    for mount, volume in _mounts(docs).items():
        if path.startswith(mount.rstrip("/") + "/"):
            return path[len(mount.rstrip("/")) + 1 :], volume
    raise AssertionError(f"{path} is on no volume")


def _secret_values(secret: Doc) -> dict[str, str]:
    return dict(secret.get("stringData") or {})


def _pod_settings(docs: tuple[Doc, ...], secret: Doc, tmp_path: Path) -> Settings:
    """The Settings a pod builds: its arguments parsed by ``run``'s own parser, its
    environment (secretKeyRef values taken from ``secret``, the example Secret) and the
    settings file from the rendered ConfigMap mounted where --config points. The project's
    loader refuses unknown TOML keys and bad values."""
    container = _container(docs)
    args = container["args"]
    assert args[0] == "run", args
    config_at = args[args.index("--config") + 1]
    inside, volume = _volume_at(docs, config_at)
    config_map = _one(docs, "ConfigMap")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    local = tmp_path / inside
    local.write_text(config_map["data"][inside])
    values = _secret_values(secret)
    env = {}
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            env[var["name"]] = values[ref["key"]]
    parser, _ = cli.command_parser("run")
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parsed = parser.parse_args([a if a != config_at else str(local) for a in args[1:]])
    except SystemExit:
        pytest.fail(f"lstm-stream {shlex.join(args)}: {err.getvalue()}")
    return settings_from_args(parsed, environ=env)


@pytest.fixture(scope="module")
def docs(render: Render) -> tuple[Doc, ...]:
    """The default variant (base and KEDA), as rendered."""
    return render("")


@pytest.fixture(scope="module")
def secret(render: Render) -> Doc:
    """The example Secret (deploy/k8s/example-secret), as rendered: the one Secret of the
    directory, standing in for the real one."""
    (only,) = render(EXAMPLE_SECRET)
    assert only["kind"] == "Secret", only["kind"]
    return only


@pytest.fixture
def settings(docs: tuple[Doc, ...], secret: Doc, tmp_path: Path) -> Settings:
    return _pod_settings(docs, secret, tmp_path)


def _partitions_in_readme() -> dict[str, int]:
    """Topic -> partitions, from the README's topic table."""
    rows = re.findall(r"^\|\s*`([^`]+)`\s*\|\s*(\d+)\s*\|", README.read_text(), re.M)
    return {topic: int(n) for topic, n in rows}


def test_pod_settings_load_and_reach_a_sasl_ssl_cluster(
    docs: tuple[Doc, ...], secret: Doc, settings: Settings
) -> None:
    assert settings.kafka["security_protocol"] == "SASL_SSL"
    assert settings.kafka["sasl_mechanism"] == "SCRAM-SHA-512"
    values = _secret_values(secret)
    assert settings.kafka["sasl_plain_username"] == values["username"]
    assert settings.kafka["sasl_plain_password"] == values["password"]
    # ssl_cafile is the Secret's ca.crt, mounted as a file.
    inside, volume = _volume_at(docs, settings.kafka["ssl_cafile"])
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert {"key": "ca.crt", "path": inside} in volume["secret"]["items"]
    # Every Kafka option is aiokafka's (client_kwargs refuses others). The example CA is a
    # placeholder, so the system's CA bundle stands in while the SSL context is built.
    options = dict(settings.kafka, ssl_cafile=ssl.get_default_verify_paths().cafile)
    consumer, _ = client_kwargs(
        settings.bootstrap_servers, settings.group_id, options, drain_timeout=settings.drain_timeout
    )
    assert consumer["sasl_mechanism"] == "SCRAM-SHA-512" and "ssl_context" in consumer


def test_the_pod_writes_only_to_its_volumes(docs: tuple[Doc, ...], settings: Settings) -> None:
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    container = _container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = _mounts(docs)
    assert settings.engine.state_dir is not None and settings.engine.model is not None
    assert "emptyDir" in mounts[settings.engine.state_dir]
    assert "emptyDir" in mounts["/tmp"]
    inside, models = _volume_at(docs, settings.engine.model)
    assert inside == "model.keras" and models["persistentVolumeClaim"]["readOnly"] is True
    claim = _one(docs, "PersistentVolumeClaim")["metadata"]["name"]
    assert models["persistentVolumeClaim"]["claimName"] == claim
    # The image's user: a numeric uid that runAsNonRoot can check.
    match = re.search(r"^USER (\d+)", DOCKERFILE.read_text(), re.M)
    assert match is not None and pod["securityContext"]["runAsUser"] == int(match.group(1))


def test_grace_period_outlasts_the_drain(docs: tuple[Doc, ...], settings: Settings) -> None:
    grace = _one(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # The drain, then a last checkpoint and commit: at least 10 s beyond the drain timeout.
    assert grace >= settings.drain_timeout + 10


def test_probes_and_service_use_the_metrics_port(docs: tuple[Doc, ...], settings: Settings) -> None:
    container = _container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert settings.metrics_port > 0

    def port_of(probe: Doc) -> int:
        port = probe["httpGet"]["port"]
        return ports[port] if isinstance(port, str) else int(port)

    paths = {
        kind: container[kind]["httpGet"]["path"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert paths == {"startupProbe": "/healthz", "livenessProbe": "/healthz",
                     "readinessProbe": "/readyz"}  # fmt: skip
    for kind in paths:
        assert port_of(container[kind]) == settings.metrics_port, kind
    service = _one(docs, "Service")
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == settings.metrics_port
    assert ports[service_port["targetPort"]] == settings.metrics_port
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(settings.metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"
    labels = _one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    pdb = _one(docs, "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1 and pdb["selector"]["matchLabels"].items() <= labels.items()


def _referenced_secret_keys(docs: tuple[Doc, ...], name: str) -> set[str]:
    """The keys of Secret ``name`` that the Deployment's container reads (environment and
    mounted files)."""
    container = _container(docs)
    referenced = {
        v["valueFrom"]["secretKeyRef"]["key"]
        for v in container.get("env") or []
        if "valueFrom" in v and v["valueFrom"]["secretKeyRef"]["name"] == name
    }
    for volume in _mounts(docs).values():
        if volume.get("secret", {}).get("secretName") == name:
            referenced |= {item["key"] for item in volume["secret"]["items"]}
    return referenced


def test_secret_keys_are_the_ones_referenced(docs: tuple[Doc, ...], secret: Doc) -> None:
    name = secret["metadata"]["name"]
    assert set(secret["stringData"]) == _referenced_secret_keys(docs, name)
    auth = _one(docs, "TriggerAuthentication")["spec"]["secretTargetRef"]
    assert {r["name"] for r in auth} == {name}
    assert {r["parameter"]: r["key"] for r in auth} == {
        "username": "username", "password": "password", "ca": "ca.crt",
    }  # fmt: skip


def _readme_secret_command() -> list[str]:
    """The words of the README's ``kubectl create secret generic`` command (its backslash
    continuations joined)."""
    text = README.read_text().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if "kubectl create secret generic" in ln]
    return shlex.split(line)


def test_readme_creates_the_secret_the_pods_read(docs: tuple[Doc, ...], secret: Doc) -> None:
    # The Secret is created out of band with the README's command: it must carry the name
    # and exactly the keys the Deployment reads, as the example does.
    words = _readme_secret_command()
    name = words[words.index("generic") + 1]
    keys = {w.split("=", 2)[1] for w in words if w.startswith(("--from-literal=", "--from-file="))}
    assert name == secret["metadata"]["name"]
    assert keys == _referenced_secret_keys(docs, name) == set(secret["stringData"])


def test_autoscalers_stop_at_the_input_partitions(
    docs: tuple[Doc, ...], settings: Settings, render: Render
) -> None:
    (topic,) = settings.input_topics
    partitions = _partitions_in_readme()
    # The README's table names every topic the pods use, the state topic with the input's
    # partition count (the processor refuses another).
    (state,) = settings.state_topics().values()
    assert set(partitions) == {topic, settings.output_topic, settings.dlq_topic, state}
    assert partitions[state] == partitions[topic]
    scaled = _one(docs, "ScaledObject")["spec"]
    assert scaled["maxReplicaCount"] == partitions[topic]
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    hpa = _one(render("hpa"), "HorizontalPodAutoscaler")["spec"]
    assert hpa["maxReplicas"] == partitions[topic]
    base_replicas = _one(render("base"), "Deployment")["spec"]["replicas"]
    assert base_replicas <= partitions[topic]
    deployment = _one(docs, "Deployment")["metadata"]["name"]
    assert scaled["scaleTargetRef"]["name"] == hpa["scaleTargetRef"]["name"] == deployment


def test_keda_watches_the_group_and_topic_the_pods_use(
    docs: tuple[Doc, ...], settings: Settings
) -> None:
    (trigger,) = _one(docs, "ScaledObject")["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["bootstrapServers"] == settings.bootstrap_servers
    assert meta["consumerGroup"] == settings.group_id
    assert (meta["topic"],) == settings.input_topics
    assert int(meta["lagThreshold"]) > 0
    reset = settings.kafka.get("auto_offset_reset", CONSUMER_DEFAULTS["auto_offset_reset"])
    assert meta["offsetResetPolicy"] == reset
    assert (meta["sasl"], meta["tls"]) == ("scram_sha512", "enable")
    auth = _one(docs, "TriggerAuthentication")["metadata"]["name"]
    assert trigger["authenticationRef"]["name"] == auth


def test_gpu_variant_asks_for_a_gpu_and_runs_on_it(
    tmp_path: Path, secret: Doc, render: Render
) -> None:
    gpu = render("gpu")
    settings = _pod_settings(gpu, secret, tmp_path)
    assert settings.engine.device == "gpu:0"
    container = _container(gpu)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"].endswith("-gpu")
    assert _container(render(""))["image"] == container["image"].removesuffix("-gpu")


def _job_container(render: Render) -> Doc:
    """The example model Job's one container, as rendered."""
    job = _one(render("example-model"), "Job")["spec"]["template"]["spec"]
    (container,) = job["containers"]
    return container


def _job_script(container: Doc) -> str:
    """The shell script the example model Job runs (``/bin/sh -ec SCRIPT``)."""
    assert container["command"] == ["/bin/sh", "-ec"], container["command"]
    (script,) = container["args"]
    return str(script)


def test_example_model_job_writes_where_the_pods_read(settings: Settings, render: Render) -> None:
    job = _one(render("example-model"), "Job")["spec"]["template"]["spec"]
    container = _job_container(render)
    lines = [shlex.split(line) for line in _job_script(container).splitlines() if line.strip()]
    (train,) = [w for w in lines if w[0] == "lstm-stream"]
    assert train[1] == "example-model"
    parser, _ = cli.command_parser("example-model")
    assert parser.parse_args(train[2:]).out == settings.engine.model
    (claim,) = [v for v in job["volumes"] if "persistentVolumeClaim" in v]
    pvc = _one(render("base"), "PersistentVolumeClaim")["metadata"]["name"]
    assert claim["persistentVolumeClaim"]["claimName"] == pvc
    assert _container(render(""))["image"] == container["image"]
    # It writes as the image's user, the one the pods read as; no container runs as root.
    match = re.search(r"^USER (\d+)", DOCKERFILE.read_text(), re.M)
    assert match is not None
    assert job["securityContext"]["runAsUser"] == int(match.group(1))
    assert job["securityContext"]["runAsNonRoot"] is True and not job.get("initContainers")


def test_example_model_job_checks_the_volume_before_training(
    tmp_path: Path, render: Render
) -> None:
    # fsGroup does not make an NFS volume writable: the Job must say so at once instead of
    # failing after minutes of training. Its script runs here with the model directory
    # moved under tmp_path and a stand-in lstm-stream that reports its arguments.
    script = _job_script(_job_container(render))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "lstm-stream"
    stub.write_text('#!/bin/sh\necho "trained $*"\n')
    stub.chmod(0o755)

    def run(models: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["/bin/sh", "-ec", script.replace("/models", str(models))],
            env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=30,
        )

    # A directory nobody can write to, not even root: one that does not exist.
    refused = run(tmp_path / "absent")
    assert refused.returncode == 1 and "trained" not in refused.stdout, refused
    assert "is not writable by uid" in refused.stderr and "10001" in refused.stderr
    models = tmp_path / "models"
    models.mkdir()
    trained = run(models)
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.splitlines() == [f"trained example-model --out {models}/model.keras"]
    assert list(models.iterdir()) == []  # the write check leaves nothing behind
    (models / "model.keras").write_bytes(b"a model")
    kept = run(models)
    assert kept.returncode == 0 and "trained" not in kept.stdout, kept
