"""TF Serving config files and Kubernetes manifests, parsed strictly."""

from __future__ import annotations

import copy
import json
import re

import kubernetes.client
import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving import config

SCALAR_TYPES = {"str", "int", "bool", "float", "object", "date", "datetime"}


def strict_check(data, type_name: str, path: str = "$") -> None:
    """Raise ValueError at the first field the kubernetes client model does not declare.

    ApiClient.deserialize silently drops unknown fields, so a misspelt field would vanish.
    """
    if type_name.startswith("list["):
        for index, item in enumerate(data):
            strict_check(item, type_name[5:-1], f"{path}[{index}]")
        return
    if type_name.startswith("dict("):
        value_type = re.fullmatch(r"dict\(([^,]+), (.+)\)", type_name).group(2)
        for key, value in data.items():
            strict_check(value, value_type, f"{path}.{key}")
        return
    if type_name in SCALAR_TYPES:
        return
    model = getattr(kubernetes.client, type_name)
    attribute_by_json = {json_name: attr for attr, json_name in model.attribute_map.items()}
    unknown = sorted(set(data) - set(attribute_by_json))
    if unknown:
        raise ValueError(f"{path}: {type_name} has no field {unknown}")
    for key, value in data.items():
        strict_check(value, model.openapi_types[attribute_by_json[key]], f"{path}.{key}")


class _Response:
    def __init__(self, data) -> None:
        self.data = json.dumps(data)


def deserialize(data, type_name: str):
    """Check strictly, then build the kubernetes client model and round-trip it."""
    strict_check(data, type_name)
    api = kubernetes.client.ApiClient()
    model = api.deserialize(_Response(data), type_name)
    assert api.sanitize_for_serialization(model) == data
    return model


MODEL_TYPES = {"ConfigMap": "V1ConfigMap", "Deployment": "V1Deployment", "Service": "V1Service"}


@pytest.fixture
def manifests():
    return config.kubernetes_manifests()


def test_manifests_parse_strictly(manifests):
    kinds = [manifest["kind"] for manifest in manifests]

    models = [deserialize(manifest, MODEL_TYPES[manifest["kind"]]) for manifest in manifests]

    assert kinds == ["ConfigMap", "Deployment", "Service"]
    assert isinstance(models[1], kubernetes.client.V1Deployment)


def test_misspelt_field_fails(manifests):
    deployment = copy.deepcopy(manifests[1])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readynessProbe"] = container.pop("readinessProbe")

    with pytest.raises(ValueError) as raised:
        strict_check(deployment, "V1Deployment")

    assert str(raised.value) == (
        "$.spec.template.spec.containers[0]: V1Container has no field ['readynessProbe']"
    )


def test_container_is_locked_down(manifests):
    deployment = deserialize(manifests[1], "V1Deployment")
    pod = deployment.spec.template.spec
    container = pod.containers[0]

    assert container.image == "tensorflow/serving:2.21.0"
    assert container.security_context.run_as_non_root is True
    assert container.security_context.run_as_user == 1000
    assert container.security_context.read_only_root_filesystem is True
    assert container.security_context.allow_privilege_escalation is False
    assert container.security_context.capabilities.drop == ["ALL"]
    assert pod.security_context.run_as_non_root is True
    assert container.resources.requests == {"cpu": "4", "memory": "8Gi"}
    assert {mount.mount_path for mount in container.volume_mounts} == {
        "/etc/idpt-serving",
        "/tmp",
        "/models",
    }


def test_probes_check_model_status(manifests):
    container = deserialize(manifests[1], "V1Deployment").spec.template.spec.containers[0]

    assert container.startup_probe.http_get.path == "/v1/models/retrieval/metadata"
    assert container.readiness_probe.http_get.path == "/v1/models/ranking/metadata"
    assert container.liveness_probe.http_get.path == "/v1/models/ranking"
    assert {
        probe.http_get.port for probe in (container.readiness_probe, container.liveness_probe)
    } == {"http"}
    assert [port.name for port in container.ports] == ["grpc", "http"]


def test_server_args_name_config_map_files(manifests):
    config_map, deployment, _ = manifests
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]

    file_flags = {
        flag.split("=", 1)[1].rsplit("/", 1)[1]
        for flag in args
        if flag.startswith(("--model_config_file=", "--batching_parameters_file=", "--monitoring"))
    }

    assert file_flags == set(config_map["data"])
    assert "--port=8500" in args
    assert "--rest_api_port=8501" in args
    assert "--enable_batching=true" in args


def test_remote_base_path_mounts_no_volume():
    settings = config.DeploymentSettings(model_base_path="gs://bucket/idpt")

    deployment = config.kubernetes_manifests(settings)[1]
    pod = deserialize(deployment, "V1Deployment").spec.template.spec

    assert [volume.name for volume in pod.volumes] == ["config", "tmp"]
    assert [mount.name for mount in pod.containers[0].volume_mounts] == ["config", "tmp"]


def test_model_config_parses_as_proto():
    text = config.model_config_text("/models", version_policy=config.VersionPolicy(num_versions=2))

    parsed = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())

    models = parsed.model_config_list.config
    assert [(m.name, m.base_path, m.model_platform) for m in models] == [
        ("ranking", "/models/ranking", "tensorflow"),
        ("retrieval", "/models/retrieval", "tensorflow"),
    ]
    assert [m.model_version_policy.latest.num_versions for m in models] == [2, 2]


def test_version_policy_selects_versions():
    on_disk = [7, 1, 3]

    assert config.VersionPolicy().select(on_disk) == {7}
    assert config.VersionPolicy(num_versions=2).select(on_disk) == {3, 7}
    assert config.VersionPolicy(kind="all").select(on_disk) == {1, 3, 7}
    assert config.VersionPolicy(kind="specific", versions=(3, 9)).select(on_disk) == {3}


def test_version_policy_protos():
    specific = config.VersionPolicy(kind="specific", versions=(3, 9)).to_proto()
    every = config.VersionPolicy(kind="all").to_proto()

    assert specific.WhichOneof("policy_choice") == "specific"
    assert list(specific.specific.versions) == [3, 9]
    assert every.WhichOneof("policy_choice") == "all"


def test_batching_parameters_text():
    text = config.batching_parameters_text(
        config.BatchingSettings(max_batch_size=64, allowed_batch_sizes=(16, 64))
    )

    assert text == (
        "max_batch_size {\n  value: 64\n}\n"
        "batch_timeout_micros {\n  value: 2000\n}\n"
        "max_enqueued_batches {\n  value: 100\n}\n"
        "num_batch_threads {\n  value: 4\n}\n"
        "allowed_batch_sizes: 16\nallowed_batch_sizes: 64\n"
    )
    assert text_format.Parse(text, config.BatchingParameters()).max_batch_size.value == 64


def test_batching_text_rejects_misspelt_field():
    with pytest.raises(text_format.ParseError):
        text_format.Parse("max_batch_sise { value: 8 }", config.BatchingParameters())


def test_allowed_batch_sizes_must_end_at_max():
    with pytest.raises(ValueError) as raised:
        config.BatchingSettings(max_batch_size=64, allowed_batch_sizes=(16, 32))

    assert str(raised.value) == (
        "allowed_batch_sizes [16, 32] must increase and end at max_batch_size=64"
    )


def test_monitoring_config_text():
    assert config.monitoring_config_text() == (
        'prometheus_config {\n  enable: true\n  path: "/monitoring/prometheus/metrics"\n}\n'
    )


def test_written_files_match_manifests(tmp_path):
    written = config.write_serving_config(tmp_path)

    documents = list(yaml.safe_load_all(written["serving.yaml"].read_text(encoding="utf-8")))

    assert sorted(written) == [
        "batching.config",
        "models.config",
        "monitoring.config",
        "serving.yaml",
    ]
    assert documents == config.kubernetes_manifests()
    assert written["models.config"].read_text() == config.model_config_text("/models")
