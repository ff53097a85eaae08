"""Serving request cases through the gRPC client, on the local server and on TF Serving.

Status codes are checked on both servers. The local server's own messages are checked
word for word; the client's message, which adds the signature's expected inputs from
GetModelMetadata, is checked on both.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import serving_testdata
import tensorflow as tf
from serving_testdata import ITEM_EMBEDDINGS, ITEMS, USER_EMBEDDINGS, USERS
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

from serving import warmup
from serving.client import ServingError
from transforms import features

RANKING = features.RANKING_MODEL_NAME
RETRIEVAL = features.RETRIEVAL_MODEL_NAME
PREDICT = features.PREDICT_SIGNATURE
RETRIEVE = features.RETRIEVE_SIGNATURE

# (model, signature, the other inputs the signature needs besides user_id)
USER_ID_SIGNATURES = [
    (RANKING, PREDICT, {features.ITEM_ID: np.array([b"i1"], dtype=object)}),
    (RETRIEVAL, RETRIEVE, {}),
]
EXPECTED_INPUTS = {
    PREDICT: "item_id: DT_STRING [-1], user_id: DT_STRING [-1]",
    RETRIEVE: "user_id: DT_STRING [-1]",
}


def _send_error(client, model, signature, inputs) -> ServingError:
    with pytest.raises(ServingError) as raised:
        client.predict_inputs(model, signature, inputs)
    return raised.value


@pytest.mark.parametrize(("model", "signature", "other_inputs"), USER_ID_SIGNATURES)
def test_scalar_user_id_names_expected_shape(
    backend, backend_client, model, signature, other_inputs
):
    inputs = {features.USER_ID: np.array(b"u1", dtype=object), **other_inputs}

    error = _send_error(backend_client, model, signature, inputs)

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.expected == EXPECTED_INPUTS[signature]
    assert "user_id: DT_STRING []" in error.sent
    if backend.kind == "local":
        assert error.details == (
            f"input 'user_id' has shape [], but signature '{signature}' expects "
            "user_id: DT_STRING [-1]; send a batch, e.g. shape [1] for one id"
        )


@pytest.mark.parametrize(("model", "signature", "other_inputs"), USER_ID_SIGNATURES)
def test_input_named_user_names_expected_inputs(
    backend, backend_client, model, signature, other_inputs
):
    inputs = {"user": np.array([b"u1"], dtype=object), **other_inputs}

    error = _send_error(backend_client, model, signature, inputs)

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.expected == EXPECTED_INPUTS[signature]
    assert str(error).endswith(f"The signature expects inputs {{{EXPECTED_INPUTS[signature]}}}")
    if backend.kind == "local":
        sent = sorted(["user", *other_inputs])
        assert error.details == (
            f"inputs {sent} do not match signature '{signature}', which expects inputs "
            f"{{{EXPECTED_INPUTS[signature]}}}; missing ['user_id'], unexpected ['user']"
        )


@pytest.mark.parametrize(("model", "signature", "other_inputs"), USER_ID_SIGNATURES)
def test_int64_user_id_names_expected_dtype(
    backend, backend_client, model, signature, other_inputs
):
    inputs = {features.USER_ID: np.array([7], dtype=np.int64), **other_inputs}

    error = _send_error(backend_client, model, signature, inputs)

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "user_id: DT_INT64 [1]" in error.sent
    assert error.expected == EXPECTED_INPUTS[signature]
    if backend.kind == "local":
        assert error.details == (
            f"input 'user_id' has dtype DT_INT64, but signature '{signature}' expects "
            "user_id: DT_STRING [-1]"
        )


def test_empty_batch_answers_empty(backend, backend_client):
    scores, version = backend_client.predict([], [])
    retrieval = backend_client.retrieve([])
    embeddings = backend_client.query_embedding([])

    assert scores.shape == (0,)
    assert scores.dtype == np.float32
    assert version == 1
    assert retrieval.item_ids.shape == (0, 3)
    assert retrieval.scores.shape == (0, 3)
    assert embeddings.shape == (0, 2)


def test_batch_of_one_scores(backend, backend_client):
    # u1 . i2 = [1, 0] . [3, -1] = 3
    scores, _ = backend_client.predict(["u1"], ["i2"])
    retrieval = backend_client.retrieve(["u2"])

    np.testing.assert_array_equal(scores, [3.0])
    assert retrieval.item_ids.tolist() == [serving_testdata.TOP_ITEMS_V1["u2"]]
    np.testing.assert_array_equal(retrieval.scores, [serving_testdata.TOP_SCORES_V1["u2"]])


def _reference_rows(ids, tokens, table):
    # NumPy reference of the vocabulary lookup: unseen ids take the last (OOV) row.
    index = {token: i for i, token in enumerate(tokens)}
    return table[[index.get(value, len(tokens)) for value in ids]]


def test_batch_of_thousand_matches_numpy(backend, backend_client):
    rng = np.random.default_rng(7)
    user_pool = [*USERS, "never-seen", ""]
    user_ids = [user_pool[i] for i in rng.integers(len(user_pool), size=1000)]
    item_ids = [ITEMS[i] for i in rng.integers(len(ITEMS), size=1000)]
    users = _reference_rows(user_ids, USERS, USER_EMBEDDINGS)
    expected_scores = np.sum(users * _reference_rows(item_ids, ITEMS, ITEM_EMBEDDINGS), axis=1)
    expected_top = np.argsort(-(users @ ITEM_EMBEDDINGS[:3].T), axis=1, kind="stable")

    scores, _ = backend_client.predict(user_ids, item_ids)
    retrieval = backend_client.retrieve(user_ids)

    np.testing.assert_allclose(scores, expected_scores, rtol=1e-6)
    assert retrieval.item_ids.tolist() == np.array(ITEMS)[expected_top].tolist()


def test_unknown_signature_is_failed_precondition(backend, backend_client):
    inputs = {features.USER_ID: np.array([b"u1"], dtype=object)}

    error = _send_error(backend_client, RETRIEVAL, "recommend", inputs)

    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    if backend.kind == "local":
        assert error.details == (
            "Serving signature key \"recommend\" not found in model 'retrieval' version 1; "
            "its signatures are ['query_embedding', 'retrieve']"
        )


def test_unknown_model_is_not_found(backend, backend_client):
    inputs = {features.USER_ID: np.array([b"u1"], dtype=object)}

    predict_error = _send_error(backend_client, "ranker", PREDICT, inputs)
    with pytest.raises(ServingError) as status_error:
        backend_client.model_status("ranker")
    with pytest.raises(ServingError) as metadata_error:
        backend_client.model_metadata("ranker")

    assert predict_error.code == grpc.StatusCode.NOT_FOUND
    assert status_error.value.code == grpc.StatusCode.NOT_FOUND
    assert metadata_error.value.code == grpc.StatusCode.NOT_FOUND
    if backend.kind == "local":
        assert predict_error.details == (
            "Servable not found for request: Latest(ranker); served models are "
            "['ranking', 'retrieval']"
        )


def test_unknown_version_is_not_found(backend, backend_client):
    with pytest.raises(ServingError) as predict_error:
        backend_client.predict(["u1"], ["i1"], version=9)
    with pytest.raises(ServingError) as status_error:
        backend_client.model_status(RANKING, version=9)

    assert predict_error.value.code == grpc.StatusCode.NOT_FOUND
    assert status_error.value.code == grpc.StatusCode.NOT_FOUND
    if backend.kind == "local":
        assert predict_error.value.details == (
            "Servable not found for request: Specific(ranking, 9); live versions of "
            "'ranking' are [1]"
        )
        assert status_error.value.details == (
            "Could not find version 9 of model ranking; known versions are [1]"
        )


def test_unseen_and_empty_ids_get_oov_answer(backend, backend_client):
    unseen = ["nobody", "", "   ", "u1 "]
    oov = serving_testdata.OOV_USER_SCORES_V1

    scores, _ = backend_client.predict(unseen, ["i1"] * len(unseen))
    retrieval = backend_client.retrieve(unseen)

    np.testing.assert_array_equal(scores, [oov["i1"]] * len(unseen))
    assert retrieval.item_ids.tolist() == [serving_testdata.TOP_ITEMS_V1[None]] * len(unseen)
    np.testing.assert_array_equal(retrieval.scores, [serving_testdata.TOP_SCORES_V1[None]] * 4)
    if backend.kind == "local":
        counters = backend.local.counters()
        # 4 unseen user ids per request, 2 of them empty or whitespace-only; item ids all seen.
        assert counters["unseen_ids"]["ranking/user_id"] == 4
        assert counters["unseen_ids"]["ranking/item_id"] == 0
        assert counters["missing_ids"]["ranking/user_id"] == 2
        assert counters["unseen_ids"]["retrieval/user_id"] == 4
        assert counters["missing_ids"]["retrieval/user_id"] == 2


def test_odd_user_id_served_exactly(backend, backend_client):
    user = serving_testdata.ODD_USER

    scores, _ = backend_client.predict([user] * 3, list(ITEMS))

    np.testing.assert_array_equal(scores, [3.0, 2.0, 0.0])
    if backend.kind == "local":
        assert backend.local.counters()["unseen_ids"]["ranking/user_id"] == 0


def test_serving_default_scores_examples(backend, backend_client):
    rows = {"user_id": ["u1", "u2", "stranger"], "item_id": ["i2", "i3", "i1"]}
    examples = warmup.serialize_examples(rows)

    response = backend_client.predict_inputs(
        RANKING,
        features.SERVING_DEFAULT_SIGNATURE,
        {features.SERVING_EXAMPLES_INPUT: examples},
    )

    # u1 . i2 = 3, u2 . i3 = 1, OOV . i1 = 1.5
    scores = tf.make_ndarray(response.outputs[features.SCORE_OUTPUT])
    np.testing.assert_array_equal(scores, [3.0, 1.0, 1.5])
    if backend.kind == "local":
        assert backend.local.counters()["unseen_ids"]["ranking/user_id"] == 1


def test_batch_sizes_must_agree(local_server, client):
    inputs = {
        features.USER_ID: np.array([b"u1", b"u2"], dtype=object),
        features.ITEM_ID: np.array([b"i1"], dtype=object),
    }

    error = _send_error(client, RANKING, PREDICT, inputs)

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details == (
        "inputs of signature 'predict' have different batch sizes {'item_id': 1, 'user_id': 2}; "
        "send the same number of rows in each"
    )


def test_counters_count_requests_and_errors(local_server, client):
    client.predict(["u1"], ["i1"])
    with pytest.raises(ServingError):
        client.predict_inputs(
            RETRIEVAL, "nope", {features.USER_ID: np.array([b"u1"], dtype=object)}
        )

    counters = local_server.counters()

    assert counters["requests"]["ranking/Predict"] == 1
    assert counters["requests"]["retrieval/Predict"] == 1
    assert counters["errors"] == {"retrieval/FAILED_PRECONDITION": 1}


def test_metadata_lists_signatures(backend, backend_client):
    ranking = backend_client.model_metadata(RANKING)
    retrieval = backend_client.model_metadata(RETRIEVAL)

    assert sorted(ranking) == [PREDICT, features.SERVING_DEFAULT_SIGNATURE]
    assert sorted(retrieval) == [features.QUERY_EMBEDDING_SIGNATURE, RETRIEVE]
    assert sorted(retrieval[RETRIEVE].outputs) == [
        features.TOP_ITEM_IDS_OUTPUT,
        features.TOP_SCORES_OUTPUT,
    ]


def test_unknown_output_filter_rejected(local_server, client):
    request = warmup.build_predict_request(
        RETRIEVAL, RETRIEVE, {features.USER_ID: np.array([b"u1"], dtype=object)}
    )
    request.output_filter.append("logits")

    with pytest.raises(ServingError) as raised:
        client.send_predict_request(request)

    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details == (
        "output_filter names ['logits'], which signature 'retrieve' does not return; "
        "its outputs are ['item_ids', 'scores']"
    )


def test_output_filter_keeps_named_outputs(local_server, client):
    request = warmup.build_predict_request(
        RETRIEVAL, RETRIEVE, {features.USER_ID: np.array([b"u1"], dtype=object)}
    )
    request.output_filter.append(features.TOP_ITEM_IDS_OUTPUT)

    response = client.send_predict_request(request)

    assert list(response.outputs) == [features.TOP_ITEM_IDS_OUTPUT]
    assert tf.make_ndarray(response.outputs[features.TOP_ITEM_IDS_OUTPUT]).tolist() == [
        [b"i2", b"i1", b"i3"]
    ]


def test_metadata_field_must_be_signature_def(local_server):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = RANKING
    request.metadata_field.append("graph")

    with grpc.insecure_channel(local_server.target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetModelMetadata(request, timeout=10)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == (
        "metadata_field ['graph'] is not supported: request ['signature_def']"
    )
