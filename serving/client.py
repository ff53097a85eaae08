"""gRPC client for the served IDPT models, on tensorflow-serving-api stubs.

Works against TF Serving and the local server alike:
  predict    ranking scores for (user, item) pairs, from the ranking model's `predict`;
  retrieve   top-K items per user, from the retrieval model's `retrieve`;
  recommend  retrieve candidates for one user, drop items from the user's training
             history if given, score the rest with the ranking model, return the best k;
  model_status, model_metadata.

Every call has a deadline. A call that fails with UNAVAILABLE (server not up yet,
connection dropped) is retried with exponential backoff and jitter until it succeeds, the
attempts run out or the deadline passes. Other codes are not retried. Failures raise
ServingError, whose message names the request sent and, for INVALID_ARGUMENT, the inputs
the signature expects (read with GetModelMetadata).
"""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import signatures, warmup
from transforms import features

DEFAULT_TARGET = "127.0.0.1:8500"
SIGNATURE_DEF_FIELD = "signature_def"

_STATUS_BY_NUMBER = {status.value[0]: status for status in grpc.StatusCode}


class ServingError(Exception):
    """A failed call to the model server.

    Attributes:
        code: the gRPC status code of the last attempt.
        details: the server's message.
        sent: a description of the request.
        expected: the signature's inputs, when known (INVALID_ARGUMENT only).
        attempts: how many times the call was sent.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        *,
        sent: str,
        expected: str = "",
        attempts: int = 1,
    ) -> None:
        message = f"{sent} failed with {code.name} after {attempts} attempt(s): {details}"
        if expected:
            message += f". The signature expects inputs {{{expected}}}"
        super().__init__(message)
        self.code = code
        self.details = details
        self.sent = sent
        self.expected = expected
        self.attempts = attempts


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Backoff between attempts of a call that failed with UNAVAILABLE.

    Attempt n (from 1) waits `min(max_backoff_s, initial_backoff_s * multiplier**(n-1))`
    scaled by a random factor in [1 - jitter, 1] before attempt n + 1, and never past
    the call's deadline.
    """

    max_attempts: int = 5
    initial_backoff_s: float = 0.1
    multiplier: float = 2.0
    max_backoff_s: float = 2.0
    jitter: float = 0.2

    def backoff_s(self, attempt: int, rng: random.Random) -> float:
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return base * (1.0 - self.jitter * rng.random())


def call_with_retries(
    send: Callable[[float], object],
    *,
    timeout_s: float,
    policy: RetryPolicy,
    describe: Callable[[], str],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[grpc.RpcError], None] | None = None,
):
    """Call `send(remaining_seconds)` until it succeeds, retrying UNAVAILABLE with backoff.

    Args:
        send: sends one attempt with the given timeout; raises grpc.RpcError on failure.
        timeout_s: deadline of the whole call, attempts and waits included.
        policy: attempts and backoff.
        describe: returns the request description for the error message.
        clock, sleep, rng: injectable for tests.
        on_retry: called with each UNAVAILABLE error that is retried.

    Returns:
        What `send` returns.

    Raises:
        ServingError: a code other than UNAVAILABLE, the last attempt failed, or the
            deadline passed (DEADLINE_EXCEEDED).
    """
    rng = rng or random.Random()
    deadline = clock() + timeout_s
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - clock()
        if remaining <= 0:
            raise ServingError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"deadline of {timeout_s:g} s passed",
                sent=describe(),
                attempts=attempt - 1,
            )
        try:
            return send(remaining)
        except grpc.RpcError as error:
            code = error.code()
            if code != grpc.StatusCode.UNAVAILABLE or attempt >= policy.max_attempts:
                raise ServingError(
                    code, error.details(), sent=describe(), attempts=attempt
                ) from None
            if on_retry is not None:
                on_retry(error)
            wait_s = min(policy.backoff_s(attempt, rng), max(0.0, deadline - clock()))
            sleep(wait_s)


@dataclasses.dataclass(frozen=True)
class Retrieval:
    """Top-K retrieval results.

    Attributes:
        item_ids: str array (B, K), best first.
        scores: float32 array (B, K).
        version: the model version that served the request.
    """

    item_ids: np.ndarray
    scores: np.ndarray
    version: int


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """One recommended item with its ranking score."""

    item_id: str
    score: float


@dataclasses.dataclass(frozen=True)
class Recommendations:
    """The result of `recommend`: items best first, and the versions that produced them."""

    user_id: str
    items: tuple[Recommendation, ...]
    retrieval_version: int
    ranking_version: int
    excluded: int

    def to_json(self) -> str:
        return json.dumps(
            {
                features.USER_ID: self.user_id,
                "items": [dataclasses.asdict(item) for item in self.items],
                "retrieval_version": self.retrieval_version,
                "ranking_version": self.ranking_version,
                "excluded_history_items": self.excluded,
            },
            ensure_ascii=False,
        )


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    """A version's state from GetModelStatus, e.g. `AVAILABLE`."""

    version: int
    state: str
    error_code: str
    error_message: str


def _string_tensor(values: Sequence[str | bytes]) -> tensor_pb2.TensorProto:
    encoded = [value.encode("utf-8") if isinstance(value, str) else value for value in values]
    return tf.make_tensor_proto(
        np.array(encoded, dtype=object), dtype=tf.string, shape=[len(encoded)]
    )


def _decode_strings(array: np.ndarray) -> np.ndarray:
    decoded = [value.decode("utf-8") for value in array.reshape(-1)]
    return np.array(decoded, dtype=object).reshape(array.shape)


def describe_request(request: predict_pb2.PredictRequest) -> str:
    """Describe a PredictRequest: model, version, signature and each input's dtype and shape."""
    spec = request.model_spec
    version = f" version {spec.version.value}" if spec.HasField("version") else ""
    inputs = ", ".join(
        f"{name}: {signatures.dtype_name(tensor.dtype)} "
        f"{signatures.describe_shape([dim.size for dim in tensor.tensor_shape.dim])}"
        for name, tensor in sorted(request.inputs.items())
    )
    signature = spec.signature_name or features.SERVING_DEFAULT_SIGNATURE
    return (
        f"Predict on model '{spec.name}'{version} signature '{signature}' with inputs {{{inputs}}}"
    )


class ServingClient:
    """Client of the ranking and retrieval models on one server.

    Args:
        target: `host:port` of TF Serving or the local server.
        timeout_s: deadline of each call, retries included.
        retry: backoff policy for UNAVAILABLE.
        root_certificates: PEM CA bundle; when given the channel uses TLS.
        ranking_model, retrieval_model: served names.

    Attributes:
        retries: how many attempts this client has retried after UNAVAILABLE.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout_s: float = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        root_certificates: bytes | None = None,
        ranking_model: str = features.RANKING_MODEL_NAME,
        retrieval_model: str = features.RETRIEVAL_MODEL_NAME,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.retry = retry
        self.ranking_model = ranking_model
        self.retrieval_model = retrieval_model
        if root_certificates is None:
            self._channel = grpc.insecure_channel(target)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.secure_channel(target, credentials)
        self.retries = 0
        self._retries_lock = threading.Lock()
        self._prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _call(self, method, request, describe: Callable[[], str]):
        return call_with_retries(
            lambda remaining: method(request, timeout=remaining),
            timeout_s=self.timeout_s,
            policy=self.retry,
            describe=describe,
            on_retry=self._count_retry,
        )

    def _count_retry(self, error: grpc.RpcError) -> None:
        with self._retries_lock:
            self.retries += 1

    def send_predict_request(
        self, request: predict_pb2.PredictRequest
    ) -> predict_pb2.PredictResponse:
        """Send a PredictRequest as built; the lowest level call, used by all the others.

        Raises:
            ServingError: the call failed; for INVALID_ARGUMENT the message adds the
                signature's expected inputs when the server can return its metadata.
        """
        try:
            return self._call(self._prediction.Predict, request, lambda: describe_request(request))
        except ServingError as error:
            if error.code != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            expected = self._expected_inputs(request)
            raise ServingError(
                error.code,
                error.details,
                sent=error.sent,
                expected=expected,
                attempts=error.attempts,
            ) from None

    def _expected_inputs(self, request: predict_pb2.PredictRequest) -> str:
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        try:
            signature_defs = self.model_metadata(spec.name, version=version)
        except ServingError:
            return ""
        signature_def = signature_defs.get(
            spec.signature_name or features.SERVING_DEFAULT_SIGNATURE
        )
        return signatures.describe_tensor_infos(signature_def.inputs) if signature_def else ""

    def predict_inputs(
        self,
        model: str,
        signature: str,
        inputs: Mapping[str, np.ndarray | tensor_pb2.TensorProto],
        *,
        version: int | None = None,
    ) -> predict_pb2.PredictResponse:
        """Send any inputs to any signature, unchecked; numpy arrays keep their dtype and shape."""
        request = warmup.build_predict_request(model, signature, inputs, version=version)
        return self.send_predict_request(request)

    def predict(
        self,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        *,
        side_features: Mapping[str, Sequence[float]] | None = None,
        version: int | None = None,
    ) -> tuple[np.ndarray, int]:
        """Score (user, item) pairs with the ranking model's `predict` signature.

        Args:
            user_ids, item_ids: equal-length id lists; row i pairs user_ids[i] and item_ids[i].
            side_features: numeric side features the signature takes, one value per row.
            version: a specific version, or None for the latest.

        Returns:
            float32 scores (B,) and the version that served the request.

        Raises:
            ValueError: the id lists differ in length.
            ServingError: the call failed.
        """
        if len(user_ids) != len(item_ids):
            raise ValueError(
                f"{len(user_ids)} user ids and {len(item_ids)} item ids: pass one item per user"
            )
        inputs = {
            features.USER_ID: _string_tensor(user_ids),
            features.ITEM_ID: _string_tensor(item_ids),
        }
        for name, values in (side_features or {}).items():
            inputs[name] = tf.make_tensor_proto(np.asarray(values, dtype=np.float32))
        response = self.predict_inputs(
            self.ranking_model, features.PREDICT_SIGNATURE, inputs, version=version
        )
        scores = tf.make_ndarray(response.outputs[features.SCORE_OUTPUT])
        return scores, response.model_spec.version.value

    def retrieve(self, user_ids: Sequence[str], *, version: int | None = None) -> Retrieval:
        """Return the retrieval model's top-K items per user (`retrieve` signature).

        Raises:
            ServingError: the call failed.
        """
        response = self.predict_inputs(
            self.retrieval_model,
            features.RETRIEVE_SIGNATURE,
            {features.USER_ID: _string_tensor(user_ids)},
            version=version,
        )
        item_ids = tf.make_ndarray(response.outputs[features.TOP_ITEM_IDS_OUTPUT])
        scores = tf.make_ndarray(response.outputs[features.TOP_SCORES_OUTPUT])
        return Retrieval(_decode_strings(item_ids), scores, response.model_spec.version.value)

    def query_embedding(self, user_ids: Sequence[str], *, version: int | None = None) -> np.ndarray:
        """Return the query tower's embeddings (B, D) (`query_embedding` signature)."""
        response = self.predict_inputs(
            self.retrieval_model,
            features.QUERY_EMBEDDING_SIGNATURE,
            {features.USER_ID: _string_tensor(user_ids)},
            version=version,
        )
        return tf.make_ndarray(response.outputs[features.QUERY_EMBEDDING_OUTPUT])

    def recommend(
        self,
        user_id: str,
        k: int,
        *,
        num_candidates: int | None = None,
        history: Mapping[str, frozenset[str]] | None = None,
    ) -> Recommendations:
        """Retrieve candidates for a user, rank them, and return the best k.

        Candidates are the retrieval model's top K (all of them, or the first
        `num_candidates`). Items in `history[user_id]` are dropped before ranking. The
        ranking score orders the rest; equal scores keep retrieval order. Fewer than k
        items come back when fewer candidates remain.

        Args:
            user_id: the user; an unseen or empty id gets the models' OOV answer.
            k: how many items to return, at least 1.
            num_candidates: at most this many retrieved items are ranked.
            history: user id to items to exclude, e.g. from `history.read_user_history`.

        Returns:
            The recommendations.

        Raises:
            ValueError: k or num_candidates is below 1.
            ServingError: a call failed.
        """
        if k < 1 or (num_candidates is not None and num_candidates < 1):
            raise ValueError(f"k={k} and num_candidates={num_candidates} must be at least 1")
        retrieval = self.retrieve([user_id])
        candidates = list(retrieval.item_ids[0][:num_candidates])
        seen = (history or {}).get(user_id, frozenset())
        kept = [item for item in candidates if item not in seen]
        excluded = len(candidates) - len(kept)
        if not kept:
            return Recommendations(user_id, (), retrieval.version, 0, excluded)

        scores, ranking_version = self.predict([user_id] * len(kept), kept)
        # A stable sort on the negated score keeps retrieval order among equal scores.
        order = np.argsort(-scores, kind="stable")[:k]
        items = tuple(Recommendation(kept[i], float(scores[i])) for i in order)
        return Recommendations(user_id, items, retrieval.version, ranking_version, excluded)

    def model_status(self, model: str, *, version: int | None = None) -> list[VersionStatus]:
        """Return the model's version states, as GetModelStatus reports them.

        Raises:
            ServingError: NOT_FOUND for an unknown model or version.
        """
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        response = self._call(
            self._models.GetModelStatus,
            request,
            lambda: (
                f"GetModelStatus for model '{model}'" + (f" version {version}" if version else "")
            ),
        )
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return [
            VersionStatus(
                status.version,
                state_name(status.state),
                _STATUS_BY_NUMBER.get(status.status.error_code, grpc.StatusCode.UNKNOWN).name,
                status.status.error_message,
            )
            for status in response.model_version_status
        ]

    def model_metadata(self, model: str, *, version: int | None = None) -> dict[str, object]:
        """Return the signature name to SignatureDef map of the served version.

        Raises:
            ServingError: NOT_FOUND for an unknown model or version.
        """
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        request.metadata_field.append(SIGNATURE_DEF_FIELD)
        response = self._call(
            self._prediction.GetModelMetadata,
            request,
            lambda: f"GetModelMetadata for model '{model}'",
        )
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_map)
        return {
            name: signature_def
            for name, signature_def in signature_map.signature_def.items()
            if not name.startswith("__")
        }
