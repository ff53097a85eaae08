"""TF Serving configuration and Kubernetes manifests for the two served models.

Generated here, from one set of settings:
  models.config      ModelServerConfig text proto: both models, their base paths and the
                     version policy (`--model_config_file`);
  batching.config    BatchingParameters text proto (`--batching_parameters_file`);
  monitoring.config  MonitoringConfig text proto: Prometheus metrics on the REST port
                     (`--monitoring_config_file`);
  serving.yaml       a ConfigMap holding the three files, a Deployment of the
                     tensorflow/serving image and a Service.

The pip package tensorflow-serving-api ships ModelServerConfig but not the batching or
monitoring protos, so this module declares those two messages itself, with TF Serving's
field names and numbers (session_bundle_config.proto and monitoring_config.proto), and
writes them with protobuf's text format.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import posixpath
from collections.abc import Iterable, Sequence
from typing import Literal

import yaml
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)
from google.protobuf import message as protobuf_message
from tensorflow_serving.config import file_system_storage_path_source_pb2, model_server_config_pb2

from transforms import features

# TF Serving releases track TensorFlow minor versions: TF Serving 2.21.x is built against
# TensorFlow 2.21, the version the pipeline trains and exports with, so the image reads
# every op the SavedModels use. tensorflow-serving-api 2.21.0 is on PyPI, released with it.
# NOTE: the Docker Hub tag could not be checked from the build machines; override `image`
# if your registry mirrors another name.
DEFAULT_IMAGE = "tensorflow/serving:2.21.0"

GRPC_PORT = 8500
REST_PORT = 8501
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"

CONFIG_MOUNT = "/etc/idpt-serving"
MODELS_MOUNT = "/models"
MODEL_CONFIG_FILE = "models.config"
BATCHING_CONFIG_FILE = "batching.config"
MONITORING_CONFIG_FILE = "monitoring.config"
MANIFEST_FILE = "serving.yaml"

ServableVersionPolicy = (
    file_system_storage_path_source_pb2.FileSystemStoragePathSourceConfig.ServableVersionPolicy
)  # noqa: E501


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """Version selection for a model's folders, as in TF Serving's ServableVersionPolicy.

    Attributes:
        kind: `latest` serves the `num_versions` highest versions, `all` every version,
            `specific` the listed `versions`.
        num_versions: for `latest`; TF Serving's default is 1.
        versions: for `specific`.
    """

    kind: Literal["latest", "all", "specific"] = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("latest", "all", "specific"):
            raise ValueError(f"version policy kind {self.kind!r}: use latest, all or specific")
        if self.kind == "latest" and self.num_versions < 1:
            raise ValueError(f"latest num_versions={self.num_versions}: must be at least 1")
        if self.kind == "specific" and not self.versions:
            raise ValueError("a specific version policy needs at least one version")

    def select(self, versions_on_disk: Iterable[int]) -> frozenset[int]:
        """Return the versions this policy serves out of those found on disk."""
        on_disk = sorted(set(versions_on_disk))
        if self.kind == "all":
            return frozenset(on_disk)
        if self.kind == "specific":
            return frozenset(on_disk) & frozenset(self.versions)
        return frozenset(on_disk[-self.num_versions :])

    def to_proto(self) -> ServableVersionPolicy:
        """Return the policy as TF Serving's ServableVersionPolicy proto."""
        policy = ServableVersionPolicy()
        if self.kind == "all":
            policy.all.SetInParent()
        elif self.kind == "specific":
            policy.specific.versions.extend(self.versions)
        else:
            policy.latest.num_versions = self.num_versions
        return policy


@dataclasses.dataclass(frozen=True)
class BatchingSettings:
    """Server-side batching (TF Serving `--enable_batching`).

    TF Serving rejects a request with more rows than `max_batch_size` unless large-batch
    splitting is on, so the default is above the largest request IDPT accepts (1,000 ids).

    Attributes:
        max_batch_size: rows per batch.
        batch_timeout_micros: how long a partial batch waits for more requests.
        max_enqueued_batches: queue length in batches before requests are rejected.
        num_batch_threads: threads running batches; match the CPU request.
        allowed_batch_sizes: sizes a batch is padded up to; empty pads nothing. When set,
            the last entry must equal `max_batch_size`.
        pad_variable_length_inputs: pad inputs of different lengths when batching.
    """

    max_batch_size: int = 1024
    batch_timeout_micros: int = 2000
    max_enqueued_batches: int = 100
    num_batch_threads: int = 4
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self) -> None:
        sizes = list(self.allowed_batch_sizes)
        if sizes and (sizes != sorted(sizes) or sizes[-1] != self.max_batch_size):
            raise ValueError(
                f"allowed_batch_sizes {sizes} must increase and end at "
                f"max_batch_size={self.max_batch_size}"
            )


@dataclasses.dataclass(frozen=True)
class DeploymentSettings:
    """Kubernetes settings of the TF Serving Deployment.

    Attributes:
        name: name of the Deployment, Service and (with `-config`) the ConfigMap.
        namespace: Kubernetes namespace.
        image: TF Serving image; see `DEFAULT_IMAGE`.
        replicas: pod count.
        model_base_path: the base folder the pipeline pushes to, as the server container reads it:
            a path inside the models volume, or a `gs://` / `s3://` URI that TF Serving
            reads directly (then no volume is mounted).
        models_claim: PersistentVolumeClaim mounted read-only at `MODELS_MOUNT` when the
            base path is local.
        cpu_request, memory_request, memory_limit: container resources.
        run_as_user: non-root UID the container runs as.
        model_config_poll_seconds: how often TF Serving rereads models.config.
        file_system_poll_seconds: how often TF Serving looks for new version folders.
    """

    name: str = "idpt-serving"
    namespace: str = "default"
    image: str = DEFAULT_IMAGE
    replicas: int = 2
    model_base_path: str = MODELS_MOUNT
    models_claim: str = "idpt-models"
    cpu_request: str = "4"
    memory_request: str = "8Gi"
    memory_limit: str = "8Gi"
    run_as_user: int = 1000
    model_config_poll_seconds: int = 60
    file_system_poll_seconds: int = 30


def model_server_config(
    base_path: str,
    *,
    model_names: Sequence[str] = (features.RANKING_MODEL_NAME, features.RETRIEVAL_MODEL_NAME),
    version_policy: VersionPolicy = VersionPolicy(),
) -> model_server_config_pb2.ModelServerConfig:
    """Build the ModelServerConfig serving each model from `<base_path>/<model name>`.

    Args:
        base_path: the push base folder or URI.
        model_names: served model names.
        version_policy: applied to every model.

    Returns:
        The config proto.
    """
    config = model_server_config_pb2.ModelServerConfig()
    for name in model_names:
        model = config.model_config_list.config.add()
        model.name = name
        model.base_path = posixpath.join(base_path, name)
        model.model_platform = "tensorflow"
        model.model_version_policy.CopyFrom(version_policy.to_proto())
    return config


def model_config_text(base_path: str, **kwargs) -> str:
    """Return `model_server_config(base_path, **kwargs)` in text format (models.config)."""
    return text_format.MessageToString(model_server_config(base_path, **kwargs))


def _declare_file(name: str, messages: Sequence[descriptor_pb2.DescriptorProto], deps=()):
    file_proto = descriptor_pb2.FileDescriptorProto(
        name=name, package="tensorflow.serving", syntax="proto3", dependency=list(deps)
    )
    file_proto.message_type.extend(messages)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    return pool.AddSerializedFile(file_proto.SerializeToString())


def _field(name: str, number: int, kind: int, type_name: str = "", repeated: bool = False):
    label = descriptor_pb2.FieldDescriptorProto
    field = descriptor_pb2.FieldDescriptorProto(
        name=name,
        number=number,
        type=kind,
        label=label.LABEL_REPEATED if repeated else label.LABEL_OPTIONAL,
    )
    # type_name is set only for message fields: a scalar field with it set is rejected.
    if type_name:
        field.type_name = type_name
    return field


def _batching_parameters_class() -> type[protobuf_message.Message]:
    field = descriptor_pb2.FieldDescriptorProto
    int64_value = ".google.protobuf.Int64Value"
    message = descriptor_pb2.DescriptorProto(name="BatchingParameters")
    message.field.extend(
        [
            _field("max_batch_size", 1, field.TYPE_MESSAGE, int64_value),
            _field("batch_timeout_micros", 2, field.TYPE_MESSAGE, int64_value),
            _field("max_enqueued_batches", 3, field.TYPE_MESSAGE, int64_value),
            _field("num_batch_threads", 4, field.TYPE_MESSAGE, int64_value),
            _field("thread_pool_name", 5, field.TYPE_MESSAGE, ".google.protobuf.StringValue"),
            _field("allowed_batch_sizes", 6, field.TYPE_INT64, repeated=True),
            _field("pad_variable_length_inputs", 7, field.TYPE_BOOL),
        ]
    )
    file_descriptor = _declare_file(
        "idpt/batching_parameters.proto", [message], deps=["google/protobuf/wrappers.proto"]
    )
    descriptor = file_descriptor.message_types_by_name["BatchingParameters"]
    return message_factory.GetMessageClass(descriptor)


def _monitoring_config_class() -> type[protobuf_message.Message]:
    field = descriptor_pb2.FieldDescriptorProto
    prometheus = descriptor_pb2.DescriptorProto(name="PrometheusConfig")
    prometheus.field.extend(
        [_field("enable", 1, field.TYPE_BOOL), _field("path", 2, field.TYPE_STRING)]
    )
    monitoring = descriptor_pb2.DescriptorProto(name="MonitoringConfig")
    monitoring.field.append(
        _field("prometheus_config", 1, field.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig")
    )
    file_descriptor = _declare_file("idpt/monitoring_config.proto", [prometheus, monitoring])
    descriptor = file_descriptor.message_types_by_name["MonitoringConfig"]
    return message_factory.GetMessageClass(descriptor)


BatchingParameters = _batching_parameters_class()
MonitoringConfig = _monitoring_config_class()


def batching_parameters_text(settings: BatchingSettings = BatchingSettings()) -> str:
    """Return the BatchingParameters text proto for `--batching_parameters_file`."""
    parameters = BatchingParameters()
    parameters.max_batch_size.value = settings.max_batch_size
    parameters.batch_timeout_micros.value = settings.batch_timeout_micros
    parameters.max_enqueued_batches.value = settings.max_enqueued_batches
    parameters.num_batch_threads.value = settings.num_batch_threads
    parameters.allowed_batch_sizes.extend(settings.allowed_batch_sizes)
    parameters.pad_variable_length_inputs = settings.pad_variable_length_inputs
    return text_format.MessageToString(parameters)


def monitoring_config_text(path: str = PROMETHEUS_PATH) -> str:
    """Return the MonitoringConfig text proto enabling Prometheus metrics at `path`."""
    config = MonitoringConfig()
    config.prometheus_config.enable = True
    config.prometheus_config.path = path
    return text_format.MessageToString(config)


def _is_remote(base_path: str) -> bool:
    return "://" in base_path


def _server_args(settings: DeploymentSettings) -> list[str]:
    return [
        f"--port={GRPC_PORT}",
        f"--rest_api_port={REST_PORT}",
        f"--model_config_file={CONFIG_MOUNT}/{MODEL_CONFIG_FILE}",
        f"--model_config_file_poll_wait_seconds={settings.model_config_poll_seconds}",
        f"--file_system_poll_wait_seconds={settings.file_system_poll_seconds}",
        "--enable_batching=true",
        f"--batching_parameters_file={CONFIG_MOUNT}/{BATCHING_CONFIG_FILE}",
        f"--monitoring_config_file={CONFIG_MOUNT}/{MONITORING_CONFIG_FILE}",
    ]


def _probes() -> dict[str, dict]:
    # TF Serving has no gRPC health service, so the probes use its REST API.
    # /v1/models/<name> returns 200 once the model has a version in any state, so liveness
    # does not restart a pod while a new version loads. /v1/models/<name>/metadata needs
    # a version in state AVAILABLE. A probe checks one path, so the startup probe waits for
    # the retrieval model and readiness keeps checking the ranking model.
    # NOTE: once started, readiness does not see a retrieval model that stops serving.
    def http_get(model: str, suffix: str = "") -> dict:
        return {"path": f"/v1/models/{model}{suffix}", "port": "http"}

    return {
        "startupProbe": {
            "httpGet": http_get(features.RETRIEVAL_MODEL_NAME, "/metadata"),
            "periodSeconds": 10,
            "failureThreshold": 60,
        },
        "readinessProbe": {
            "httpGet": http_get(features.RANKING_MODEL_NAME, "/metadata"),
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": http_get(features.RANKING_MODEL_NAME),
            "periodSeconds": 20,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
    }


def _volumes(settings: DeploymentSettings) -> tuple[list[dict], list[dict]]:
    volumes = [
        {"name": "config", "configMap": {"name": f"{settings.name}-config"}},
        # The root filesystem is read-only; TensorFlow still writes temporary files.
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts = [
        {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if not _is_remote(settings.model_base_path):
        volumes.append(
            {
                "name": "models",
                "persistentVolumeClaim": {"claimName": settings.models_claim, "readOnly": True},
            }
        )
        mounts.append({"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True})
    return volumes, mounts


def _container(settings: DeploymentSettings, mounts: list[dict]) -> dict:
    container = {
        "name": "tensorflow-serving",
        "image": settings.image,
        # The image's entrypoint script adds --model_name flags; the binary is called
        # directly so the model config file alone decides what is served.
        "command": ["/usr/bin/tensorflow_model_server"],
        "args": _server_args(settings),
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "http", "containerPort": REST_PORT, "protocol": "TCP"},
        ],
        "resources": {
            "requests": {"cpu": settings.cpu_request, "memory": settings.memory_request},
            "limits": {"memory": settings.memory_limit},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }
    container.update(_probes())
    return container


def kubernetes_manifests(
    settings: DeploymentSettings = DeploymentSettings(),
    *,
    batching: BatchingSettings = BatchingSettings(),
    version_policy: VersionPolicy = VersionPolicy(),
) -> list[dict]:
    """Build the ConfigMap, Deployment and Service manifests as plain dicts.

    Args:
        settings: Deployment settings.
        batching: batching parameters written into the ConfigMap.
        version_policy: applied to both models.

    Returns:
        [ConfigMap, Deployment, Service], ready for `yaml.safe_dump_all`.
    """
    labels = {"app.kubernetes.io/name": settings.name, "app.kubernetes.io/part-of": "idpt"}
    metadata = {"name": settings.name, "namespace": settings.namespace, "labels": labels}
    volumes, mounts = _volumes(settings)

    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {**metadata, "name": f"{settings.name}-config"},
        "data": {
            MODEL_CONFIG_FILE: model_config_text(
                settings.model_base_path, version_policy=version_policy
            ),
            BATCHING_CONFIG_FILE: batching_parameters_text(batching),
            MONITORING_CONFIG_FILE: monitoring_config_text(),
        },
    }
    pod_spec = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "fsGroup": settings.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "automountServiceAccountToken": False,
        "containers": [_container(settings, mounts)],
        "volumes": volumes,
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": settings.replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(REST_PORT),
                        "prometheus.io/path": PROMETHEUS_PATH,
                    },
                },
                "spec": pod_spec,
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": "ClusterIP",
            "selector": labels,
            "ports": [
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "http", "port": REST_PORT, "targetPort": "http", "protocol": "TCP"},
            ],
        },
    }
    return [config_map, deployment, service]


class _ManifestDumper(yaml.SafeDumper):
    """YAML dumper writing multi-line strings as literal blocks and never anchors."""

    def ignore_aliases(self, data) -> bool:
        return True


def _represent_text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_ManifestDumper.add_representer(str, _represent_text)


def manifests_yaml(manifests: Sequence[dict]) -> str:
    """Return manifests as one multi-document YAML text, config files as literal blocks."""
    return yaml.dump_all(manifests, Dumper=_ManifestDumper, sort_keys=False)


def write_serving_config(
    output_dir: str | os.PathLike,
    settings: DeploymentSettings = DeploymentSettings(),
    *,
    batching: BatchingSettings = BatchingSettings(),
    version_policy: VersionPolicy = VersionPolicy(),
) -> dict[str, pathlib.Path]:
    """Write models.config, batching.config, monitoring.config and serving.yaml.

    The three config files are the same text the ConfigMap holds, for running
    `tensorflow_model_server` outside Kubernetes.

    Args:
        output_dir: folder to write into; created if missing.
        settings: Deployment settings; `model_base_path` also goes into models.config.
        batching: batching parameters.
        version_policy: applied to both models.

    Returns:
        File name to the path written.
    """
    folder = pathlib.Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    manifests = kubernetes_manifests(settings, batching=batching, version_policy=version_policy)
    contents = dict(manifests[0]["data"])
    contents[MANIFEST_FILE] = manifests_yaml(manifests)

    written = {}
    for name, text in contents.items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        written[name] = path
    return written
