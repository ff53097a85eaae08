"""Version management of the local server, after TF Serving's file-system source and manager.

Each served model lives in `<base>/<model name>/<version>/`. A version is a folder named by
an integer that contains saved_model.pb. Other folders are ignored, such as a `.tmp-7` being
written before it is renamed into place. On every poll the version policy
picks the aspired versions among those on disk. An aspired version that is not loaded is
loaded and its warmup records replayed; it goes live only when both succeed. Versions no
longer aspired are unloaded only after an aspired version is live, so the old version
keeps answering while the new one loads ("availability preserving", TF Serving's default).
A request without a version gets the highest live version.

Differences from TF Serving: one version loads at a time; a version that failed to load is
not retried until the server restarts (TF Serving retries `--max_num_load_retries` times);
if the aspired version fails, the older live version keeps serving.
"""

from __future__ import annotations

import dataclasses
import pathlib
import threading
from collections.abc import Callable, Sequence

import grpc
import tensorflow as tf
from absl import logging
from tensorflow_serving.apis import get_model_status_pb2

from serving import config, signatures, warmup
from serving.servable import LoadedVersion, RequestError, load_version, status_from_tf_error

State = get_model_status_pb2.ModelVersionStatus.State

Loader = Callable[[str, int, pathlib.Path], LoadedVersion]


@dataclasses.dataclass
class VersionStatus:
    """State of one version, as GetModelStatus reports it."""

    version: int
    state: int
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""


def versions_on_disk(model_dir: pathlib.Path) -> list[int]:
    """Return the complete version folders of a model: integer names holding saved_model.pb."""
    if not model_dir.is_dir():
        return []
    versions = []
    for child in model_dir.iterdir():
        if child.name.isdigit() and (child / signatures.SAVED_MODEL_FILE).is_file():
            versions.append(int(child.name))
    return sorted(versions)


class ModelManager:
    """Loads, serves and unloads the versions of each configured model.

    Args:
        base_dir: the model base folder (`<base>` in `<base>/<model>/<version>`).
        model_names: the models to serve; any other name is NOT_FOUND.
        version_policy: which versions on disk are served.
        loader: loads one version folder; tests pass a slower or failing one.
    """

    def __init__(
        self,
        base_dir: str | pathlib.Path,
        model_names: Sequence[str],
        version_policy: config.VersionPolicy | None = None,
        loader: Loader = load_version,
    ) -> None:
        self._base_dir = pathlib.Path(base_dir)
        self._model_names = tuple(model_names)
        self._policy = version_policy or config.VersionPolicy()
        self._loader = loader
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._live: dict[str, dict[int, LoadedVersion]] = {name: {} for name in model_names}
        self._statuses: dict[str, dict[int, VersionStatus]] = {name: {} for name in model_names}
        self._failed: set[tuple[str, int]] = set()

    @property
    def model_names(self) -> tuple[str, ...]:
        return self._model_names

    def poll(self) -> None:
        """Scan the base folder once: load newly aspired versions, then unload old ones."""
        with self._poll_lock:
            for name in self._model_names:
                self._poll_model(name)

    def _poll_model(self, name: str) -> None:
        aspired = self._policy.select(versions_on_disk(self._base_dir / name))
        for version in sorted(aspired):
            if version not in self._live[name] and (name, version) not in self._failed:
                self._load(name, version)

        with self._lock:
            live = self._live[name]
            if aspired and not aspired & set(live):
                return
            for version in sorted(set(live) - aspired):
                self._statuses[name][version] = VersionStatus(version, State.UNLOADING)
                del live[version]
                self._statuses[name][version] = VersionStatus(version, State.END)
                logging.info("Unloaded model %s version %d", name, version)

    def _load(self, name: str, version: int) -> None:
        self._set_status(name, VersionStatus(version, State.LOADING))
        logging.info("Loading model %s version %d", name, version)
        try:
            loaded = self._loader(name, version, self._base_dir / name / str(version))
            replayed = _replay_warmup(loaded)
        except Exception as error:  # noqa: BLE001 - any load failure marks the version failed
            code, message = _load_error(error)
            self._failed.add((name, version))
            self._set_status(name, VersionStatus(version, State.END, code, message))
            logging.error("Failed to load model %s version %d: %s", name, version, message)
            return

        with self._lock:
            self._live[name][version] = loaded
            self._statuses[name][version] = VersionStatus(version, State.AVAILABLE)
        logging.info(
            "Model %s version %d is live after %d warmup requests", name, version, replayed
        )

    def _set_status(self, name: str, status: VersionStatus) -> None:
        with self._lock:
            self._statuses[name][status.version] = status

    def servable(self, name: str, version: int | None = None, label: str = "") -> LoadedVersion:
        """Return the live version a request names: the highest live one when `version` is None.

        Raises:
            RequestError: NOT_FOUND for an unknown model, version or label.
        """
        if label:
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"version label '{label}' of model '{name}' is not defined: the local server "
                "has no version labels; request a version number or none for the latest",
            )
        with self._lock:
            live = self._live.get(name)
            if live is None:
                raise RequestError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Servable not found for request: {_request_name(name, version)}; "
                    f"served models are {list(self._model_names)}",
                )
            chosen = max(live, default=None) if version is None else version
            if chosen not in live:
                raise RequestError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Servable not found for request: {_request_name(name, version)}; "
                    f"live versions of '{name}' are {sorted(live)}",
                )
            return live[chosen]

    def statuses(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Return version states, newest first, as GetModelStatus does.

        Raises:
            RequestError: NOT_FOUND for an unknown model or version.
        """
        with self._lock:
            known = self._statuses.get(name)
            if not known:
                raise RequestError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Could not find any versions of model {name}; served models are "
                    f"{list(self._model_names)} under {self._base_dir}",
                )
            if version is not None:
                if version not in known:
                    raise RequestError(
                        grpc.StatusCode.NOT_FOUND,
                        f"Could not find version {version} of model {name}; known versions "
                        f"are {sorted(known)}",
                    )
                return [dataclasses.replace(known[version])]
            return [dataclasses.replace(known[v]) for v in sorted(known, reverse=True)]


def _request_name(name: str, version: int | None) -> str:
    # The form TF Serving prints in its NOT_FOUND messages.
    return f"Latest({name})" if version is None else f"Specific({name}, {version})"


def _replay_warmup(loaded: LoadedVersion) -> int:
    path = warmup.warmup_path(loaded.path)
    if not path.is_file():
        return 0

    def predict(request):
        response, _ = loaded.predict(request)
        return response

    return warmup.replay_warmup(warmup.read_warmup_file(path), predict)


def _load_error(error: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(error, RequestError):
        return error.code, f"warmup request failed: {error.message}"
    if isinstance(error, tf.errors.OpError):
        return status_from_tf_error(error), error.message
    return grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}"
