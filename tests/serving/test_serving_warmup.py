"""Warmup records: built for every signature, written, parsed as PredictionLog, replayed."""

from __future__ import annotations

import numpy as np
import pytest
import serving_testdata
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from serving import warmup
from transforms import features

RANKING = features.RANKING_MODEL_NAME
RETRIEVAL = features.RETRIEVAL_MODEL_NAME


def test_logs_cover_every_signature(prebuilt_versions):
    ranking = warmup.build_warmup_logs(
        prebuilt_versions["ranking_1"], RANKING, serving_testdata.EXAMPLE_ROWS
    )
    retrieval = warmup.build_warmup_logs(
        prebuilt_versions["retrieval_1"], RETRIEVAL, serving_testdata.EXAMPLE_ROWS
    )

    ranking_requests = [log.predict_log.request for log in ranking]
    retrieval_requests = [log.predict_log.request for log in retrieval]
    assert [r.model_spec.signature_name for r in ranking_requests] == [
        features.PREDICT_SIGNATURE,
        features.SERVING_DEFAULT_SIGNATURE,
    ]
    assert [r.model_spec.signature_name for r in retrieval_requests] == [
        features.QUERY_EMBEDDING_SIGNATURE,
        features.RETRIEVE_SIGNATURE,
    ]
    assert {r.model_spec.name for r in ranking_requests} == {RANKING}
    predict_inputs = ranking_requests[0].inputs
    assert tf.make_ndarray(predict_inputs[features.USER_ID]).tolist() == [b"u1", b"u2"]
    assert tf.make_ndarray(predict_inputs[features.ITEM_ID]).tolist() == [b"i2", b"i3"]


def test_examples_input_holds_tf_examples(prebuilt_versions):
    logs = warmup.build_warmup_logs(
        prebuilt_versions["ranking_1"], RANKING, serving_testdata.EXAMPLE_ROWS
    )

    serialized = tf.make_ndarray(
        logs[1].predict_log.request.inputs[features.SERVING_EXAMPLES_INPUT]
    )
    examples = [tf.train.Example.FromString(record) for record in serialized]

    user_ids = [e.features.feature[features.USER_ID].bytes_list.value[0] for e in examples]
    item_ids = [e.features.feature[features.ITEM_ID].bytes_list.value[0] for e in examples]
    assert user_ids == [b"u1", b"u2"]
    assert item_ids == [b"i2", b"i3"]


def test_written_file_parses_back(tmp_path, prebuilt_versions):
    logs = warmup.build_warmup_logs(
        prebuilt_versions["ranking_1"], RANKING, serving_testdata.EXAMPLE_ROWS
    )

    path = warmup.write_warmup_file(tmp_path, logs)
    parsed = warmup.read_warmup_file(path)

    assert path == tmp_path / "assets.extra" / "tf_serving_warmup_requests"
    assert parsed == logs


def test_prebuilt_records_replay_through_grpc(local_server, client, model_base_dir):
    replayed = {}
    responses = []

    def send(request):
        response = client.send_predict_request(request)
        responses.append(response)
        return response

    for model in (RANKING, RETRIEVAL):
        path = warmup.warmup_path(model_base_dir / model / "1")
        replayed[model] = warmup.replay_warmup(warmup.read_warmup_file(path), send)

    assert replayed == {RANKING: 2, RETRIEVAL: 2}
    # Ranking predict and serving_default both score (u1, i2) = 3 and (u2, i3) = 1.
    for response in responses[:2]:
        scores = tf.make_ndarray(response.outputs[features.SCORE_OUTPUT])
        np.testing.assert_array_equal(scores, [3.0, 1.0])
    # query_embedding returns the user rows u1 = [1, 0] and u2 = [0, 1].
    embeddings = tf.make_ndarray(responses[2].outputs[features.QUERY_EMBEDDING_OUTPUT])
    np.testing.assert_array_equal(embeddings, [[1.0, 0.0], [0.0, 1.0]])
    # The server's own warmup at load bypasses the RPC counters: only the replays count.
    assert local_server.counters()["requests"]["ranking/Predict"] == 2


def test_missing_example_column_is_named(prebuilt_versions):
    with pytest.raises(ValueError) as raised:
        warmup.build_warmup_logs(prebuilt_versions["ranking_1"], RANKING, {"user_id": ["u1"]})

    assert str(raised.value) == (
        "signature 'predict' input 'item_id' has no example value; example_inputs has "
        "['user_id']: add a column named 'item_id'"
    )


def _write_records(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def test_unparsable_record_is_rejected(tmp_path):
    path = tmp_path / "warmup"
    _write_records(path, [b"\xff\xff\xff"])

    with pytest.raises(ValueError) as raised:
        warmup.read_warmup_file(path)

    assert str(raised.value).startswith(f"{path}: record 0 is not a PredictionLog: ")


def test_record_without_log_type_is_rejected(tmp_path):
    path = tmp_path / "warmup"
    _write_records(path, [prediction_log_pb2.PredictionLog().SerializeToString()])

    with pytest.raises(ValueError) as raised:
        warmup.read_warmup_file(path)

    assert str(raised.value) == f"{path}: record 0 is a PredictionLog with no log type set"


def test_more_than_tf_serving_limit_rejected(tmp_path):
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.model_spec.name = RANKING

    with pytest.raises(ValueError) as raised:
        warmup.write_warmup_file(tmp_path, [log] * 1001)

    assert str(raised.value) == "1001 warmup records given; TF Serving reads at most 1000"


def test_classify_log_not_replayed():
    log = prediction_log_pb2.PredictionLog()
    log.classify_log.request.model_spec.name = RANKING

    with pytest.raises(ValueError) as raised:
        warmup.replay_warmup([log], lambda request: None)

    assert str(raised.value) == "warmup record 0 is a classify_log; only predict_log is replayed"


def test_serialize_examples_rejects_other_types():
    with pytest.raises(ValueError) as raised:
        warmup.serialize_examples({"user_id": [None]})

    assert str(raised.value) == (
        "example feature 'user_id' has value None of type NoneType: use str, bytes, int or float"
    )
