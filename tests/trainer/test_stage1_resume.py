"""A Stage I run killed after epoch k resumes at epoch k + 1 with the same state."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from stage1_testdata import FAST_CONFIG, make_fn_args, transformed_log

from trainer import embedding_export, stage1, tables
from trainer.config import Stage1Config
from trainer.stage1_data import Stage1Inputs
from transforms import features

WORKER = pathlib.Path(__file__).with_name("stage1_resume_worker.py")
KILL_AFTER_EPOCH = 2
# Sampled negatives make the random generator's state part of what must resume.
CONFIG = dict(FAST_CONFIG, epochs=4, num_sampled_negatives=3)
FN_ARGS_FIELDS = (
    "train_files",
    "eval_files",
    "transform_output",
    "transform_graph_path",
    "serving_model_dir",
    "model_run_dir",
    "custom_config",
)


def _run_worker(fn_args, epochs_file: pathlib.Path, kill_after_epoch: int):
    request = {
        "fn_args": {field: getattr(fn_args, field) for field in FN_ARGS_FIELDS},
        "epochs_file": str(epochs_file),
        "kill_after_epoch": kill_after_epoch,
    }
    environment = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    return subprocess.run(
        [sys.executable, str(WORKER), json.dumps(request)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _epochs(path: pathlib.Path) -> list[int]:
    return [int(line) for line in path.read_text().split()]


def _tables(model) -> dict[str, np.ndarray]:
    keys = (features.USER_ID, features.ITEM_ID)
    return {key: model.tables.table_values(key).numpy() for key in keys}


def test_killed_run_resumes_at_next_epoch(tmp_path):
    log = transformed_log()
    pipeline_root = str(tmp_path / "pipeline")
    first = make_fn_args(
        log.train_pattern, log.eval_pattern, log.transform_output, pipeline_root, 1, CONFIG
    )

    killed = _run_worker(first, tmp_path / "epochs-killed", KILL_AFTER_EPOCH)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert _epochs(tmp_path / "epochs-killed") == [1, 2]
    assert not os.path.exists(first.serving_model_dir)  # killed before the export

    inputs = Stage1Inputs(tuple(first.train_files), tuple(first.eval_files), first.transform_output)
    config = Stage1Config.from_dict(CONFIG)
    checkpoint_dir = stage1.checkpoint_dir_for(
        config, inputs, first.model_run_dir, tables.TABLE_KIND_DEFAULT
    )
    reader = tf.train.load_checkpoint(checkpoint_dir)
    assert reader.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE") == KILL_AFTER_EPOCH
    saved_history = json.loads(reader.get_tensor("history/.ATTRIBUTES/VARIABLE_VALUE"))
    assert [record["epoch"] for record in saved_history] == [1, 2]
    # The rerun is a new Trainer execution: fresh model folders, same stable checkpoints,
    # which live outside any execution's model folder.
    second = make_fn_args(
        log.train_pattern, log.eval_pattern, log.transform_output, pipeline_root, 2, CONFIG
    )
    assert (
        stage1.checkpoint_dir_for(config, inputs, second.model_run_dir, tables.TABLE_KIND_DEFAULT)
        == checkpoint_dir
    )
    assert not checkpoint_dir.startswith(os.path.dirname(os.path.dirname(first.serving_model_dir)))
    # TPUEmbedding tables write other checkpoint keys, so they get a folder of their own.
    assert (
        stage1.checkpoint_dir_for(
            config, inputs, second.model_run_dir, tables.TABLE_KIND_TPU_EMBEDDING
        )
        != checkpoint_dir
    )

    resumed = _run_worker(second, tmp_path / "epochs-resumed", 0)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _epochs(tmp_path / "epochs-resumed") == [3, 4]
    history = stage1.read_history(second.serving_model_dir)["epochs"]
    assert [record["epoch"] for record in history] == [1, 2, 3, 4]
    assert history[:2] == saved_history

    # Reference: the same run without a kill, under another pipeline root, also in a fresh
    # process, so that no random state left by earlier tests in this process differs.
    reference = make_fn_args(
        log.train_pattern,
        log.eval_pattern,
        log.transform_output,
        str(tmp_path / "reference"),
        1,
        CONFIG,
    )
    uninterrupted = _run_worker(reference, tmp_path / "epochs-reference", 0)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    reference_history = stage1.read_history(reference.serving_model_dir)["epochs"]

    # The state the killed run saved after epoch 2 led to the uninterrupted run's epoch 2.
    assert saved_history == reference_history[:KILL_AFTER_EPOCH]

    # Resumed at epoch 3 from that state, the run ends where the uninterrupted one ends.
    resumed_root = embedding_export.export_root(second.serving_model_dir)
    reference_root = embedding_export.export_root(reference.serving_model_dir)
    for key in (features.USER_ID, features.ITEM_ID):
        _, resumed_matrix = embedding_export.read_table(resumed_root, key)
        _, reference_matrix = embedding_export.read_table(reference_root, key)
        np.testing.assert_allclose(resumed_matrix, reference_matrix, atol=1e-5, err_msg=key)
    for resumed_record, reference_record in zip(history, reference_history, strict=True):
        assert resumed_record["loss"] == pytest.approx(reference_record["loss"], rel=1e-5)
        assert resumed_record["recall@10"] == pytest.approx(reference_record["recall@10"])
