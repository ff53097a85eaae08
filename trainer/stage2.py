"""Stage II Trainer: a DCN-v2 ranker warm-started from Stage I's id embeddings.

`run_fn` is the TFX Trainer entry point. It reads the Stage II settings from
`custom_config` (see `trainer.stage2_config`) and finds the Stage I embedding export through
`fn_args.base_model`. It copies the rows of shared tokens into the ranker's id tables and
trains on every train-split row (label 0 and 1) for `epochs` passes, one by default. Last,
it writes a serving SavedModel with the Transform graph inside (see
`trainer.stage2_serving`).

Where the Stage I export sits: `fn_args.base_model` is the Stage I model artifact's
`Format-Serving` folder (the serving SavedModel), and the export is its
EMBEDDING_EXPORT_DIR subfolder (`trainer.embedding_export.export_root`).

Beside the model, in its `assets.extra/` folder, the resolved config (STAGE2_CONFIG_FILE)
and the warm-start counts per table with the teacher's calibration
(WARM_START_COUNTS_FILE) are written; the training history and eval metrics go to
METRICS_FILE under `fn_args.model_run_dir`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from absl import logging

from trainer import embedding_export, stage2_config, stage2_data, stage2_serving, warm_start
from trainer import ranker as ranker_lib
from trainer.config import Stage1Config
from trainer.stage2_config import Stage2Config
from transforms import features, keras_guard

# Training history and eval metrics, written under fn_args.model_run_dir.
METRICS_FILE = "stage2_metrics.json"

# The id tables, named by their feature in the Stage I export and in the ranker.
ID_TABLES = (features.USER_ID, features.ITEM_ID)


# ---------------------------------------------------------------------------
# Warm start and the distillation teacher.


def find_embedding_export(base_model: str | None) -> str | None:
    """Return the Stage I embedding export folder inside `fn_args.base_model`, or None.

    Raises:
      FileNotFoundError: `base_model` is set but contains no export.
    """
    if not base_model:
        return None
    export_dir = embedding_export.export_root(base_model)
    if not tf.io.gfile.isdir(export_dir):
        raise FileNotFoundError(
            f"no Stage I embedding export at {export_dir}: base_model must be the Stage I "
            "Trainer's model (its Format-Serving folder)"
        )
    return export_dir


def resolve_embedding_dim(config: Stage2Config, export_dir: str | None) -> int:
    """Return the id table width: the config's, else the Stage I export's.

    Raises:
      ValueError: a warm-started variant's configured width differs from the export's (the
        message names both), or no width is configured and there is no export.
    """
    if export_dir is None:
        if config.embedding_dim is None:
            raise ValueError(
                "embedding_dim is unset and there is no Stage I export to take it from: "
                "set embedding_dim in the Stage II config or pass a Stage I model as base_model"
            )
        return config.embedding_dim

    export_dim = warm_start.read_embedding_export(export_dir, features.ITEM_ID).dimension
    if config.embedding_dim is None:
        return export_dim
    if config.warm_started:
        warm_start.check_dimension(features.ITEM_ID, export_dim, config.embedding_dim)
    return config.embedding_dim


def warm_start_tables(
    ranker: ranker_lib.DcnRanker, export_dir: str, vocabularies: Mapping[str, Sequence[str]]
) -> list[warm_start.WarmStartCounts]:
    """Copy the Stage I rows of shared tokens into the ranker's id tables, then check them.

    Args:
      ranker: a built ranker (its tables have values).
      export_dir: the Stage I EMBEDDING_EXPORT_DIR folder.
      vocabularies: table name -> Stage II tokens in index order.

    Returns:
      The counts of each table, in ID_TABLES order.

    Raises:
      ValueError: a table's width differs from the export's.
      warm_start.WarmStartCheckError: a row read back from the model differs from Stage I's.
    """
    all_counts = []
    for name, table in zip(ID_TABLES, ranker.id_tables, strict=True):
        source = warm_start.read_embedding_export(export_dir, name)
        matrix, counts = warm_start.remap_rows(
            name, source, vocabularies[name], table.embeddings.numpy()
        )
        table.embeddings.assign(matrix)
        warm_start.check_copied_rows(name, source, vocabularies[name], table.embeddings.numpy())
        all_counts.append(counts)
    return all_counts


def teacher_rows(source: warm_start.EmbeddingExport, tokens: Sequence[str]) -> np.ndarray:
    """Return Stage I rows in Stage II index order; tokens new to Stage II get the OOV row."""
    oov_row = source.matrix[len(source.tokens)]
    initial = np.tile(oov_row, (len(tokens) + features.NUM_OOV_BUCKETS, 1))
    rows, _ = warm_start.remap_rows("teacher", source, tokens, initial)
    return rows


def resolve_teacher_similarity(config: Stage2Config, export_dir: str) -> str:
    """Return how Stage I scored pairs: the config's setting, else Stage I's own config.

    Stage I writes its resolved config into its serving model folder, which also contains
    the export. Without that file, cosine (Stage I's default) is assumed.
    """
    if config.teacher_similarity is not None:
        return config.teacher_similarity
    path = os.path.join(os.path.dirname(export_dir), features.STAGE1_CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        return stage2_config.COSINE
    with tf.io.gfile.GFile(path) as handle:
        return Stage1Config.from_json(handle.read()).similarity


def build_teacher(
    config: Stage2Config,
    export_dir: str,
    vocabularies: Mapping[str, Sequence[str]],
    scan: stage2_data.TrainSplitScan,
) -> tuple[ranker_lib.DistillationTeacher, dict[str, Any]]:
    """Build the distillation teacher, calibrated by Platt scaling on the train split.

    Returns:
      (teacher, calibration): calibration contains the slope, intercept, rows used and the
      similarity.
    """
    similarity = resolve_teacher_similarity(config, export_dir)
    # NOTE: the teacher scores pairs from the id tables only. A Stage I model whose towers
    # also summed side-feature embeddings (query_id_features) scored pairs differently.
    user_rows = teacher_rows(
        warm_start.read_embedding_export(export_dir, features.USER_ID),
        vocabularies[features.USER_ID],
    )
    item_rows = teacher_rows(
        warm_start.read_embedding_export(export_dir, features.ITEM_ID),
        vocabularies[features.ITEM_ID],
    )

    scores = np.concatenate(
        [
            ranker_lib.pair_scores(
                user_rows[scan.user_index[start : start + stage2_data.SCAN_BATCH_SIZE]],
                item_rows[scan.item_index[start : start + stage2_data.SCAN_BATCH_SIZE]],
                similarity,
            )
            for start in range(0, len(scan.labels), stage2_data.SCAN_BATCH_SIZE)
        ]
    )
    slope, intercept = ranker_lib.fit_platt_scaling(scores, scan.labels)
    teacher = ranker_lib.DistillationTeacher(user_rows, item_rows, similarity, slope, intercept)
    calibration = {
        "slope": slope,
        "intercept": intercept,
        "rows": float(len(scores)),
        "similarity": similarity,
    }
    return teacher, calibration


def write_json(path: str, value: Any) -> None:
    """Write `value` as indented JSON, creating the folder."""
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(json.dumps(value, indent=2, sort_keys=True))


# ---------------------------------------------------------------------------
# Training.


@dataclasses.dataclass
class Stage2Result:
    """Outputs of Stage II training.

    Attributes:
      ranker: the trained ranker.
      training_model: the wrapper that trained it (metrics, optimizers, teacher).
      feature_keys: transformed features the ranker reads.
      warm_start_counts: per-table counts; empty for the cold variant.
      calibration: the teacher's Platt slope and intercept; empty without distillation.
      history: Keras training history, metric -> value per epoch.
      scan: the train-split pass behind the side-feature tables.
    """

    ranker: ranker_lib.DcnRanker
    training_model: ranker_lib.RankerTrainingModel
    feature_keys: tuple[str, ...]
    warm_start_counts: list[warm_start.WarmStartCounts]
    calibration: dict[str, Any]
    history: dict[str, list[float]]
    scan: stage2_data.TrainSplitScan


def build_model(
    config: Stage2Config,
    tft_output: tft.TFTransformOutput,
    export_dir: str | None,
    scan: stage2_data.TrainSplitScan | None,
) -> tuple[ranker_lib.RankerTrainingModel, list[warm_start.WarmStartCounts], dict[str, Any]]:
    """Build the ranker and its training wrapper, warm-started and with a teacher per config.

    Raises:
      ValueError: the variant or distillation needs a Stage I export and there is none, or
        the embedding widths differ.
    """
    needs_export = config.warm_started or config.distillation
    if needs_export and export_dir is None:
        raise ValueError(
            f"variant {config.variant!r} with distillation_weight {config.distillation_weight} "
            "needs the Stage I embedding export, but base_model is empty: pass the Stage I "
            "Trainer's model as base_model, or use variant 'cold' without distillation"
        )

    tf.keras.utils.set_random_seed(config.seed)
    inputs = stage2_data.describe_ranker_inputs(tft_output)
    embedding_dim = resolve_embedding_dim(config, export_dir)
    ranker = ranker_lib.DcnRanker(inputs, config, embedding_dim)
    feature_keys = inputs.feature_keys(config.use_popularity_bucket)
    ranker(zero_batch(tft_output, feature_keys))

    vocabularies = {key: stage2_data.vocabulary_tokens(tft_output, key) for key in ID_TABLES}
    counts = []
    if config.warm_started:
        counts = warm_start_tables(ranker, export_dir, vocabularies)

    teacher = None
    calibration = {}
    if config.distillation:
        teacher, calibration = build_teacher(config, export_dir, vocabularies, scan)

    dense_optimizer, table_optimizer = ranker_lib.build_optimizers(config)
    model = ranker_lib.RankerTrainingModel(
        ranker, table_optimizer, teacher, config.distillation_weight
    )
    model.compile(optimizer=dense_optimizer)
    return model, counts, calibration


def zero_batch(tft_output: tft.TFTransformOutput, feature_keys: Sequence[str]) -> dict:
    """Return a one-example batch of zeros for `feature_keys`, used to build the ranker."""
    spec = tft_output.transformed_feature_spec()
    return {key: tf.zeros([1], spec[key].dtype) for key in feature_keys}


def fit_ranker(
    model: ranker_lib.RankerTrainingModel,
    config: Stage2Config,
    tft_output: tft.TFTransformOutput,
    train_files: Sequence[str],
    train_steps: int | None = None,
    callbacks: Sequence[tf.keras.callbacks.Callback] = (),
) -> dict[str, list[float]]:
    """Train a built model on the train split for `config.epochs` epochs.

    Args:
      model: from `build_model`.
      config: the Stage II settings.
      tft_output: the Transform output of the examples.
      train_files: TFX file patterns of the transformed train split.
      train_steps: TFX TrainArgs.num_steps; when set and config.steps_per_epoch is not, it
        is split evenly over the epochs.
      callbacks: extra Keras callbacks.

    Returns:
      The Keras history: metric -> value per epoch.
    """
    steps_per_epoch = config.steps_per_epoch
    if steps_per_epoch is None and train_steps:
        steps_per_epoch = max(1, math.ceil(train_steps / config.epochs))
    dataset = stage2_data.make_dataset(
        train_files,
        tft_output,
        model.ranker.ranker_inputs.feature_keys(config.use_popularity_bucket),
        config.batch_size,
        shuffle_buffer=config.shuffle_buffer,
        seed=config.seed,
        repeat=steps_per_epoch is not None,
    )
    history = model.fit(
        dataset,
        epochs=config.epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=list(callbacks),
        verbose=0,
    )
    return history.history


def train(
    config: Stage2Config,
    tft_output: tft.TFTransformOutput,
    train_files: Sequence[str],
    base_model: str | None,
    train_steps: int | None = None,
    callbacks: Sequence[tf.keras.callbacks.Callback] = (),
) -> Stage2Result:
    """Warm-start (per variant) and train the ranker on the train split.

    Args:
      config, tft_output, train_files, train_steps, callbacks: as `fit_ranker`.
      base_model: the Stage I model's Format-Serving folder, or None for the cold variant.

    Returns:
      The trained ranker and what was recorded on the way.
    """
    export_dir = find_embedding_export(base_model)
    scan = stage2_data.scan_train_split(train_files, tft_output)
    model, counts, calibration = build_model(config, tft_output, export_dir, scan)
    _log_warm_start(counts, calibration)
    history = fit_ranker(model, config, tft_output, train_files, train_steps, callbacks)
    return Stage2Result(
        ranker=model.ranker,
        training_model=model,
        feature_keys=model.ranker.ranker_inputs.feature_keys(config.use_popularity_bucket),
        warm_start_counts=counts,
        calibration=calibration,
        history=history,
        scan=scan,
    )


def _log_warm_start(
    counts: Sequence[warm_start.WarmStartCounts], calibration: dict[str, Any]
) -> None:
    for table in counts:
        logging.info(
            "Stage II warm start of table %s: %d rows copied, %d initialised, %d ignored, "
            "%d OOV rows copied",
            table.table,
            table.copied,
            table.initialised,
            table.ignored,
            table.oov_rows_copied,
        )
    if calibration:
        logging.info("Stage II teacher calibration: %s", calibration)


class _EpochLogger(tf.keras.callbacks.Callback):
    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logging.info("Stage II epoch %d: %s", epoch + 1, logs)


def run_fn(fn_args: Any) -> None:
    """Train the Stage II ranker and write its serving model (TFX Trainer entry point).

    Args:
      fn_args: TFX FnArgs: transform_output, train_files, eval_files, serving_model_dir,
        model_run_dir, base_model (the Stage I model's Format-Serving folder), custom_config,
        train_steps, eval_steps.
    """
    keras_guard.ensure_legacy_keras()
    config = Stage2Config.from_custom_config(fn_args.custom_config)
    logging.info("Stage II config: %s", config.to_json())
    tft_output = tft.TFTransformOutput(fn_args.transform_output)

    result = train(
        config,
        tft_output,
        fn_args.train_files,
        fn_args.base_model,
        train_steps=fn_args.train_steps,
        callbacks=[_EpochLogger()],
    )
    eval_metrics = {}
    if fn_args.eval_files:
        eval_metrics = evaluate(config, tft_output, result, fn_args.eval_files, fn_args.eval_steps)
    save_model(config, tft_output, result, fn_args.serving_model_dir)

    # NOTE: TensorBoard is not installed in the locked environment, so the metrics go to
    # a JSON file under the run dir instead of TensorBoard summaries.
    if fn_args.model_run_dir:
        metrics = {"train": result.history, "eval": eval_metrics}
        write_json(os.path.join(fn_args.model_run_dir, METRICS_FILE), metrics)


def evaluate(
    config: Stage2Config,
    tft_output: tft.TFTransformOutput,
    result: Stage2Result,
    eval_files: Sequence[str],
    eval_steps: int | None,
) -> dict[str, float]:
    """Log and return the loss and AUC of the trained ranker on the eval split."""
    dataset = stage2_data.make_dataset(
        eval_files, tft_output, result.feature_keys, config.batch_size
    )
    steps = config.eval_steps or eval_steps or None
    metrics = result.training_model.evaluate(dataset, steps=steps, return_dict=True, verbose=0)
    logging.info("Stage II eval metrics: %s", metrics)
    return metrics


def save_model(
    config: Stage2Config,
    tft_output: tft.TFTransformOutput,
    result: Stage2Result,
    serving_model_dir: str,
) -> None:
    """Write the serving SavedModel, the resolved config and the warm-start counts."""
    dtypes = stage2_data.raw_side_features(tft_output.raw_feature_spec())
    user_table, item_table = stage2_serving.build_side_feature_tables(result.scan, dtypes)
    module = stage2_serving.RankingServingModule(
        result.ranker, tft_output, user_table, item_table, result.feature_keys
    )
    stage2_serving.export_serving_model(module, serving_model_dir)
    logging.info(
        "Stage II serving model written to %s (%d users and %d items with side features)",
        serving_model_dir,
        user_table.size,
        item_table.size,
    )

    write_json(os.path.join(serving_model_dir, features.STAGE2_CONFIG_FILE), config.to_dict())
    counts = {
        "tables": [counts.to_dict() for counts in result.warm_start_counts],
        "calibration": result.calibration,
    }
    write_json(os.path.join(serving_model_dir, features.WARM_START_COUNTS_FILE), counts)
