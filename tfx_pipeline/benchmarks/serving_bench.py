"""Serving latency: gRPC Predict through the local server against the in-process SavedModel.

Builds stand-in ranking and retrieval models (`serving.standin_models`) unless a model base
folder is given, starts the local server on 127.0.0.1, and times, one request at a time:
  - the ranking `predict` signature called in process on the loaded SavedModel;
  - the same inputs sent as a gRPC Predict through `ServingClient`;
  - `ServingClient.recommend` (retrieve, then rank the candidates) end to end.
The difference between the first two is the cost of the protocol, the protos and the
server's input checks. The server is the development stand-in, not TF Serving.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from serving import signatures, standin_models
from serving.client import ServingClient
from serving.manager import versions_on_disk
from serving.server import LocalModelServer
from transforms import features

TITLE = "Serving latency (local gRPC server)"
NOTES = (
    "Milliseconds per request, p50 and p99, for the ranking `predict` signature called in "
    "process and through gRPC Predict on the local development server (loopback, one client "
    "thread), and for `recommend` (retrieve top K, rank them, keep 10) end to end. Stand-in "
    "models: dot-product scores over embedding tables with vocabulary lookups."
)
BATCH_SIZES = (1, 100)
QUICK = {"requests": 30, "users": 1_000, "items": 2_000, "dimension": 32, "top_k": 50}
FULL = {"requests": 500, "users": 20_000, "items": 50_000, "dimension": 64, "top_k": 100}
WARMUP_REQUESTS = 5


def _percentiles_ms(latencies_s: list[float]) -> tuple[float, float]:
    milliseconds = np.array(latencies_s) * 1000.0
    return float(np.percentile(milliseconds, 50)), float(np.percentile(milliseconds, 99))


def _time_calls(call: Callable[[], object], requests: int) -> tuple[float, float]:
    for _ in range(WARMUP_REQUESTS):
        call()
    latencies = []
    for _ in range(requests):
        start = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - start)
    return _percentiles_ms(latencies)


def _tokens(version_dir: pathlib.Path, key: str, prefix: str) -> list[str]:
    # Real models carry Transform's vocabulary assets; fall back to stand-in style ids.
    path = version_dir / "assets" / features.vocabulary_name(key)
    if path.is_file():
        return path.read_text(encoding="utf-8").splitlines()[:10_000] or [""]
    return [f"{prefix}{i}" for i in range(1_000)]


def _predict_inputs(version_dir: pathlib.Path, batch: int, rng) -> dict[str, np.ndarray]:
    """Inputs for every input of the `predict` signature: ids from the vocabulary, zeros else."""
    signature_def = signatures.read_signature_defs(version_dir)[features.PREDICT_SIGNATURE]
    ids = {
        features.USER_ID: _tokens(version_dir, features.USER_ID, "u"),
        features.ITEM_ID: _tokens(version_dir, features.ITEM_ID, "i"),
    }
    inputs = {}
    for name, info in signature_def.inputs.items():
        dtype = tf.dtypes.as_dtype(info.dtype)
        if name in ids:
            chosen = rng.choice(len(ids[name]), size=batch)
            inputs[name] = np.array([ids[name][i].encode("utf-8") for i in chosen], dtype=object)
        elif dtype == tf.string:
            inputs[name] = np.array([b""] * batch, dtype=object)
        else:
            inputs[name] = np.zeros(batch, dtype=dtype.as_numpy_dtype)
    return inputs


def _build_standins(base: pathlib.Path, sizes: dict[str, int]) -> None:
    spec = standin_models.random_spec(
        sizes["users"], sizes["items"], sizes["dimension"], top_k=sizes["top_k"]
    )
    standin_models.write_ranking_model(base / features.RANKING_MODEL_NAME / "1", spec)
    standin_models.write_retrieval_model(base / features.RETRIEVAL_MODEL_NAME / "1", spec)


def _measure(base: pathlib.Path, requests: int) -> dict[str, Any]:
    ranking_dir = base / features.RANKING_MODEL_NAME
    version_dir = ranking_dir / str(max(versions_on_disk(ranking_dir)))
    predict_fn = tf.saved_model.load(str(version_dir)).signatures[features.PREDICT_SIGNATURE]
    rng = np.random.default_rng(0)
    figures: dict[str, Any] = {}

    with LocalModelServer(base) as local, ServingClient(local.target, timeout_s=60.0) as client:
        for batch in BATCH_SIZES:
            inputs = _predict_inputs(version_dir, batch, rng)
            tensors = {name: tf.constant(array) for name, array in inputs.items()}
            in_process = _time_calls(lambda t=tensors: predict_fn(**t), requests)
            grpc_call = _time_calls(
                lambda i=inputs: client.predict_inputs(
                    features.RANKING_MODEL_NAME, features.PREDICT_SIGNATURE, i
                ),
                requests,
            )
            figures[f"predict batch {batch}, in process: p50 ms"] = round(in_process[0], 3)
            figures[f"predict batch {batch}, in process: p99 ms"] = round(in_process[1], 3)
            figures[f"predict batch {batch}, gRPC: p50 ms"] = round(grpc_call[0], 3)
            figures[f"predict batch {batch}, gRPC: p99 ms"] = round(grpc_call[1], 3)

        users = _tokens(version_dir, features.USER_ID, "u")
        user = users[0]
        recommend = _time_calls(lambda: client.recommend(user, 10), requests)
        figures["recommend k=10: p50 ms"] = round(recommend[0], 3)
        figures["recommend k=10: p99 ms"] = round(recommend[1], 3)
    figures["requests per figure"] = requests
    return figures


def run(output_dir: str, quick: bool, model_base_dir: str | None = None) -> dict[str, Any]:
    """Time in-process and gRPC Predict, and recommend, on stand-in or given models.

    Args:
        output_dir: folder for the stand-in models and serving_bench.json.
        quick: fewer requests and smaller stand-in tables.
        model_base_dir: serve these pushed models instead of building stand-ins.

    Returns:
        p50 and p99 milliseconds per figure, and the request count.
    """
    sizes = QUICK if quick else FULL
    os.makedirs(output_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir) as scratch:
        base = pathlib.Path(model_base_dir) if model_base_dir else pathlib.Path(scratch)
        if model_base_dir is None:
            _build_standins(base, sizes)
        figures = _measure(base, sizes["requests"])
    figures["models"] = model_base_dir or (
        f"stand-in: {sizes['users']:,} users, {sizes['items']:,} items, "
        f"dimension {sizes['dimension']}, top {sizes['top_k']}"
    )
    with open(os.path.join(output_dir, "serving_bench.json"), "w", encoding="utf-8") as out:
        json.dump(figures, out, indent=2)
    return figures
