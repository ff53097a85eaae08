"""Serving validation: the candidate models must serve real requests before they are pushed.

TFX's InfraValidator starts TF Serving in Docker or Kubernetes and raises
NotImplementedError on Kubeflow Pipelines v2. This component instead loads the
candidate SavedModels in the local TF Serving-protocol server
(`serving.server.LocalModelServer`, bound to 127.0.0.1 inside the component's
own process or container), sends Predict requests built from real eval examples
through every signature over gRPC, and blesses the models only if every request
succeeds with a score for each row. The requests it sent are written as
PredictionLog warmup records, which the pusher installs beside each version.
"""

import glob
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf
from absl import logging
from tfx.dsl.component.experimental.annotations import (
    InputArtifact,
    OutputArtifact,
    Parameter,
)
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from serving import client as serving_client
from serving import server as serving_server
from serving import warmup
from transforms import features

BLESSED_FILE = "BLESSED"
NOT_BLESSED_FILE = "NOT_BLESSED"
SERVING_MODEL_FOLDER = "Format-Serving"
VALIDATION_VERSION = 1


def read_eval_columns(examples_uri: str, split: str, count: int) -> dict[str, list]:
    """Read the first `count` examples of a split as columns of Python values.

    Only the raw id and side-feature columns are kept, because those are what
    clients send. Missing values of a feature are left out of that column.
    """
    pattern = os.path.join(examples_uri, f"Split-{split}", "*")
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no {split} examples under {pattern}")
    compression = "GZIP" if files[0].endswith(".gz") else ""
    dataset = tf.data.TFRecordDataset(files, compression_type=compression).take(count)

    columns: dict[str, list] = {}
    for record in dataset.as_numpy_iterator():
        example = tf.train.Example.FromString(record)
        for name, feature in example.features.feature.items():
            if name not in features.ID_COLUMNS and not features.is_side_feature(name):
                continue
            values = _feature_values(feature)
            if values:
                columns.setdefault(name, []).append(values[0])
    return columns


def _feature_values(feature: tf.train.Feature) -> list:
    kind = feature.WhichOneof("kind")
    if kind == "bytes_list":
        return [value.decode("utf-8") for value in feature.bytes_list.value]
    if kind == "int64_list":
        return list(feature.int64_list.value)
    if kind == "float_list":
        return list(feature.float_list.value)
    return []


def complete_columns(columns: dict[str, list]) -> dict[str, list]:
    """Keep only the columns present in every row, so each request has one batch size."""
    rows = max((len(values) for values in columns.values()), default=0)
    return {name: values for name, values in columns.items() if len(values) == rows}


def check_response(request, response) -> None:
    """Raise ValueError unless every output of `response` has one row per request row."""
    rows = _request_rows(request)
    if not response.outputs:
        raise ValueError("the response has no outputs")
    for name, tensor in response.outputs.items():
        array = tf.make_ndarray(tensor)
        if array.shape[:1] != (rows,):
            raise ValueError(f"output '{name}' has shape {array.shape}, expected {rows} rows")
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise ValueError(f"output '{name}' has non-finite values")


def _request_rows(request) -> int:
    first = next(iter(request.inputs.values()))
    return first.tensor_shape.dim[0].size


def _stage_models(models: dict[str, str], base_dir: str) -> None:
    for name, saved_model_dir in models.items():
        version_dir = os.path.join(base_dir, name, str(VALIDATION_VERSION))
        shutil.copytree(saved_model_dir, version_dir)


def validate_models(
    models: dict[str, str], columns: dict[str, list], warmup_dir: str
) -> tuple[bool, str]:
    """Serve `models` locally, send one request per signature, write the requests.

    Args:
      models: served model name to SavedModel folder.
      columns: example inputs by column name (see `read_eval_columns`).
      warmup_dir: where `<model name>` warmup files are written.

    Returns:
      (blessed, reason).
    """
    with tempfile.TemporaryDirectory(prefix="idpt-serving-validation-") as base_dir:
        _stage_models(models, base_dir)
        server = serving_server.LocalModelServer(base_dir, model_names=tuple(models))
        server.start()
        client = serving_client.ServingClient(server.target, timeout_s=60.0)
        try:
            return _send_requests(models, base_dir, columns, client, warmup_dir)
        finally:
            client.close()
            server.stop()


def _send_requests(models, base_dir, columns, client, warmup_dir) -> tuple[bool, str]:
    os.makedirs(warmup_dir, exist_ok=True)
    sent = 0
    for name in models:
        version_dir = os.path.join(base_dir, name, str(VALIDATION_VERSION))
        logs = warmup.build_warmup_logs(version_dir, name, columns)
        for log in logs:
            request = log.predict_log.request
            signature = request.model_spec.signature_name
            try:
                response = client.send_predict_request(request)
                check_response(request, response)
            except (serving_client.ServingError, ValueError) as error:
                return False, f"model '{name}' signature '{signature}' failed: {error}"
            log.predict_log.response.CopyFrom(response)
            sent += 1
        _write_logs(os.path.join(warmup_dir, name), logs)
    return True, f"{sent} requests through every signature of {sorted(models)} succeeded"


def _write_logs(path: str, logs) -> None:
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())


@component
def ServingValidator(  # noqa: N802 - TFX names components like classes.
    ranking_model: InputArtifact[standard_artifacts.Model],
    examples: InputArtifact[standard_artifacts.Examples],
    blessing: OutputArtifact[standard_artifacts.InfraBlessing],
    retrieval_model: InputArtifact[standard_artifacts.Model] = None,
    num_examples: Parameter[int] = 32,
) -> None:
    """Bless the candidate models only if every signature returns a valid response locally."""
    models = {features.RANKING_MODEL_NAME: os.path.join(ranking_model.uri, SERVING_MODEL_FOLDER)}
    if retrieval_model is not None:
        models[features.RETRIEVAL_MODEL_NAME] = os.path.join(
            retrieval_model.uri, SERVING_MODEL_FOLDER
        )
    columns = complete_columns(read_eval_columns(examples.uri, features.EVAL_SPLIT, num_examples))

    blessed, reason = validate_models(models, columns, os.path.join(blessing.uri, "warmup"))

    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_string_custom_property("reason", reason)
    marker = BLESSED_FILE if blessed else NOT_BLESSED_FILE
    with open(os.path.join(blessing.uri, marker), "w") as file:
        file.write(reason + "\n")
    logging.info("Serving validation %s: %s", "blessed" if blessed else "did not bless", reason)
