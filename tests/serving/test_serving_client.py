"""Client behaviour: retries and deadlines, recommend, user history, TLS, commands."""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import random
import threading

import grpc
import portpicker
import pytest
import serving_testdata
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from serving_testdata import install_version

from serving import commands, history, standin_models
from serving.client import RetryPolicy, ServingClient, ServingError, call_with_retries
from serving.server import LocalModelServer, TlsFiles
from transforms import features


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _failing_then(results):
    """A fake send that raises or returns `results` in order, recording its timeouts."""
    timeouts = []

    def send(timeout):
        timeouts.append(timeout)
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    return send, timeouts


UNAVAILABLE = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")
NO_JITTER = RetryPolicy(max_attempts=4, initial_backoff_s=0.1, multiplier=2.0, jitter=0.0)


def test_unavailable_retried_with_backoff():
    clock = FakeClock()
    send, timeouts = _failing_then([UNAVAILABLE, UNAVAILABLE, "answer"])

    result = call_with_retries(
        send, timeout_s=10.0, policy=NO_JITTER, describe=str, clock=clock, sleep=clock.sleep
    )

    # Backoff 0.1 then 0.2; each attempt gets what is left of the 10 s deadline.
    assert result == "answer"
    assert clock.sleeps == pytest.approx([0.1, 0.2])
    assert timeouts == pytest.approx([10.0, 9.9, 9.7])


def test_backoff_capped_and_jittered():
    policy = RetryPolicy(initial_backoff_s=0.5, multiplier=3.0, max_backoff_s=2.0, jitter=0.2)
    rng = random.Random(3)

    waits = [policy.backoff_s(attempt, rng) for attempt in (1, 2, 3)]

    # Bases 0.5, 1.5, min(4.5, 2.0) = 2.0, each scaled into [0.8, 1.0] of itself.
    reference = random.Random(3)
    expected = [base * (1 - 0.2 * reference.random()) for base in (0.5, 1.5, 2.0)]
    assert waits == pytest.approx(expected)


def test_retries_stop_after_max_attempts():
    clock = FakeClock()
    send, _ = _failing_then([UNAVAILABLE] * 4)

    with pytest.raises(ServingError) as raised:
        call_with_retries(
            send,
            timeout_s=10.0,
            policy=NO_JITTER,
            describe=lambda: "Predict on model 'ranking'",
            clock=clock,
            sleep=clock.sleep,
        )

    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert raised.value.attempts == 4
    assert str(raised.value) == (
        "Predict on model 'ranking' failed with UNAVAILABLE after 4 attempt(s): connection refused"
    )


def test_other_codes_not_retried():
    clock = FakeClock()
    invalid = FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad input")
    send, timeouts = _failing_then([invalid, "never reached"])

    with pytest.raises(ServingError) as raised:
        call_with_retries(
            send, timeout_s=10.0, policy=NO_JITTER, describe=str, clock=clock, sleep=clock.sleep
        )

    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(timeouts) == 1
    assert clock.sleeps == []


def test_deadline_bounds_retries():
    clock = FakeClock()
    send, timeouts = _failing_then([UNAVAILABLE] * 3)

    with pytest.raises(ServingError) as raised:
        call_with_retries(
            send,
            timeout_s=0.25,
            policy=NO_JITTER,
            describe=lambda: "GetModelStatus",
            clock=clock,
            sleep=clock.sleep,
        )

    # Waits 0.1, then min(0.2, 0.15 left) = 0.15; then no time is left for attempt 3.
    assert clock.sleeps == pytest.approx([0.1, 0.15])
    assert timeouts == pytest.approx([0.25, 0.15])
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert str(raised.value) == (
        "GetModelStatus failed with DEADLINE_EXCEEDED after 2 attempt(s): deadline of 0.25 s passed"
    )


def test_client_waits_for_server_to_come_up(model_base_dir):
    port = portpicker.pick_unused_port()
    local = LocalModelServer(model_base_dir, port=port)
    starter = threading.Timer(0.5, local.start)
    policy = RetryPolicy(max_attempts=100, initial_backoff_s=0.05, max_backoff_s=0.2)

    with ServingClient(f"127.0.0.1:{port}", timeout_s=60.0, retry=policy) as client:
        starter.start()
        try:
            scores, version = client.predict(["u1"], ["i2"])
        finally:
            starter.join()
            local.stop()

    assert client.retries >= 1
    assert scores.tolist() == [3.0]
    assert version == 1


def test_unavailable_error_names_request():
    port = portpicker.pick_unused_port()
    policy = RetryPolicy(max_attempts=2, initial_backoff_s=0.01)

    with (
        ServingClient(f"127.0.0.1:{port}", timeout_s=10.0, retry=policy) as client,
        pytest.raises(ServingError) as raised,
    ):
        client.predict(["u1"], ["i2"])

    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert client.retries == 1
    assert str(raised.value).startswith(
        "Predict on model 'ranking' signature 'predict' with inputs "
        "{item_id: DT_STRING [1], user_id: DT_STRING [1]} failed with UNAVAILABLE after "
        "2 attempt(s): "
    )


@pytest.fixture
def reranking_base_dir(tmp_path, prebuilt_versions):
    """Retrieval version 1 with a ranking model that moves i3 first for u1.

    Ranking item rows: i1 = [1, 2], i2 = [3, -1], i3 = [5, 0], so for u1 = [1, 0] the
    ranking scores are i1 1, i2 3, i3 5, while retrieval orders u1's items i2, i1, i3.
    """
    base = tmp_path / "models"
    items = serving_testdata.ITEM_EMBEDDINGS.copy()
    items[2] = [5, 0]
    spec = standin_models.StandInSpec(
        user_tokens=serving_testdata.USERS,
        item_tokens=serving_testdata.ITEMS,
        user_embeddings=serving_testdata.USER_EMBEDDINGS,
        item_embeddings=items,
    )
    standin_models.write_ranking_model(base / features.RANKING_MODEL_NAME / "1", spec)
    install_version(prebuilt_versions["retrieval_1"], base / features.RETRIEVAL_MODEL_NAME, 1)
    return base


@pytest.fixture
def reranking_client(reranking_base_dir):
    with (
        LocalModelServer(reranking_base_dir) as local,
        ServingClient(local.target) as connected,
    ):
        yield connected


def _pairs(result):
    return [(item.item_id, item.score) for item in result.items]


def test_recommend_reranks_candidates(reranking_client):
    result = reranking_client.recommend("u1", k=2)

    assert _pairs(result) == [("i3", 5.0), ("i2", 3.0)]
    assert (result.retrieval_version, result.ranking_version, result.excluded) == (1, 1, 0)


def test_recommend_ranks_only_num_candidates(reranking_client):
    # Retrieval's top 2 for u1 are i2 and i1; i3 is never ranked.
    result = reranking_client.recommend("u1", k=2, num_candidates=2)

    assert _pairs(result) == [("i2", 3.0), ("i1", 1.0)]


def test_recommend_excludes_history(reranking_client):
    result = reranking_client.recommend("u1", k=3, history={"u1": frozenset({"i3"})})

    assert _pairs(result) == [("i2", 3.0), ("i1", 1.0)]
    assert result.excluded == 1


def test_recommend_with_all_excluded_is_empty(reranking_client):
    result = reranking_client.recommend(
        "u1", k=2, history={"u1": frozenset(serving_testdata.ITEMS)}
    )

    assert result.items == ()
    assert result.excluded == 3


def test_recommend_unseen_user_gets_oov_list(reranking_client):
    # OOV user [0.5, 0.5]: retrieval order i1, i2, i3; ranking i1 1.5, i2 1, i3 2.5.
    result = reranking_client.recommend("nobody", k=3)

    assert _pairs(result) == [("i3", 2.5), ("i1", 1.5), ("i2", 1.0)]


def test_recommend_rejects_k_below_one(client):
    with pytest.raises(ValueError) as raised:
        client.recommend("u1", k=0)

    assert str(raised.value) == "k=0 and num_candidates=None must be at least 1"


def test_history_round_trip(tmp_path):
    path = tmp_path / "history.jsonl"
    odd = serving_testdata.ODD_USER

    history.write_user_history(path, {"u2": ["i3", "i1"], odd: ["x" * 1500]})

    assert history.read_user_history(path) == {
        "u2": frozenset({"i1", "i3"}),
        odd: frozenset({"x" * 1500}),
    }
    assert path.read_text(encoding="utf-8").splitlines()[0] == (
        '{"user_id": "u2", "item_ids": ["i1", "i3"]}'
    )


def test_history_bad_line_is_named(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"user_id": "u1", "item_ids": ["i1"]}\n{"user": "u2"}\n', encoding="utf-8")

    with pytest.raises(ValueError) as raised:
        history.read_user_history(path)

    assert str(raised.value) == (
        f"{path}:2: expected a JSON object with 'user_id' and 'item_ids' keys, "
        "got '{\"user\": \"u2\"}' ('user_id')"
    )


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idpt-test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_path = tmp_path / "server.pem"
    key_path = tmp_path / "server.key"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certificate_path, key_path


def test_tls_server_answers_tls_client_only(model_base_dir, tmp_path):
    certificate, key = _self_signed(tmp_path)
    single_attempt = RetryPolicy(max_attempts=1)

    with LocalModelServer(model_base_dir, tls=TlsFiles(certificate, key)) as local:
        with ServingClient(local.target, root_certificates=certificate.read_bytes()) as secure:
            scores, _ = secure.predict(["u2"], ["i1"])
        with (
            ServingClient(local.target, timeout_s=5.0, retry=single_attempt) as plain,
            pytest.raises(ServingError) as raised,
        ):
            plain.predict(["u2"], ["i1"])

    assert scores.tolist() == [2.0]
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE


def _parse(add_arguments, argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_serve_command_serves_until_stopped(model_base_dir):
    args = _parse(
        commands.add_serve_arguments,
        ["--model-base-dir", str(model_base_dir), "--port", "0", "--poll-interval-s", "0.1"],
    )
    stop = threading.Event()
    started = threading.Event()
    answers = {}

    def on_started(local):
        with ServingClient(local.target) as client:
            answers["scores"] = client.predict(["u1"], ["i1"])[0].tolist()
            answers["host"] = local.target.split(":")[0]
        started.set()
        stop.set()

    exit_code = commands.serve_main(args, stop=stop, on_started=on_started)

    assert exit_code == 0
    assert started.is_set()
    assert answers == {"scores": [1.0], "host": "127.0.0.1"}


def test_serve_command_rejects_half_tls(model_base_dir, tmp_path, capsys):
    certificate, _ = _self_signed(tmp_path)
    args = _parse(
        commands.add_serve_arguments,
        ["--model-base-dir", str(model_base_dir), "--tls-cert", str(certificate)],
    )

    exit_code = commands.serve_main(args, stop=threading.Event())

    assert exit_code == 2
    assert capsys.readouterr().err == "idpt serve: TLS needs both --tls-cert and --tls-key\n"


def test_recommend_command_excludes_served_history(local_server, model_base_dir, capsys):
    # retrieval/1 exports the history {"u1": ["i2"]}, so u1 gets i1 then i3.
    args = _parse(
        commands.add_recommend_arguments,
        [
            "--user",
            "u1",
            "--k",
            "2",
            "--target",
            local_server.target,
            "--model-base-dir",
            str(model_base_dir),
        ],
    )

    exit_code = commands.recommend_main(args)

    assert exit_code == 0
    assert json.loads(capsys.readouterr().out) == {
        "user_id": "u1",
        "items": [{"item_id": "i1", "score": 1.0}, {"item_id": "i3", "score": -1.0}],
        "retrieval_version": 1,
        "ranking_version": 1,
        "excluded_history_items": 1,
    }


def test_recommend_command_reports_unknown_server(capsys):
    port = portpicker.pick_unused_port()
    args = _parse(
        commands.add_recommend_arguments,
        ["--user", "u1", "--target", f"127.0.0.1:{port}", "--timeout-s", "0.5"],
    )

    exit_code = commands.recommend_main(args)

    assert exit_code == 1
    assert capsys.readouterr().err.startswith(
        "idpt recommend: Predict on model 'retrieval' signature 'retrieve' with inputs "
        "{user_id: DT_STRING [1]} failed with "
    )


def test_serving_config_command_writes_files(tmp_path, capsys):
    args = _parse(
        commands.add_serving_config_arguments,
        ["--output", str(tmp_path), "--model-base-path", "gs://bucket/idpt"],
    )

    exit_code = commands.serving_config_main(args)

    names = ["models.config", "batching.config", "monitoring.config", "serving.yaml"]
    assert exit_code == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / name) for name in names]
    assert 'base_path: "gs://bucket/idpt/ranking"' in (tmp_path / "models.config").read_text()
