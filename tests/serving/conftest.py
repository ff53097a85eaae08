"""Fixtures of the serving tests: stand-in model versions, a local server, a client, and
the real `tensorflow_model_server` when it is on PATH.

Stand-in versions are built once per session and copied into each test's own base folder,
so a test may push or break versions freely. Every server binds 127.0.0.1 on a free port
and is stopped by its fixture.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import subprocess
import time

import portpicker
import pytest
import serving_testdata

from serving import client as serving_client
from serving import config, history, server, standin_models, warmup
from transforms import features

TF_SERVING_BINARY = "tensorflow_model_server"


@pytest.fixture(scope="session")
def prebuilt_versions(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Stand-in version folders with warmup records: ranking 1 and 2, retrieval 1."""
    root = tmp_path_factory.mktemp("prebuilt")
    folders = {
        "ranking_1": standin_models.write_ranking_model(
            root / "ranking_1", serving_testdata.spec()
        ),
        "ranking_2": standin_models.write_ranking_model(
            root / "ranking_2", serving_testdata.spec(serving_testdata.VERSION_2_SCALE)
        ),
        "retrieval_1": standin_models.write_retrieval_model(
            root / "retrieval_1", serving_testdata.spec()
        ),
    }
    for key, folder in folders.items():
        model_name = key.rsplit("_", 1)[0]
        logs = warmup.build_warmup_logs(folder, model_name, serving_testdata.EXAMPLE_ROWS)
        warmup.write_warmup_file(folder, logs)
    history.write_user_history(history.history_path(folders["retrieval_1"]), {"u1": ["i2"]})
    return folders


@pytest.fixture
def model_base_dir(tmp_path, prebuilt_versions) -> pathlib.Path:
    """A base folder with ranking/1 and retrieval/1."""
    base = tmp_path / "models"
    serving_testdata.install_version(
        prebuilt_versions["ranking_1"], base / features.RANKING_MODEL_NAME, 1
    )
    serving_testdata.install_version(
        prebuilt_versions["retrieval_1"], base / features.RETRIEVAL_MODEL_NAME, 1
    )
    return base


@pytest.fixture
def local_server(model_base_dir):
    """A running local server over `model_base_dir`, polling every 0.1 s."""
    local = server.LocalModelServer(model_base_dir, poll_interval_s=0.1)
    local.start()
    yield local
    local.stop()


@pytest.fixture
def client(local_server):
    with serving_client.ServingClient(local_server.target, timeout_s=20.0) as connected:
        yield connected


@dataclasses.dataclass
class Backend:
    """A running server: its kind, target and, for the local server, the server object."""

    kind: str
    target: str
    local: server.LocalModelServer | None = None


def _wait_until_available(target: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    with serving_client.ServingClient(target, timeout_s=5.0) as probe:
        for model in (features.RANKING_MODEL_NAME, features.RETRIEVAL_MODEL_NAME):
            while True:
                try:
                    states = [status.state for status in probe.model_status(model)]
                except serving_client.ServingError:
                    states = []
                if "AVAILABLE" in states:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{model} not AVAILABLE on {target} after {timeout_s} s")
                time.sleep(0.5)


@pytest.fixture
def tf_serving_target(model_base_dir, tmp_path):
    """`host:port` of a real tensorflow_model_server over `model_base_dir`; skips without it."""
    binary = shutil.which(TF_SERVING_BINARY)
    if binary is None:
        pytest.skip(
            f"{TF_SERVING_BINARY} is not on PATH: TF Serving ships as the tensorflow/serving "
            "image or its own apt repository, not from PyPI; only the local server is tested"
        )
    config_file = tmp_path / config.MODEL_CONFIG_FILE
    config_file.write_text(config.model_config_text(str(model_base_dir)), encoding="utf-8")
    port = portpicker.pick_unused_port()
    process = subprocess.Popen(
        [
            binary,
            f"--port={port}",
            "--rest_api_port=0",
            f"--model_config_file={config_file}",
            "--file_system_poll_wait_seconds=1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    target = f"127.0.0.1:{port}"
    try:
        _wait_until_available(target)
        yield target
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(params=["local", TF_SERVING_BINARY])
def backend(request, model_base_dir):
    """Each request-case test runs on the local server and on TF Serving when present."""
    if request.param == "local":
        local = request.getfixturevalue("local_server")
        return Backend("local", local.target, local)
    return Backend(TF_SERVING_BINARY, request.getfixturevalue("tf_serving_target"))


@pytest.fixture
def backend_client(backend):
    with serving_client.ServingClient(backend.target, timeout_s=20.0) as connected:
        yield connected
