"""A local server speaking TF Serving's gRPC API over the pipeline's model base folder.

This is a development stand-in: production runs TF Serving (see `serving.config`). It
implements PredictionService.Predict, PredictionService.GetModelMetadata and
ModelService.GetModelStatus with TF Serving's request and response protos and status codes:
  NOT_FOUND            unknown model, version or version label;
  FAILED_PRECONDITION  unknown signature;
  INVALID_ARGUMENT     inputs whose names, dtypes or shapes do not match the signature, an
                       unknown output in output_filter, or an unsupported metadata field.
Classify, Regress, MultiInference and HandleReloadConfigRequest return UNIMPLEMENTED.

It binds 127.0.0.1 unless told otherwise, serves TLS when given a certificate and key, and
counts requests, errors and unseen ids (defined in `serving.servable`); `counters()` returns
them and `stop()` logs them.
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
import threading
from collections.abc import Callable, Sequence
from concurrent import futures

import grpc
from absl import logging
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from serving import config
from serving.manager import Loader, ModelManager
from serving.servable import RequestError, load_version
from transforms import features

DEFAULT_HOST = "127.0.0.1"
SIGNATURE_DEF_FIELD = "signature_def"
PREDICT_METHOD = "Predict"
METADATA_METHOD = "GetModelMetadata"
STATUS_METHOD = "GetModelStatus"


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """PEM files for serving over TLS.

    Attributes:
        certificate: the server certificate chain.
        private_key: the server private key.
        client_ca: when set, clients must present a certificate signed by this CA.
    """

    certificate: pathlib.Path
    private_key: pathlib.Path
    client_ca: pathlib.Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        pair = (self.private_key.read_bytes(), self.certificate.read_bytes())
        client_ca = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials(
            [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
        )


class ServerCounters:
    """Thread-safe request, error and unseen-id counters, keyed by model."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: collections.Counter = collections.Counter()
        self._errors: collections.Counter = collections.Counter()
        self._unseen_ids: collections.Counter = collections.Counter()
        self._missing_ids: collections.Counter = collections.Counter()

    def count_request(self, model: str, method: str) -> None:
        with self._lock:
            self._requests[(model, method)] += 1

    def count_error(self, model: str, code: grpc.StatusCode) -> None:
        with self._lock:
            self._errors[(model, code.name)] += 1

    def count_ids(self, model: str, unseen: dict[str, int], missing: dict[str, int]) -> None:
        with self._lock:
            for key, count in unseen.items():
                self._unseen_ids[(model, key)] += count
            for key, count in missing.items():
                self._missing_ids[(model, key)] += count

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Return the counters as `{"requests": {"ranking/Predict": 3}, "errors": ...}`.

        Keys: requests by model/method, errors by model/status code name, unseen_ids and
        missing_ids by model/id key. Missing ids (empty or whitespace-only) are also unseen.
        """
        with self._lock:
            counters = {
                "requests": self._requests,
                "errors": self._errors,
                "unseen_ids": self._unseen_ids,
                "missing_ids": self._missing_ids,
            }
            return {
                kind: {f"{model}/{detail}": n for (model, detail), n in sorted(counter.items())}
                for kind, counter in counters.items()
            }


class _RequestHandler:
    """Runs one RPC: counts it, maps RequestError to the RPC status, logs other failures."""

    def __init__(self, counters: ServerCounters) -> None:
        self._counters = counters

    def __call__(self, model: str, method: str, context: grpc.ServicerContext, handle: Callable):
        self._counters.count_request(model, method)
        try:
            return handle()
        except RequestError as error:
            failure = (error.code, error.message)
        except Exception as error:  # noqa: BLE001 - the client gets INTERNAL, the log the cause
            logging.exception("%s on model %s failed", method, model)
            failure = (grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")
        self._counters.count_error(model, failure[0])
        context.abort(*failure)


class _PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager, counters: ServerCounters) -> None:
        self._manager = manager
        self._counters = counters
        self._handle = _RequestHandler(counters)

    def Predict(self, request, context):  # noqa: N802 - gRPC method name
        def predict():
            servable = self._manager.servable(*_model_spec_key(request.model_spec))
            response, id_counts = servable.predict(request)
            self._counters.count_ids(request.model_spec.name, id_counts.unseen, id_counts.missing)
            return response

        return self._handle(request.model_spec.name, PREDICT_METHOD, context, predict)

    def GetModelMetadata(self, request, context):  # noqa: N802 - gRPC method name
        def metadata():
            servable = self._manager.servable(*_model_spec_key(request.model_spec))
            fields = list(request.metadata_field)
            if fields != [SIGNATURE_DEF_FIELD]:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"metadata_field {fields} is not supported: request ['{SIGNATURE_DEF_FIELD}']",
                )
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.model_name
            response.model_spec.version.value = servable.version
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for name, signature_def in servable.signature_defs.items():
                signature_map.signature_def[name].CopyFrom(signature_def)
            response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
            return response

        return self._handle(request.model_spec.name, METADATA_METHOD, context, metadata)


class _ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager, counters: ServerCounters) -> None:
        self._manager = manager
        self._handle = _RequestHandler(counters)

    def GetModelStatus(self, request, context):  # noqa: N802 - gRPC method name
        def status():
            name, version, _ = _model_spec_key(request.model_spec)
            response = get_model_status_pb2.GetModelStatusResponse()
            for record in self._manager.statuses(name, version):
                entry = response.model_version_status.add()
                entry.version = record.version
                entry.state = record.state
                entry.status.error_code = record.error_code.value[0]
                entry.status.error_message = record.error_message
            return response

        return self._handle(request.model_spec.name, STATUS_METHOD, context, status)


def _model_spec_key(model_spec) -> tuple[str, int | None, str]:
    version = model_spec.version.value if model_spec.HasField("version") else None
    return model_spec.name, version, model_spec.version_label


class LocalModelServer:
    """TF Serving's gRPC API over a model base folder, for development and tests.

    Args:
        model_base_dir: `<base>` holding `<model>/<version>/` SavedModels.
        host: address to bind; loopback by default.
        port: port to bind; 0 picks a free one (read `port` after `start`).
        model_names: models served; default ranking and retrieval.
        version_policy: which versions on disk are served.
        poll_interval_s: seconds between scans for new versions.
        tls: serve TLS with these files instead of plaintext.
        max_workers: threads serving RPCs.
        loader: loads one version folder; tests replace it.
    """

    def __init__(
        self,
        model_base_dir: str | pathlib.Path,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        model_names: Sequence[str] = (features.RANKING_MODEL_NAME, features.RETRIEVAL_MODEL_NAME),
        version_policy: config.VersionPolicy | None = None,
        poll_interval_s: float = 1.0,
        tls: TlsFiles | None = None,
        max_workers: int = 16,
        loader: Loader = load_version,
    ) -> None:
        if poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s={poll_interval_s}: must be positive")
        self._base_dir = pathlib.Path(model_base_dir)
        self._host = host
        self._requested_port = port
        self._poll_interval_s = poll_interval_s
        self._tls = tls
        self._max_workers = max_workers
        self.manager = ModelManager(self._base_dir, model_names, version_policy, loader)
        self._counters = ServerCounters()
        self._server: grpc.Server | None = None
        self._poller: threading.Thread | None = None
        self._stopping = threading.Event()
        self.port = 0

    @property
    def target(self) -> str:
        """The `host:port` a client connects to."""
        return f"{self._host}:{self.port}"

    def start(self) -> int:
        """Load the versions on disk, bind, start serving and polling; return the port.

        Raises:
            RuntimeError: the port could not be bound.
        """
        self.manager.poll()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._max_workers))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            _PredictionServicer(self.manager, self._counters), server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            _ModelServicer(self.manager, self._counters), server
        )
        address = f"{self._host}:{self._requested_port}"
        try:
            if self._tls is None:
                self.port = server.add_insecure_port(address)
            else:
                self.port = server.add_secure_port(address, self._tls.credentials())
        except RuntimeError as error:
            raise RuntimeError(f"could not bind {address}: {error}") from None
        if self.port == 0:  # Older grpcio versions return 0 instead of raising.
            raise RuntimeError(f"could not bind {address}: is the port in use?")
        server.start()
        self._server = server

        self._stopping.clear()
        self._poller = threading.Thread(
            target=self._poll_loop, name="idpt-model-poller", daemon=True
        )
        self._poller.start()
        logging.info(
            "Local model server on %s (%s) serving %s from %s",
            self.target,
            "TLS" if self._tls else "plaintext",
            list(self.manager.model_names),
            self._base_dir,
        )
        return self.port

    def _poll_loop(self) -> None:
        while not self._stopping.wait(self._poll_interval_s):
            try:
                self.manager.poll()
            except Exception:  # noqa: BLE001 - keep polling after a scan error
                logging.exception("Scanning %s for model versions failed", self._base_dir)

    def poll_now(self) -> None:
        """Scan for new versions now instead of waiting for the next poll."""
        self.manager.poll()

    def counters(self) -> dict[str, dict[str, int]]:
        """Return the request, error and unseen-id counters (see ServerCounters.snapshot)."""
        return self._counters.snapshot()

    def stop(self, grace_s: float = 1.0) -> None:
        """Stop polling and serving; in-flight RPCs get `grace_s` seconds to finish."""
        self._stopping.set()
        if self._server is not None:
            self._server.stop(grace_s).wait()
            self._server = None
        if self._poller is not None:
            self._poller.join()
            self._poller = None
        logging.info("Local model server on %s stopped; counters %s", self.target, self.counters())

    def wait(self) -> None:
        """Block until the server stops."""
        if self._server is not None:
            self._server.wait_for_termination()

    def __enter__(self) -> LocalModelServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
