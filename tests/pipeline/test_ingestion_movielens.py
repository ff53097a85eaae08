"""End to end through LocalDagRunner: ingestion -> statistics -> schema -> validator -> Transform.

One pipeline run on MovieLens 100K is shared by the module's tests. Every
expected value is computed here from u.data and u.item directly (pandas),
independently of the readers and of the pipeline.

Beam runs in-memory here: on 2 cores, the multi-processing DirectRunner's worker
start-up made the same run slower (60 s against 36 s for the four components
with Beam work, measured once on the 2-core development machine).
"""

import glob
import math
import os
import pathlib

import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from tfx_pipeline import local_runner
from tfx_pipeline.components import ingestion, vocabulary_check
from tfx_pipeline.config import PipelineConfig
from transforms import features, readers

pytestmark = [pytest.mark.e2e, pytest.mark.movielens]

MOVIELENS_100K = pathlib.Path(__file__).resolve().parents[2].parent / "shared/data/movielens-100k"
IN_MEMORY_BEAM_ARGS = ("--direct_running_mode=in_memory", "--direct_num_workers=1")
XF = features.transformed_name


@pytest.fixture(scope="module")
def ratings() -> pd.DataFrame:
    if not (MOVIELENS_100K / "u.data").is_file():
        pytest.skip(f"MovieLens 100K is not at {MOVIELENS_100K}")
    return pd.read_csv(
        MOVIELENS_100K / "u.data",
        sep="\t",
        names=["user_id", "item_id", "rating", "timestamp"],
        dtype={"user_id": str, "item_id": str, "rating": int, "timestamp": int},
    )


@pytest.fixture(scope="module")
def cutoffs(ratings) -> tuple[int, int]:
    ordered = ratings["timestamp"].sort_values().to_numpy()
    count = len(ordered)
    return int(ordered[math.floor(0.8 * count)]), int(ordered[math.floor(0.9 * count)])


@pytest.fixture(scope="module")
def run(ratings, tmp_path_factory) -> PipelineConfig:
    config = PipelineConfig(
        data=str(MOVIELENS_100K),
        data_format=readers.MOVIELENS_100K,
        output_dir=str(tmp_path_factory.mktemp("runs")),
        beam_pipeline_args=IN_MEMORY_BEAM_ARGS,
    )
    local_runner.run(config)
    return config


@pytest.fixture(scope="module")
def ingested(run) -> dict[str, list[tf.train.Example]]:
    """The ingestion's examples by split, read once for the module."""
    examples_uri = _output(run, "LogIngestion", ingestion.EXAMPLES_KEY)
    return {split: _read_examples(examples_uri, split) for split in features.SPLITS}


def _output(config: PipelineConfig, node: str, key: str) -> str:
    uris = local_runner.latest_output_uris(config, node, key)
    assert len(uris) == 1, (node, key, uris)
    return uris[0]


def _read_examples(examples_uri: str, split: str) -> list[tf.train.Example]:
    files = sorted(glob.glob(os.path.join(examples_uri, f"Split-{split}", "*.gz")))
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return [tf.train.Example.FromString(record.numpy()) for record in dataset]


def _value(example: tf.train.Example, name: str):
    feature = example.features.feature[name]
    return getattr(feature, feature.WhichOneof("kind")).value[0]


def test_split_sizes_match_cutoffs(run, ingested, ratings, cutoffs):
    train_end, eval_end = cutoffs
    expected = {
        "train": int((ratings["timestamp"] < train_end).sum()),
        "eval": int(
            ((ratings["timestamp"] >= train_end) & (ratings["timestamp"] < eval_end)).sum()
        ),
        "test": int((ratings["timestamp"] >= eval_end).sum()),
    }
    examples_uri = _output(run, "LogIngestion", ingestion.EXAMPLES_KEY)
    report = ingestion.load_report(examples_uri)

    assert (report["train_end"], report["eval_end"]) == cutoffs
    assert report["rows_per_split"] == expected
    assert {split: len(examples) for split, examples in ingested.items()} == expected


def test_no_train_row_at_or_after_t1(ingested, cutoffs):
    train = ingested[features.TRAIN_SPLIT]
    assert max(_value(example, features.TIMESTAMP) for example in train) < cutoffs[0]


def test_vocabulary_sizes_equal_distinct_train_ids(run, ratings, cutoffs):
    train = ratings[ratings["timestamp"] < cutoffs[0]]
    tft_output = tft.TFTransformOutput(_output(run, "Transform", "transform_graph"))
    sizes = vocabulary_check.load_sizes(_output(run, "VocabularyCheck", "vocabulary_sizes"))

    for key in (features.USER_ID, features.ITEM_ID):
        distinct = train[key].nunique()
        assert tft_output.vocabulary_size_by_name(features.vocabulary_name(key)) == distinct, key
        assert sizes[key] == distinct, key
    engaged_items = train.loc[train["rating"] >= 4, "item_id"].nunique()
    assert sizes[features.ENGAGED_ITEM_COUNTS] == engaged_items


def test_new_eval_users_map_to_oov(run, ratings, cutoffs):
    train_users = set(ratings.loc[ratings["timestamp"] < cutoffs[0], "user_id"])
    tft_output = tft.TFTransformOutput(_output(run, "Transform", "transform_graph"))
    vocabulary = [
        token.decode()
        for token in tft_output.vocabulary_by_name(features.vocabulary_name("user_id"))
    ]
    oov_index = len(vocabulary)
    transformed = _read_examples(_output(run, "Transform", "transformed_examples"), "eval")

    new_users = 0
    for example in transformed:
        user = _value(example, features.USER_ID).decode()
        index = _value(example, XF(features.USER_ID))
        returning = _value(example, features.USER_IS_RETURNING)
        if user in train_users:
            assert (vocabulary[index], returning) == (user, 1)
        else:
            assert (index, returning) == (oov_index, 0), user
            new_users += 1
    assert new_users > 0  # MovieLens users keep arriving after T1


def test_accented_titles_survive(ingested):
    titles = pd.read_csv(
        MOVIELENS_100K / "u.item",
        sep="|",
        header=None,
        encoding="iso-8859-1",
        usecols=[0, 1],
        names=["item_id", "title"],
        dtype=str,
    ).set_index("item_id")["title"]
    accented = {item: title for item, title in titles.items() if not title.isascii()}
    assert "Misérables, Les (1995)" in accented.values()

    seen = {}
    for examples in ingested.values():
        for example in examples:
            item = _value(example, features.ITEM_ID).decode()
            if item in accented:
                seen[item] = _value(example, features.ITEM_TITLE).decode("utf-8")
    assert seen
    assert seen == {item: accented[item] for item in seen}


def test_single_timestamp_stops_before_statistics(cases_dir, tmp_path):
    config = PipelineConfig(
        data=str(cases_dir / "single_timestamp.csv"),
        data_format=readers.CSV,
        output_dir=str(tmp_path),
        beam_pipeline_args=IN_MEMORY_BEAM_ARGS,
    )
    with pytest.raises(ingestion.EmptySplitError, match="T1 = 1700000000, T2 = 1700000000"):
        local_runner.run(config)
    assert local_runner.latest_output_uris(config, "StatisticsGen", "statistics") == []
