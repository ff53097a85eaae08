"""Build, write, read and replay TF Serving warmup records.

TF Serving replays `<version>/assets.extra/tf_serving_warmup_requests` (a TFRecord file of
PredictionLog protos) before a version goes live, so the first real requests do not pay
for lazy initialisation. TF Serving reads at most 1,000 records (`WarmupConsts::
kMaxNumRecords` in tensorflow_serving/servables/tensorflow/saved_model_warmup_util.h) and
fails the load when one fails; the local server does the same.

The pipeline writes the file next to each exported SavedModel, after the trainers.
`build_warmup_logs` makes one Predict request per signature from a few example rows, so
every signature is exercised.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import tensorflow as tf
from google.protobuf import message as protobuf_message
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from serving import signatures
from transforms import features

MAX_WARMUP_RECORDS = 1000

PredictFunction = Callable[[predict_pb2.PredictRequest], predict_pb2.PredictResponse]


def build_predict_request(
    model_name: str,
    signature_name: str,
    inputs: Mapping[str, np.ndarray | tensor_pb2.TensorProto],
    *,
    version: int | None = None,
) -> predict_pb2.PredictRequest:
    """Build a PredictRequest; numpy inputs are converted with their own dtype and shape.

    Args:
        model_name: served model name, e.g. `features.RANKING_MODEL_NAME`.
        signature_name: signature to call.
        inputs: input name to a numpy array (bytes or str for strings) or a TensorProto.
        version: a specific version; None requests the latest.

    Returns:
        The request.
    """
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    for name, value in inputs.items():
        if isinstance(value, tensor_pb2.TensorProto):
            request.inputs[name].CopyFrom(value)
        else:
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def serialize_examples(rows: Mapping[str, Sequence]) -> np.ndarray:
    """Serialize columns of example values into one tf.Example per row.

    Args:
        rows: feature name to a column of values; str or bytes become bytes_list,
            int int64_list and float float_list.

    Returns:
        A numpy object array of serialized tf.Example bytes, one per row.

    Raises:
        ValueError: the columns have different lengths or a value has another type.
    """
    lengths = {name: len(column) for name, column in rows.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"example columns have different lengths: {lengths}")
    num_rows = next(iter(lengths.values()), 0)

    serialized = []
    for row in range(num_rows):
        example = tf.train.Example()
        for name, column in rows.items():
            _set_feature(example.features.feature[name], name, column[row])
        serialized.append(example.SerializeToString())
    return np.array(serialized, dtype=object)


def _set_feature(feature: tf.train.Feature, name: str, value: object) -> None:
    if isinstance(value, str):
        feature.bytes_list.value.append(value.encode("utf-8"))
    elif isinstance(value, bytes):
        feature.bytes_list.value.append(value)
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        feature.int64_list.value.append(int(value))
    elif isinstance(value, (float, np.floating)):
        feature.float_list.value.append(float(value))
    else:
        raise ValueError(
            f"example feature {name!r} has value {value!r} of type {type(value).__name__}: "
            "use str, bytes, int or float"
        )


def build_warmup_logs(
    saved_model_dir: str | os.PathLike,
    model_name: str,
    example_inputs: Mapping[str, Sequence],
) -> list[prediction_log_pb2.PredictionLog]:
    """Build one Predict warmup record per signature of a SavedModel.

    Each signature input is taken from `example_inputs` by name and cast to the input's
    dtype. An input named `features.SERVING_EXAMPLES_INPUT` of dtype string gets the
    example rows serialized as tf.Example protos instead.

    Args:
        saved_model_dir: the version folder whose signatures are read.
        model_name: the served model name written into each request.
        example_inputs: column name to example values, the same number of rows each,
            e.g. `{"user_id": ["u1", "u2"], "item_id": ["i1", "i9"]}`.

    Returns:
        PredictionLog records in signature-name order.

    Raises:
        ValueError: a signature input has no example column.
    """
    logs = []
    signature_defs = signatures.read_signature_defs(saved_model_dir)
    for signature_name in sorted(signature_defs):
        signature_def = signature_defs[signature_name]
        inputs = {
            name: _example_tensor(name, info, example_inputs, signature_name)
            for name, info in signature_def.inputs.items()
        }
        log = prediction_log_pb2.PredictionLog()
        log.predict_log.request.CopyFrom(build_predict_request(model_name, signature_name, inputs))
        logs.append(log)
    return logs


def _example_tensor(
    name: str, info, example_inputs: Mapping[str, Sequence], signature_name: str
) -> tensor_pb2.TensorProto:
    if name == features.SERVING_EXAMPLES_INPUT and info.dtype == types_pb2.DT_STRING:
        return tf.make_tensor_proto(serialize_examples(example_inputs), dtype=tf.string)
    if name not in example_inputs:
        raise ValueError(
            f"signature '{signature_name}' input '{name}' has no example value; "
            f"example_inputs has {sorted(example_inputs)}: add a column named '{name}'"
        )
    dtype = tf.dtypes.as_dtype(info.dtype)
    values = example_inputs[name]
    if dtype == tf.string:
        array = np.array([_as_bytes(value) for value in values], dtype=object)
    else:
        array = np.asarray(values, dtype=dtype.as_numpy_dtype)
    return tf.make_tensor_proto(array, dtype=dtype, shape=array.shape)


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def warmup_path(version_dir: str | os.PathLike) -> pathlib.Path:
    """Return where TF Serving looks for the warmup records of a version folder."""
    return pathlib.Path(version_dir) / features.WARMUP_FILE


def write_warmup_file(
    version_dir: str | os.PathLike, logs: Sequence[prediction_log_pb2.PredictionLog]
) -> pathlib.Path:
    """Write warmup records as a TFRecord file inside a version folder.

    Args:
        version_dir: the SavedModel version folder.
        logs: the records, at most `MAX_WARMUP_RECORDS`.

    Returns:
        The file written.

    Raises:
        ValueError: more records than TF Serving reads.
    """
    if len(logs) > MAX_WARMUP_RECORDS:
        raise ValueError(
            f"{len(logs)} warmup records given; TF Serving reads at most {MAX_WARMUP_RECORDS}"
        )
    path = warmup_path(version_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(os.fspath(path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read_warmup_file(path: str | os.PathLike) -> list[prediction_log_pb2.PredictionLog]:
    """Read and parse a warmup TFRecord file.

    Args:
        path: the `tf_serving_warmup_requests` file.

    Returns:
        The PredictionLog records in file order.

    Raises:
        ValueError: a record is not a PredictionLog with a log type set, or the file
            has more records than TF Serving reads.
    """
    logs = []
    for index, record in enumerate(_tfrecords(path)):
        if index >= MAX_WARMUP_RECORDS:
            raise ValueError(f"{path} has more than {MAX_WARMUP_RECORDS} warmup records")
        try:
            log = prediction_log_pb2.PredictionLog.FromString(record)
        except protobuf_message.DecodeError as error:
            raise ValueError(f"{path}: record {index} is not a PredictionLog: {error}") from None
        if log.WhichOneof("log_type") is None:
            raise ValueError(f"{path}: record {index} is a PredictionLog with no log type set")
        logs.append(log)
    return logs


def _tfrecords(path: str | os.PathLike) -> Iterable[bytes]:
    for record in tf.data.TFRecordDataset(os.fspath(path)):
        yield record.numpy()


def replay_warmup(
    logs: Iterable[prediction_log_pb2.PredictionLog], predict: PredictFunction
) -> int:
    """Send every warmup record's Predict request through `predict`.

    Args:
        logs: PredictionLog records.
        predict: a function that serves one PredictRequest, such as a gRPC stub's
            `Predict` or `ServingClient.send_predict_request`.

    Returns:
        The number of requests replayed.

    Raises:
        ValueError: a record is not a predict_log; the local server serves Predict only,
            while TF Serving also replays classify, regress and multi_inference logs.
        Whatever `predict` raises for a failed request.
    """
    count = 0
    for index, log in enumerate(logs):
        kind = log.WhichOneof("log_type")
        if kind != "predict_log":
            raise ValueError(f"warmup record {index} is a {kind}; only predict_log is replayed")
        predict(log.predict_log.request)
        count += 1
    return count
