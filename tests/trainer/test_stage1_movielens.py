"""Stage I on MovieLens 100K: more epochs of pre-training raise eval recall@50."""

from __future__ import annotations

import pytest
from stage1_testdata import make_fn_args
from stage2_testdata import transformed_movielens

from trainer import stage1
from transforms import features

# Small dimension and three epochs keep the run near ten seconds on 2 cores.
CONFIG = {"embedding_dim": 16, "epochs": 3, "batch_size": 512, "recall_ks": [10, 50, 100]}


@pytest.mark.e2e
@pytest.mark.movielens
def test_recall_rises_over_epochs(movielens_dir, tmp_path):
    data = transformed_movielens(movielens_dir)
    fn_args = make_fn_args(
        data.train_pattern, data.eval_pattern, data.transform_output, str(tmp_path), 1, CONFIG
    )
    history = stage1.train_and_export(fn_args).history
    first, last = history[0], history[-1]

    engaged_eval_rows = sum(row[features.LABEL] == 1 for row in data.eval_rows)
    assert last["eval_positives"] == engaged_eval_rows
    assert last["recall@50"] > first["recall@50"]
    # Users seen in train carry the personal signal that epochs refine.
    assert last["recall@50/returning_users"] > first["recall@50/returning_users"]
    assert last["loss"] < first["loss"]
