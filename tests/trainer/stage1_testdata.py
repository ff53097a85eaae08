"""A small synthetic log through the real Transform, once per test session, for Stage I tests.

The log has 48 users and 30 items in two taste groups: users of group g mostly engage with
items of group g, so a trained model ranks a user's group first. Train rows come before the
eval rows in time. The eval split also has a user and an item never seen in train. Rows carry
a `weight`, a user side feature `user_segment` and an item side feature `item_genre`.

`transformed_log()` runs `transforms.preprocessing.preprocessing_fn` with tft_beam on the
DirectRunner and writes the train and eval splits as GZIP TFRecords of transformed
tf.Examples, as the TFX Transform component writes them. `make_fn_args` builds the FnArgs a
TFX Trainer would pass to `run_fn`.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf
from tfx.components.trainer.fn_args_utils import FnArgs
from transform_testdata import write_transformed_splits

from transforms import features

USERS = 48
ITEMS = 30
UNSEEN_USER = "user-never-in-train"
UNSEEN_ITEM = "item-never-in-train"
USER_SEGMENT = "user_segment"
ITEM_GENRE = "item_genre"

RAW_SPEC = {
    features.USER_ID: tf.io.FixedLenFeature([1], tf.string),
    features.ITEM_ID: tf.io.FixedLenFeature([1], tf.string),
    features.TIMESTAMP: tf.io.FixedLenFeature([1], tf.int64),
    features.LABEL: tf.io.FixedLenFeature([1], tf.int64),
    features.WEIGHT: tf.io.VarLenFeature(tf.float32),
    USER_SEGMENT: tf.io.VarLenFeature(tf.string),
    ITEM_GENRE: tf.io.VarLenFeature(tf.string),
}

_CACHE: dict[str, TransformedLog] = {}


@dataclasses.dataclass(frozen=True)
class TransformedLog:
    """Paths and raw rows of the transformed synthetic splits.

    Attributes:
      root: Temporary folder holding everything below.
      transform_output: The Transform output folder.
      train_pattern: File pattern of the transformed train split.
      eval_pattern: File pattern of the transformed eval split.
      train_rows: Canonical raw rows of the train split.
      eval_rows: Canonical raw rows of the eval split.
    """

    root: str
    transform_output: str
    train_pattern: str
    eval_pattern: str
    train_rows: list[dict]
    eval_rows: list[dict]


def _row(user: int | str, item: int | str, timestamp: int, label: int, weight: float) -> dict:
    user_id = user if isinstance(user, str) else f"u{user:02d}"
    item_id = item if isinstance(item, str) else f"i{item:02d}"
    return {
        features.USER_ID: user_id,
        features.ITEM_ID: item_id,
        features.TIMESTAMP: timestamp,
        features.LABEL: label,
        features.WEIGHT: weight,
        USER_SEGMENT: f"segment-{user % 3}" if isinstance(user, int) else None,
        ITEM_GENRE: f"genre-{item % 4}" if isinstance(item, int) else None,
    }


def synthetic_rows(seed: int = 3) -> tuple[list[dict], list[dict]]:
    """Return (train rows, eval rows) of the two-group log described in the module docstring."""
    rng = np.random.default_rng(seed)
    train, evaluation = [], []
    timestamp = 1_700_000_000
    for step in range(1400):
        user = int(rng.integers(USERS))
        group = user % 2
        same_group = rng.random() < 0.85
        item_group = group if same_group else 1 - group
        item = int(rng.integers(ITEMS // 2)) * 2 + item_group
        label = int(rng.random() < (0.8 if same_group else 0.3))
        weight = float(rng.choice([0.5, 1.0, 2.0]))
        row = _row(user, item, timestamp + step, label, weight)
        (train if step < 1200 else evaluation).append(row)

    end = timestamp + 2000
    evaluation.append(_row(UNSEEN_USER, 2, end, 1, 1.0))
    evaluation.append(_row(4, UNSEEN_ITEM, end + 1, 1, 1.0))
    return train, evaluation


def _to_instance(row: dict) -> dict:
    return {key: [] if row.get(key) is None else [row[key]] for key in RAW_SPEC}


def transformed_log() -> TransformedLog:
    """Run the Transform on the synthetic log once per session and return its outputs."""
    if "log" not in _CACHE:
        _CACHE["log"] = _run_transform(*synthetic_rows())
    return _CACHE["log"]


def _run_transform(train_rows: list[dict], eval_rows: list[dict]) -> TransformedLog:
    root = tempfile.mkdtemp(prefix="idpt-stage1-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    transform_output, train_pattern, eval_pattern = write_transformed_splits(
        root,
        RAW_SPEC,
        [_to_instance(row) for row in train_rows],
        [_to_instance(row) for row in eval_rows],
    )
    return TransformedLog(
        root=root,
        transform_output=transform_output,
        train_pattern=train_pattern,
        eval_pattern=eval_pattern,
        train_rows=train_rows,
        eval_rows=eval_rows,
    )


def make_fn_args(
    train_pattern: str,
    eval_pattern: str,
    transform_output: str,
    pipeline_root: str,
    execution: int,
    custom_config: dict,
) -> FnArgs:
    """Return the FnArgs of Trainer execution `execution` under `pipeline_root`.

    The folders follow TFX's layout, `<root>/Trainer/model/<execution>/Format-Serving` and
    `<root>/Trainer/model_run/<execution>`, so each execution gets fresh output folders.
    """
    trainer_dir = os.path.join(pipeline_root, "Trainer")
    return FnArgs(
        train_files=[train_pattern],
        eval_files=[eval_pattern],
        transform_output=transform_output,
        transform_graph_path=transform_output,
        serving_model_dir=os.path.join(trainer_dir, "model", str(execution), "Format-Serving"),
        model_run_dir=os.path.join(trainer_dir, "model_run", str(execution)),
        custom_config=dict(custom_config),
    )


# Few epochs and a small dimension keep each training run to a few seconds on 2 cores.
FAST_CONFIG = {
    "embedding_dim": 8,
    "epochs": 2,
    "batch_size": 64,
    "learning_rate": 0.2,
    "recall_ks": [5, 10],
    "retrieve_top_k": 5,
}


def checkpoint_table(checkpoint_dir: str, key: str, shape: tuple[int, int]) -> np.ndarray:
    """Read table `key` (not its optimizer slots) from the latest checkpoint in a folder."""
    reader = tf.train.load_checkpoint(checkpoint_dir)
    names = [
        name
        for name, var_shape in tf.train.list_variables(checkpoint_dir)
        if f"/{key}/" in name and "OPTIMIZER_SLOT" not in name and tuple(var_shape) == shape
    ]
    if len(names) != 1:
        raise AssertionError(f"expected one checkpoint variable for table {key}, found {names}")
    return reader.get_tensor(names[0])
