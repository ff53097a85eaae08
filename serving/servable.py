"""One loaded model version of the local server: request validation, execution, unseen ids.

A request is checked against the version's SignatureDefs before it reaches TensorFlow, so
the error names the signature's expected inputs, dtypes and shapes, with the status code TF
Serving uses for the same fault.

Unseen ids: a version's vocabularies are read from its SavedModel assets,
`assets/<features.vocabulary_name(key)>` (one token per line, as Transform writes them),
for the keys `user_id` and `item_id`. Ids of those keys come from the request input of
that name or from that feature of each serialized tf.Example. An id that is not a vocabulary
token is counted as unseen. An unseen id that is empty or whitespace-only is also counted
as missing. The model itself
maps all of them to its OOV index, so every unseen id gets the same answer (the OOV
embedding's score or top-K list). When a version has no such asset, its ids of that key are
not counted, and `LoadedVersion.unseen_id_keys` says which keys are counted.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import message as protobuf_message
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import predict_pb2

from serving import signatures
from transforms import features

ID_KEYS = (features.USER_ID, features.ITEM_ID)

_STATUS_BY_NUMBER = {status.value[0]: status for status in grpc.StatusCode}


class RequestError(Exception):
    """A failed request, with the gRPC status code TF Serving returns for it."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def status_from_tf_error(error: tf.errors.OpError) -> grpc.StatusCode:
    """Return the gRPC status for a TensorFlow error; both use the same code numbers."""
    return _STATUS_BY_NUMBER.get(error.error_code, grpc.StatusCode.UNKNOWN)


@dataclasses.dataclass
class IdCounts:
    """Ids of one request that are not in the vocabulary, per input key."""

    unseen: dict[str, int] = dataclasses.field(default_factory=dict)
    missing: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class LoadedVersion:
    """A SavedModel version loaded for serving.

    Attributes:
        model_name: served model name.
        version: version number (the folder name).
        path: the version folder.
        signature_defs: signature name to SignatureDef, from saved_model.pb.
        functions: signature name to the callable concrete function.
        vocabularies: id key to its vocabulary tokens as UTF-8 bytes.
        saved_model: the loaded object, kept so its resources stay alive.
    """

    model_name: str
    version: int
    path: pathlib.Path
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]
    functions: Mapping[str, object]
    vocabularies: dict[str, frozenset[bytes]]
    saved_model: object

    @property
    def unseen_id_keys(self) -> tuple[str, ...]:
        """Id keys whose unseen values are counted (those with a vocabulary asset)."""
        return tuple(sorted(self.vocabularies))

    def predict(
        self, request: predict_pb2.PredictRequest
    ) -> tuple[predict_pb2.PredictResponse, IdCounts]:
        """Validate and run one Predict request.

        Returns:
            The response and the unseen ids it contained.

        Raises:
            RequestError: FAILED_PRECONDITION for an unknown signature, INVALID_ARGUMENT for
                inputs or an output filter that do not match it, or the code of the
                TensorFlow error the model raised.
        """
        signature_name = request.model_spec.signature_name or features.SERVING_DEFAULT_SIGNATURE
        signature_def = self._signature(signature_name)
        arrays = _validated_inputs(request, signature_def, signature_name)
        output_names = _validated_output_filter(request, signature_def, signature_name)
        id_counts = self._count_unseen(arrays)

        outputs = self._run(signature_name, signature_def, arrays)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.model_name
        response.model_spec.version.value = self.version
        response.model_spec.signature_name = signature_name
        for name in output_names:
            response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name].numpy()))
        return response, id_counts

    def _signature(self, signature_name: str) -> meta_graph_pb2.SignatureDef:
        if signature_name not in self.signature_defs:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f'Serving signature key "{signature_name}" not found in model '
                f"'{self.model_name}' version {self.version}; its signatures are "
                f"{sorted(self.signature_defs)}",
            )
        return self.signature_defs[signature_name]

    def _run(
        self,
        signature_name: str,
        signature_def: meta_graph_pb2.SignatureDef,
        arrays: dict[str, np.ndarray],
    ) -> dict[str, tf.Tensor]:
        tensors = {
            name: tf.constant(array, dtype=tf.dtypes.as_dtype(signature_def.inputs[name].dtype))
            for name, array in arrays.items()
        }
        try:
            return self.functions[signature_name](**tensors)
        except tf.errors.OpError as error:
            raise RequestError(
                status_from_tf_error(error),
                f"model '{self.model_name}' version {self.version} signature "
                f"'{signature_name}' failed: {error.message}",
            ) from None

    def _count_unseen(self, arrays: Mapping[str, np.ndarray]) -> IdCounts:
        counts = IdCounts()
        for key, vocabulary in self.vocabularies.items():
            ids = _ids_of_key(arrays, key)
            if ids is None:
                continue
            unseen = [value for value in ids if value not in vocabulary]
            counts.unseen[key] = len(unseen)
            counts.missing[key] = sum(1 for value in unseen if not value.strip())
        return counts


def _ids_of_key(arrays: Mapping[str, np.ndarray], key: str) -> list[bytes] | None:
    if key in arrays and arrays[key].dtype == object:
        return [bytes(value) for value in arrays[key].reshape(-1)]
    if features.SERVING_EXAMPLES_INPUT in arrays:
        return _ids_in_examples(arrays[features.SERVING_EXAMPLES_INPUT], key)
    return None


def _ids_in_examples(serialized: np.ndarray, key: str) -> list[bytes]:
    ids = []
    for record in serialized.reshape(-1):
        try:
            example = tf.train.Example.FromString(bytes(record))
        except protobuf_message.DecodeError:
            continue  # The model's own parsing reports the malformed example.
        feature = example.features.feature.get(key)
        values = list(feature.bytes_list.value) if feature is not None else []
        # A missing feature parses to the empty default, the missing-id path.
        ids.extend(values or [b""])
    return ids


def _validated_inputs(
    request: predict_pb2.PredictRequest,
    signature_def: meta_graph_pb2.SignatureDef,
    signature_name: str,
) -> dict[str, np.ndarray]:
    expected = signature_def.inputs
    sent = set(request.inputs)
    if sent != set(expected):
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"inputs {sorted(sent)} do not match signature '{signature_name}', which expects "
            f"inputs {{{signatures.describe_tensor_infos(expected)}}}; missing "
            f"{sorted(set(expected) - sent)}, unexpected {sorted(sent - set(expected))}",
        )

    arrays = {}
    for name in sorted(expected):
        arrays[name] = _validated_tensor(name, request.inputs[name], expected[name], signature_name)
    _check_batch_sizes(arrays, expected, signature_name)
    return arrays


def _validated_tensor(
    name: str,
    tensor: tensor_pb2.TensorProto,
    info: meta_graph_pb2.TensorInfo,
    signature_name: str,
) -> np.ndarray:
    expected_dims = signatures.shape_dims(info.tensor_shape)
    expectation = (
        f"signature '{signature_name}' expects {name}: {signatures.dtype_name(info.dtype)} "
        f"{signatures.describe_shape(expected_dims)}"
    )
    if tensor.dtype != info.dtype:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input '{name}' has dtype {signatures.dtype_name(tensor.dtype)}, but {expectation}",
        )

    received_dims = [dim.size for dim in tensor.tensor_shape.dim]
    if not signatures.shape_accepts(expected_dims, received_dims):
        hint = "; send a batch, e.g. shape [1] for one id" if not received_dims else ""
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input '{name}' has shape {signatures.describe_shape(received_dims)}, "
            f"but {expectation}{hint}",
        )

    try:
        return tf.make_ndarray(tensor)
    except (ValueError, TypeError) as error:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input '{name}' is not a well-formed tensor of shape "
            f"{signatures.describe_shape(received_dims)}: {error}",
        ) from None


def _check_batch_sizes(
    arrays: Mapping[str, np.ndarray],
    expected: Mapping[str, meta_graph_pb2.TensorInfo],
    signature_name: str,
) -> None:
    # Inputs whose first dimension is the batch (-1) must agree on it, because the model
    # pairs row i of every input.
    batch_sizes = {
        name: array.shape[0]
        for name, array in arrays.items()
        if (signatures.shape_dims(expected[name].tensor_shape) or [None])[0] == -1
    }
    if len(set(batch_sizes.values())) > 1:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"inputs of signature '{signature_name}' have different batch sizes "
            f"{dict(sorted(batch_sizes.items()))}; send the same number of rows in each",
        )


def _validated_output_filter(
    request: predict_pb2.PredictRequest,
    signature_def: meta_graph_pb2.SignatureDef,
    signature_name: str,
) -> list[str]:
    if not request.output_filter:
        return sorted(signature_def.outputs)
    unknown = [name for name in request.output_filter if name not in signature_def.outputs]
    if unknown:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"output_filter names {unknown}, which signature '{signature_name}' does not "
            f"return; its outputs are {sorted(signature_def.outputs)}",
        )
    return list(dict.fromkeys(request.output_filter))


def _read_vocabularies(version_dir: pathlib.Path) -> dict[str, frozenset[bytes]]:
    vocabularies = {}
    for key in ID_KEYS:
        path = version_dir / "assets" / features.vocabulary_name(key)
        if path.is_file():
            vocabularies[key] = frozenset(path.read_bytes().splitlines())
    return vocabularies


def load_version(model_name: str, version: int, version_dir: pathlib.Path) -> LoadedVersion:
    """Load a SavedModel version folder for serving (no warmup; the manager replays it).

    Args:
        model_name: served model name.
        version: version number.
        version_dir: `<base>/<model_name>/<version>`.

    Returns:
        The loaded version.

    Raises:
        Whatever tf.saved_model.load raises for a broken SavedModel, and ValueError when
        a signature of saved_model.pb cannot be called.
    """
    saved_model = tf.saved_model.load(str(version_dir), tags=[signatures.SERVE_TAG])
    signature_defs = signatures.read_signature_defs(version_dir)
    functions = dict(saved_model.signatures)
    missing = sorted(set(signature_defs) - set(functions))
    if missing:
        raise ValueError(
            f"{version_dir}: signatures {missing} are in saved_model.pb but not callable"
        )
    return LoadedVersion(
        model_name=model_name,
        version=version,
        path=version_dir,
        signature_defs=signature_defs,
        functions=functions,
        vocabularies=_read_vocabularies(version_dir),
        saved_model=saved_model,
    )
