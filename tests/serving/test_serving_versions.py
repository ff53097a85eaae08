"""Version handling of the local server: polling, policies, load failures, load under traffic."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
import serving_testdata
import tensorflow as tf
from serving_testdata import install_version
from tensorflow_serving.apis import get_model_status_pb2, prediction_log_pb2

from serving import config, warmup
from serving.client import ServingClient, ServingError
from serving.servable import RequestError, load_version
from serving.server import LocalModelServer
from transforms import features

RANKING = features.RANKING_MODEL_NAME


def _wait_for_state(local: LocalModelServer, version: int, state: str, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            statuses = local.manager.statuses(RANKING, version)
        except RequestError:  # NOT_FOUND until the poller has seen the version
            statuses = []
        if statuses and _state_name(statuses[0].state) == state:
            return
        time.sleep(0.02)
    raise TimeoutError(f"ranking version {version} did not reach {state} in {timeout_s} s")


def _state_name(state: int) -> str:
    return get_model_status_pb2.ModelVersionStatus.State.Name(state)


def test_new_version_replaces_old(local_server, client, model_base_dir, prebuilt_versions):
    install_version(prebuilt_versions["ranking_2"], model_base_dir / RANKING, 2)

    local_server.poll_now()
    scores, version = client.predict(["u1"], ["i2"])
    statuses = client.model_status(RANKING)

    # Version 2 multiplies every score by 10: u1 . i2 = 3 -> 30.
    assert version == 2
    np.testing.assert_array_equal(scores, [30.0])
    assert [(s.version, s.state, s.error_code) for s in statuses] == [
        (2, "AVAILABLE", "OK"),
        (1, "END", "OK"),
    ]


def test_requested_version_served_when_kept(model_base_dir, prebuilt_versions):
    install_version(prebuilt_versions["ranking_2"], model_base_dir / RANKING, 2)
    policy = config.VersionPolicy(num_versions=2)

    with (
        LocalModelServer(model_base_dir, version_policy=policy) as local,
        ServingClient(local.target) as client,
    ):
        old_scores, old_version = client.predict(["u2"], ["i1"], version=1)
        new_scores, new_version = client.predict(["u2"], ["i1"])

    # u2 . i1 = 2 in version 1, 20 in version 2.
    assert (old_version, new_version) == (1, 2)
    np.testing.assert_array_equal(old_scores, [2.0])
    np.testing.assert_array_equal(new_scores, [20.0])


def test_old_version_serves_while_new_loads(model_base_dir, prebuilt_versions):
    release = threading.Event()

    def slow_loader(name, version, path):
        if version == 2:
            release.wait(timeout=120)
        return load_version(name, version, path)

    with (
        LocalModelServer(model_base_dir, poll_interval_s=0.05, loader=slow_loader) as local,
        ServingClient(local.target) as client,
    ):
        install_version(prebuilt_versions["ranking_2"], model_base_dir / RANKING, 2)
        _wait_for_state(local, 2, "LOADING")
        _, version_while_loading = client.predict(["u1"], ["i1"])
        status_while_loading = client.model_status(RANKING, version=2)
        release.set()
        _wait_for_state(local, 2, "AVAILABLE")
        _, version_after = client.predict(["u1"], ["i1"])

    assert version_while_loading == 1
    assert status_while_loading[0].state == "LOADING"
    assert version_after == 2


def test_broken_version_keeps_old_serving(local_server, client, model_base_dir, prebuilt_versions):
    broken = install_version(prebuilt_versions["ranking_2"], model_base_dir / RANKING, 2)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")

    local_server.poll_now()
    _, version = client.predict(["u1"], ["i1"])
    status = client.model_status(RANKING, version=2)[0]

    assert version == 1
    assert status.state == "END"
    assert status.error_code != "OK"
    assert status.error_message != ""


def test_failing_warmup_blocks_version(local_server, client, model_base_dir, prebuilt_versions):
    staged = model_base_dir / "staging"
    install_version(prebuilt_versions["ranking_2"], staged, 2)
    bad_request = warmup.build_predict_request(
        RANKING,
        features.PREDICT_SIGNATURE,
        {
            features.USER_ID: np.array([7], dtype=np.int64),
            features.ITEM_ID: np.array([b"i1"], dtype=object),
        },
    )
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.CopyFrom(bad_request)
    warmup.write_warmup_file(staged / "2", [log])
    (staged / "2").rename(model_base_dir / RANKING / "2")

    local_server.poll_now()
    _, version = client.predict(["u1"], ["i1"])
    status = client.model_status(RANKING, version=2)[0]

    assert version == 1
    assert status.state == "END"
    assert status.error_code == "INVALID_ARGUMENT"
    assert status.error_message == (
        "warmup request failed: input 'user_id' has dtype DT_INT64, but signature 'predict' "
        "expects user_id: DT_STRING [-1]"
    )


def test_incomplete_folders_are_ignored(local_server, client, model_base_dir):
    (model_base_dir / RANKING / "3").mkdir()
    (model_base_dir / RANKING / ".tmp-4").mkdir()
    (model_base_dir / RANKING / "latest").mkdir()

    local_server.poll_now()
    statuses = client.model_status(RANKING)

    assert [(s.version, s.state) for s in statuses] == [(1, "AVAILABLE")]


def test_model_without_versions_is_not_found(tmp_path):
    with (
        LocalModelServer(tmp_path) as local,
        ServingClient(local.target) as client,
        pytest.raises(ServingError) as raised,
    ):
        client.model_status(RANKING)

    assert raised.value.code == grpc.StatusCode.NOT_FOUND
    assert raised.value.details == (
        f"Could not find any versions of model ranking; served models are "
        f"['ranking', 'retrieval'] under {tmp_path}"
    )


CLIENTS = 8
REQUESTS_PER_PHASE = 20


def test_load_with_version_pushed_mid_run(model_base_dir, prebuilt_versions):
    """8 clients send 60 requests each; version 2 is pushed after every client sent 20.

    Requests 21-40 run while version 2 is copied in and loaded; request 41 of each client
    waits until version 2 is live, so version 2 must serve all of requests 41-60.
    """
    completed = 0
    completed_lock = threading.Lock()
    start_push = threading.Event()
    new_version_live = threading.Event()

    def run_client(_: int) -> tuple[list[tuple[int, float]], list[ServingError]]:
        nonlocal completed
        answers, failures = [], []
        with ServingClient(local.target, timeout_s=30.0) as client:
            for request_number in range(3 * REQUESTS_PER_PHASE):
                if request_number == 2 * REQUESTS_PER_PHASE:
                    new_version_live.wait(timeout=120)
                try:
                    scores, version = client.predict(["u1"], ["i2"])
                    answers.append((version, float(scores[0])))
                except ServingError as error:
                    failures.append(error)
                with completed_lock:
                    completed += 1
                    if completed == CLIENTS * REQUESTS_PER_PHASE:
                        start_push.set()
        return answers, failures

    def push() -> None:
        start_push.wait(timeout=120)
        install_version(prebuilt_versions["ranking_2"], model_base_dir / RANKING, 2)
        _wait_for_state(local, 2, "AVAILABLE")
        new_version_live.set()

    with LocalModelServer(model_base_dir, poll_interval_s=0.05) as local:
        with futures.ThreadPoolExecutor(CLIENTS + 1) as pool:
            pusher = pool.submit(push)
            results = list(pool.map(run_client, range(CLIENTS)))
            pusher.result()
        counters = local.counters()

    # u1 . i2 = 3 in version 1 and 30 in version 2.
    expected_score = {1: 3.0, 2: 30.0}
    for answers, failures in results:
        versions = [version for version, _ in answers]
        assert failures == []
        assert len(answers) == 3 * REQUESTS_PER_PHASE
        assert all(score == expected_score[version] for version, score in answers)
        assert versions[:REQUESTS_PER_PHASE] == [1] * REQUESTS_PER_PHASE
        assert versions[2 * REQUESTS_PER_PHASE :] == [2] * REQUESTS_PER_PHASE
        assert versions == sorted(versions)
    assert counters["requests"]["ranking/Predict"] == CLIENTS * 3 * REQUESTS_PER_PHASE
    assert counters["errors"] == {}


def test_serving_default_version_from_standin(prebuilt_versions):
    loaded = load_version(RANKING, 1, prebuilt_versions["ranking_1"])
    request = warmup.build_predict_request(
        RANKING,
        features.SERVING_DEFAULT_SIGNATURE,
        {features.SERVING_EXAMPLES_INPUT: warmup.serialize_examples(serving_testdata.EXAMPLE_ROWS)},
    )

    response, id_counts = loaded.predict(request)

    # u1 . i2 = 3, u2 . i3 = 1
    scores = tf.make_ndarray(response.outputs[features.SCORE_OUTPUT])
    np.testing.assert_array_equal(scores, [3.0, 1.0])
    assert loaded.unseen_id_keys == (features.ITEM_ID, features.USER_ID)
    assert id_counts.unseen == {features.USER_ID: 0, features.ITEM_ID: 0}
