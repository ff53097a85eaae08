"""Stage I training throughput and memory against TensorFlow Recommenders baselines.

Each setup trains on one synthetic set of engaged (user, item) pairs with Zipf item
popularity. All setups share the batch size, embedding dimension, legacy Adagrad optimizer
and tf.data pipeline, and no setup evaluates. Setups:

  idpt, M=0                 the Stage I model (cosine / temperature, logQ correction,
                            accidental-hit masking, unseen-user term), in-batch negatives
  idpt, M=0, no unseen term the same without the unseen-user term
  idpt, M>0                 the Stage I model with M sampled negatives per batch
  tfrs bare                 two Embedding towers and `tfrs.tasks.Retrieval`, called with
                            compute_metrics=False
  tfrs tutorial             the same with `tfrs.metrics.FactorizedTopK` over all items
                            computed during training, as in the TFRS retrieval tutorial

Each setup runs in its own Python process, so its peak resident set size (RSS) is its own.
That peak includes the libraries and the input pipeline, which every setup shares. The RSS
growth while training is the peak RSS from building the model to the end of training minus
the RSS just before the model is built. Set that figure against the size of the tables plus
their Adagrad slots.

Timing: a few warm-up batches trace the train step, then TIMED_PASSES passes over the
training pairs (full batches only) are timed one by one. Every setup runs in `rounds`
processes, taken in turn, so that a slow spell of the machine hits all setups alike. The
fastest pass of all gives examples/s, as the `timeit` documentation advises, because noise
only ever slows a pass down. The tutorial setup
scores every item for every batch, so its passes stop after `tutorial_batches` batches;
its examples/s are per example all the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

from tfx_pipeline.benchmarks import LOGGER

TITLE = "Stage I training throughput"
NOTES = (
    "Training examples/s over engaged pairs for the Stage I model and TFRS baselines with the "
    "same batch, dimension, legacy Adagrad and input pipeline, evaluation excluded: the "
    "fastest of 3 timed passes in each of 2 (full) or 3 (--quick) processes per setup. Peak "
    "RSS of each setup's own process, and the RSS growth from building the model to the end "
    "of training against the size of the tables plus their Adagrad slots. Target: the Stage "
    "I model with M = 0 at 0.9x or more of the bare TFRS model."
)

QUICK = {
    "rows": 60_000,
    "users": 6_000,
    "items": 3_000,
    "dimension": 32,
    "batch": 1024,
    "tutorial_batches": 20,
    "rounds": 3,
}
FULL = {
    "rows": 1_000_000,
    "users": 100_000,
    "items": 50_000,
    "dimension": 64,
    "batch": 2048,
    # Each tutorial batch scores all 50,000 items and takes seconds.
    "tutorial_batches": 8,
    "rounds": 2,
}
WARMUP_BATCHES = 5
TIMED_PASSES = 3
SAMPLED_NEGATIVES = 1024
SETUPS = ("idpt_m0", "idpt_m0_no_unseen", "idpt_sampled", "tfrs_bare", "tfrs_tutorial")
_LABELS = {
    "idpt_m0": "idpt, M=0",
    "idpt_m0_no_unseen": "idpt, M=0, no unseen-user term",
    "idpt_sampled": f"idpt, M={SAMPLED_NEGATIVES}",
    "tfrs_bare": "tfrs bare Retrieval",
    "tfrs_tutorial": "tfrs tutorial (FactorizedTopK)",
}


def run(output_dir: str, quick: bool, sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """Measure every setup, each in `rounds` fresh processes.

    Args:
      output_dir: Folder for the generated pairs.
      quick: Small sizes (QUICK) instead of FULL.
      sizes: Overrides QUICK / FULL (for smoke tests), with the same keys.

    Returns:
      Figures by name: examples/s and peak RSS per setup, the ratios against the bare TFRS
      model, and the table + slot size.
    """
    size = dict(sizes or (QUICK if quick else FULL))
    os.makedirs(output_dir, exist_ok=True)
    data_path = os.path.join(output_dir, "pairs.npz")
    _write_pairs(data_path, size)

    rounds = size["rounds"]
    results = {setup: [] for setup in SETUPS}
    for number in range(1, rounds + 1):
        for setup in SETUPS:
            result = _measure_in_subprocess(setup, data_path, size)
            LOGGER.info(
                "Stage I benchmark, round %d of %d: %s trained %.0f examples/s.",
                number,
                rounds,
                _LABELS[setup],
                result["examples_per_s"],
            )
            results[setup].append(result)
    measured = {setup: _fastest(results[setup]) for setup in SETUPS}
    table_bytes = 4 * size["dimension"] * (size["users"] + size["items"] + 2)

    figures: dict[str, Any] = {
        "rows, users, items": f"{size['rows']:,}, {size['users']:,}, {size['items']:,}",
        "dimension, batch": f"{size['dimension']}, {size['batch']}",
        "tables + Adagrad slots, MiB": round(2 * table_bytes / 2**20, 1),
    }
    for setup in SETUPS:
        label = _LABELS[setup]
        figures[f"{label}: examples/s"] = round(measured[setup]["examples_per_s"])
        figures[f"{label}: peak RSS, MiB"] = round(measured[setup]["peak_rss_mib"], 1)
        figures[f"{label}: RSS growth while training, MiB"] = round(
            measured[setup]["training_rss_growth_mib"], 1
        )
    bare = measured["tfrs_bare"]["examples_per_s"]
    for setup in ("idpt_m0", "idpt_m0_no_unseen", "idpt_sampled", "tfrs_tutorial"):
        ratio = measured[setup]["examples_per_s"] / bare
        figures[f"{_LABELS[setup]} / tfrs bare"] = round(ratio, 3)
    return figures


def _fastest(results: list[dict[str, float]]) -> dict[str, float]:
    return {
        "examples_per_s": max(result["examples_per_s"] for result in results),
        "peak_rss_mib": max(result["peak_rss_mib"] for result in results),
        "training_rss_growth_mib": max(result["training_rss_growth_mib"] for result in results),
    }


def _write_pairs(path: str, size: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    # Zipf-like item popularity: item k drawn with probability proportional to 1 / (k + 1).
    weights = 1.0 / np.arange(1, size["items"] + 1)
    items = rng.choice(size["items"], size=size["rows"], p=weights / weights.sum())
    users = rng.integers(0, size["users"], size=size["rows"])
    counts = np.bincount(items, minlength=size["items"]).astype(np.float64)
    np.savez(path, users=users, items=items, counts=counts)


def _measure_in_subprocess(setup: str, data_path: str, size: dict[str, int]) -> dict:
    request = json.dumps({"setup": setup, "data_path": data_path, "size": size})
    environment = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    completed = subprocess.run(
        [sys.executable, "-m", __name__, request],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"Stage I benchmark setup {setup} failed with exit code {completed.returncode}: "
            f"{completed.stderr[-2000:]}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _dataset(pairs, counts: np.ndarray, batch: int):
    import tensorflow as tf

    from trainer.stage1_data import ITEM_IDS, USER_IDS
    from transforms import features

    probability = (counts / counts.sum()).astype(np.float32)
    columns = {
        USER_IDS: pairs["users"].astype(np.int64),
        ITEM_IDS: pairs["items"].astype(np.int64),
        features.ITEM_SAMPLING_PROBABILITY: probability[pairs["items"]],
        features.WEIGHT: np.ones(len(pairs["users"]), np.float32),
    }
    dataset = tf.data.Dataset.from_tensor_slices(columns)
    # A short last batch makes Keras trace the train step twice more, inside the first
    # timed passes. Without it every setup keeps one traced shape.
    dataset = dataset.shuffle(100_000, seed=1).batch(batch, drop_remainder=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _idpt_model(setup: str, size: dict[str, int], counts: np.ndarray):
    import tensorflow as tf

    from trainer.config import Stage1Config
    from trainer.stage1_data import Vocabulary
    from trainer.stage1_model import Stage1Model, make_optimizer
    from transforms import features

    config = Stage1Config(
        embedding_dim=size["dimension"],
        batch_size=size["batch"],
        num_sampled_negatives=SAMPLED_NEGATIVES if setup == "idpt_sampled" else 0,
        unseen_user_loss_weight=0.0 if setup == "idpt_m0_no_unseen" else 0.5,
    )
    vocabularies = {
        features.USER_ID: Vocabulary(
            features.USER_ID, tuple(b"%d" % i for i in range(size["users"]))
        ),
        features.ITEM_ID: Vocabulary(
            features.ITEM_ID, tuple(b"%d" % i for i in range(size["items"]))
        ),
    }
    optimizer = make_optimizer(config)
    model = Stage1Model(config, vocabularies, {}, counts, tf.distribute.get_strategy(), optimizer)
    model.compile(optimizer=optimizer)
    return model


def _tfrs_model(setup: str, size: dict[str, int], pairs):
    import tensorflow as tf
    import tensorflow_recommenders as tfrs

    from trainer.stage1_data import ITEM_IDS, USER_IDS

    dimension = size["dimension"]
    user_model = tf.keras.layers.Embedding(size["users"] + 1, dimension)
    item_model = tf.keras.layers.Embedding(size["items"] + 1, dimension)
    compute_metrics = setup == "tfrs_tutorial"
    metrics = None
    if compute_metrics:
        candidates = tf.data.Dataset.range(size["items"]).batch(1024).map(item_model)
        metrics = tfrs.metrics.FactorizedTopK(candidates=candidates)

    class TwoTower(tfrs.models.Model):
        def __init__(self):
            super().__init__()
            self.user_model = user_model
            self.item_model = item_model
            self.task = tfrs.tasks.Retrieval(metrics=metrics)

        def compute_loss(self, batch, training=False):
            query = self.user_model(batch[USER_IDS])
            candidate = self.item_model(batch[ITEM_IDS])
            return self.task(query, candidate, compute_metrics=compute_metrics)

    model = TwoTower()
    model.compile(optimizer=tf.keras.optimizers.legacy.Adagrad(learning_rate=0.5))
    return model


def measure(setup: str, data_path: str, size: dict[str, int]) -> dict[str, float]:
    """Train one setup and time its passes, in the child process."""
    # Every library is imported and the input pipeline built before the baseline, so
    # the growth below counts the model, its optimizer slots and training only.
    import tensorflow_recommenders  # noqa: F401

    from trainer import stage1_model  # noqa: F401

    pairs = np.load(data_path)
    counts = pairs["counts"]
    dataset = _dataset(pairs, counts, size["batch"])
    # The reset drops the peak so far from the high-water mark, so it is kept apart.
    peak_before_model = _status_mib("VmHWM")
    _reset_peak_rss()
    baseline_rss = _status_mib("VmHWM")

    if setup.startswith("idpt"):
        model = _idpt_model(setup, size, counts)
    else:
        model = _tfrs_model(setup, size, pairs)
    model.fit(dataset.take(WARMUP_BATCHES), epochs=1, verbose=0)

    batches = size["rows"] // size["batch"]
    timed = dataset
    if setup == "tfrs_tutorial":
        batches = min(batches, size["tutorial_batches"])
        timed = dataset.take(batches)
    examples = batches * size["batch"]
    seconds = []
    for _ in range(TIMED_PASSES):
        start = time.perf_counter()
        model.fit(timed, epochs=1, verbose=0)
        seconds.append(time.perf_counter() - start)

    peak_while_training = _status_mib("VmHWM")
    return {
        "examples_per_s": examples / min(seconds),
        "peak_rss_mib": max(peak_before_model, peak_while_training),
        "training_rss_growth_mib": peak_while_training - baseline_rss,
    }


def _reset_peak_rss() -> None:
    # Writing "5" to clear_refs resets the high-water mark VmHWM to the current RSS, on
    # Linux 4.0 and later (proc(5), /proc/pid/clear_refs).
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
        clear_refs.write("5")


def _status_mib(key: str) -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {key} line: the benchmark needs Linux")


def main() -> None:
    request = json.loads(sys.argv[1])
    result = measure(request["setup"], request["data_path"], request["size"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
