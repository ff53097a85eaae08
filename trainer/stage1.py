"""TFX Trainer entry point of Stage I: multi-epoch contrastive ID pre-training.

`run_fn` trains the two-tower model of `trainer.stage1_model` on the train split's engaged
rows for `epochs` epochs, reshuffled each epoch, and evaluates on the eval split after every
epoch (eval loss, recall@K overall and per popularity bucket). Metrics go to TensorBoard
under `fn_args.model_run_dir`.

Checkpoints: TFX gives every Trainer execution fresh output folders, so per-epoch
checkpoints live in a stable folder, `<root>/<key>`. The key hashes the input paths and the
config fields that change the trained state. The root is `checkpoint_dir` from the config,
or else `stage1_checkpoints` beside the Trainer's `model_run` folder. A rerun with the same
inputs resumes after the last finished epoch. Model, optimizer slots, negative sampler state,
epoch counter and metric history all come from the checkpoint. Each epoch's shuffle depends
only on the seed and the epoch number.

Outputs in `fn_args.serving_model_dir` (the Model artifact's `Format-Serving` folder):
  saved_model.pb, variables/, assets/   signatures `query_embedding` and `retrieve`
                                        (see `trainer.stage1_serving`)
  embeddings/<table>/...                the embedding export (see `trainer.embedding_export`)
  stage1_config.json                    the resolved `Stage1Config`
  stage1_history.json                   per-epoch metrics, and the last epoch's as "final"
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.framework import summary_pb2

from trainer import embedding_export, retrieval_metrics, stage1_data, tables
from trainer.config import Stage1Config
from trainer.stage1_data import ITEM_IDS, USER_IDS, Stage1Inputs, Vocabulary
from trainer.stage1_model import Stage1Model, make_optimizer
from trainer.stage1_serving import RetrievalServingModule, save_serving_model
from transforms import features, keras_guard

CHECKPOINTS_FOLDER = "stage1_checkpoints"
INPUTS_FILE = "inputs.json"
# Under the checkpoint folder: where TPU-trained tables are saved to be read on the host.
TPU_HOST_COPY_FOLDER = "tpu_host_copy"

EpochCallback = Callable[[int, dict, Stage1Model], None]


@dataclasses.dataclass
class PreparedData:
    """Everything the Stage I loop reads, built once per run.

    Attributes:
      vocabularies: Vocabulary per raw key (ids and side features).
      item_counts: [V_i] engaged train count per item.
      side_feature_index: Side feature key to its index per id.
      train_rows: Engaged train rows (dicts), cached in memory when configured.
      num_train_rows: Number of engaged train rows.
      train_history: Engaged train items per user, for `exclude_train_items`.
      eval_columns: Engaged eval rows as NumPy columns keyed by feature name.
    """

    vocabularies: dict[str, Vocabulary]
    item_counts: np.ndarray
    side_feature_index: dict[str, np.ndarray]
    train_rows: tf.data.Dataset
    num_train_rows: int
    train_history: tf.RaggedTensor
    eval_columns: dict[str, np.ndarray]


@dataclasses.dataclass
class Stage1Result:
    """Outputs of a Stage I run.

    Attributes:
      model: The trained model.
      history: One metrics dict per finished epoch, epoch 1 first.
      trained_epochs: Epochs this run trained (after a resume, only the remaining ones).
      checkpoint_dir: The stable checkpoint folder.
      table_kind: The table kind the factory chose.
      serving_module: The module saved as the serving SavedModel.
    """

    model: Stage1Model
    history: list[dict]
    trained_epochs: list[int]
    checkpoint_dir: str
    table_kind: str
    serving_module: RetrievalServingModule


def run_fn(fn_args) -> None:
    """Train and export the Stage I model; called by the TFX Trainer.

    Args:
      fn_args: `tfx.components.FnArgs`. Reads train_files, eval_files, transform_output,
        custom_config (the `Stage1Config` fields), hyperparameters (`Stage1Config` fields
        that override custom_config at run time, e.g. {"epochs": 30}), serving_model_dir
        and model_run_dir.
    """
    train_and_export(fn_args)


def train_and_export(fn_args, on_epoch_end: EpochCallback | None = None) -> Stage1Result:
    """Run Stage I from `fn_args` and write the outputs; `run_fn` without the callback.

    Args:
      fn_args: As for `run_fn`.
      on_epoch_end: Called with (epoch, metrics, model) after each epoch's checkpoint is
        saved.

    Returns:
      The trained model and its history.
    """
    keras_guard.ensure_legacy_keras()
    config = resolve_config(fn_args.custom_config, getattr(fn_args, "hyperparameters", None))
    inputs = inputs_from_fn_args(fn_args)
    if fn_args.train_steps:
        logging.info(
            "Stage I trains by epochs (%d); train_args.num_steps is ignored", config.epochs
        )

    # Python, NumPy and TensorFlow global seeds: table initialisers and sampling draw from
    # them, so a run's result must not depend on what ran before in the same process.
    tf.keras.utils.set_random_seed(config.seed)
    strategy = tables.create_strategy(
        config.distribution, config.tpu_address, config.max_shard_bytes
    )
    data = prepare_data(config, inputs)
    model = build_model(config, data, strategy)
    checkpoint_dir = checkpoint_dir_for(config, inputs, fn_args.model_run_dir, model.tables.kind)
    if isinstance(model.tables, tables.TpuEmbeddingTables):
        model.tables.host_copy_dir = os.path.join(checkpoint_dir, TPU_HOST_COPY_FOLDER)
    logging.info(
        "Stage I: %d engaged train rows, %d users, %d items, table kind %s, strategy %s",
        data.num_train_rows,
        data.vocabularies[features.USER_ID].size,
        data.vocabularies[features.ITEM_ID].size,
        model.tables.kind,
        type(strategy).__name__,
    )

    history, trained = train(
        config, model, data, strategy, checkpoint_dir, fn_args.model_run_dir, on_epoch_end
    )
    module = export(config, model, data, history, fn_args.serving_model_dir)
    return Stage1Result(model, history, trained, checkpoint_dir, model.tables.kind, module)


def resolve_config(custom_config: dict | None, hyperparameters: dict | None) -> Stage1Config:
    """Merge the Trainer's custom_config with its run-time hyperparameters.

    A Trainer's custom_config is fixed when the pipeline is compiled; its hyperparameters
    artifact is read at run time, so a pipeline can set e.g. the epochs per run.

    Args:
      custom_config: `Stage1Config` fields, or None.
      hyperparameters: `Stage1Config` fields that win over custom_config, or None. Keras
        Tuner's `HyperParameters.get_config()` form, with the values under "values", is
        accepted too.

    Returns:
      The validated config.

    Raises:
      ValueError: A key is not a `Stage1Config` field, or a value is invalid.
    """
    values = dict(custom_config or {})
    if hyperparameters:
        values.update(hyperparameters.get("values", hyperparameters))
    return Stage1Config.from_dict(values)


def inputs_from_fn_args(fn_args) -> Stage1Inputs:
    """Collect the data locations from TFX's FnArgs.

    Raises:
      ValueError: The Trainer was given no Transform graph.
    """
    transform_output = fn_args.transform_output or fn_args.transform_graph_path
    if not transform_output:
        raise ValueError(
            "The Stage I Trainer needs the Transform graph: pass transform_graph= to Trainer"
        )
    return Stage1Inputs(
        train_files=tuple(fn_args.train_files),
        eval_files=tuple(fn_args.eval_files),
        transform_output=transform_output,
    )


def checkpoint_dir_for(
    config: Stage1Config, inputs: Stage1Inputs, model_run_dir: str, table_kind: str
) -> str:
    """Return the stable checkpoint folder of a run, keyed by its inputs and config.

    Args:
      config: Its `training_fingerprint` is part of the key; `checkpoint_dir`, when set,
        is the root.
      inputs: The data locations, part of the key.
      model_run_dir: The Trainer's `<pipeline root>/<component>/model_run/<execution>`;
        without a configured root, checkpoints go to `<pipeline root>/<component>/` +
        CHECKPOINTS_FOLDER.
      table_kind: The tables' TABLE_KIND_*, part of the key: TPUEmbedding and Keras tables
        write different checkpoints, and the distribution that decides it is not in the
        fingerprint.

    Returns:
      `<root>/<16 hex digits>`.
    """
    root = config.checkpoint_dir
    if not root:
        component_dir = os.path.dirname(os.path.dirname(model_run_dir.rstrip("/")))
        root = os.path.join(component_dir, CHECKPOINTS_FOLDER)

    key_source = json.dumps(
        {
            "train_files": sorted(inputs.train_files),
            "eval_files": sorted(inputs.eval_files),
            "transform_output": inputs.transform_output,
            "config": config.training_fingerprint(),
            "table_kind": table_kind,
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_source.encode()).hexdigest()[:16]
    return os.path.join(root, key)


def prepare_data(config: Stage1Config, inputs: Stage1Inputs) -> PreparedData:
    """Read vocabularies and counts, and build the train and eval row datasets."""
    import tensorflow_transform as tft

    tft_output = tft.TFTransformOutput(inputs.transform_output)
    keys = (
        features.USER_ID,
        features.ITEM_ID,
        *config.query_id_features,
        *config.candidate_id_features,
    )
    vocabularies = {key: stage1_data.load_vocabulary(tft_output, key) for key in keys}
    item_counts = stage1_data.load_engaged_item_counts(tft_output, vocabularies[features.ITEM_ID])
    # The probability of an item engaged once: the floor for eval items never engaged in train.
    probability_floor = 1.0 / float(item_counts.sum())

    train_files = stage1_data.list_files(inputs.train_files)
    eval_files = stage1_data.list_files(inputs.eval_files)
    spec = _row_spec(tft_output)

    train_rows = _training_rows(stage1_data.read_rows(train_files, spec), probability_floor)
    if config.cache_train_examples:
        train_rows = train_rows.cache()
    # This first pass also fills the cache.
    train_columns = stage1_data.to_numpy_columns(train_rows, (USER_IDS, ITEM_IDS))
    if not len(train_columns[USER_IDS]):
        raise ValueError(f"The train split {list(inputs.train_files)} has no rows with label 1")

    eval_rows = _training_rows(stage1_data.read_rows(eval_files, spec), probability_floor)
    eval_columns = stage1_data.to_numpy_columns(
        eval_rows,
        (USER_IDS, ITEM_IDS, features.ITEM_POPULARITY_BUCKET, *_LOSS_KEYS),
    )
    if not len(eval_columns[USER_IDS]):
        raise ValueError(
            f"The eval split {list(inputs.eval_files)} has no rows with label 1: Stage I "
            "cannot measure recall; move the eval cut-off or widen the eval window"
        )

    return PreparedData(
        vocabularies=vocabularies,
        item_counts=item_counts,
        side_feature_index=_side_feature_index(config, tft_output, train_files, vocabularies),
        train_rows=train_rows,
        num_train_rows=len(train_columns[USER_IDS]),
        train_history=retrieval_metrics.train_history(
            train_columns[USER_IDS],
            train_columns[ITEM_IDS],
            vocabularies[features.USER_ID].rows,
            vocabularies[features.ITEM_ID].size,
        ),
        eval_columns=eval_columns,
    )


_LOSS_KEYS = (features.ITEM_SAMPLING_PROBABILITY, features.WEIGHT)


def _row_spec(tft_output) -> dict:
    keys = [
        USER_IDS,
        ITEM_IDS,
        features.LABEL,
        features.ITEM_SAMPLING_PROBABILITY,
        features.ITEM_POPULARITY_BUCKET,
    ]
    if features.WEIGHT in tft_output.transformed_feature_spec():
        keys.append(features.WEIGHT)
    return stage1_data.parsing_spec(tft_output, keys)


def _training_rows(rows: tf.data.Dataset, probability_floor: float) -> tf.data.Dataset:
    """Keep engaged rows with the columns the loss and the metrics read; weight 1 if absent."""

    def select(row: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        weight = row.get(features.WEIGHT, tf.ones([], tf.float32))
        return {
            USER_IDS: row[USER_IDS],
            ITEM_IDS: row[ITEM_IDS],
            features.ITEM_POPULARITY_BUCKET: row[features.ITEM_POPULARITY_BUCKET],
            features.ITEM_SAMPLING_PROBABILITY: row[features.ITEM_SAMPLING_PROBABILITY],
            features.WEIGHT: tf.cast(weight, tf.float32),
        }

    engaged = stage1_data.engaged_rows(rows).map(select)
    return stage1_data.floor_probability(engaged, probability_floor)


def _side_feature_index(
    config: Stage1Config, tft_output, train_files: list[str], vocabularies: dict
) -> dict[str, np.ndarray]:
    sides = [(features.USER_ID, key) for key in config.query_id_features]
    sides += [(features.ITEM_ID, key) for key in config.candidate_id_features]
    if not sides:
        return {}

    id_keys = {features.transformed_name(id_key) for id_key, _ in sides}
    side_keys = [features.transformed_name(key) for _, key in sides]
    spec = stage1_data.parsing_spec(tft_output, [*id_keys, *side_keys, features.TIMESTAMP])
    # Every train row, engaged or not, carries the side features of its user and item.
    columns = stage1_data.to_numpy_columns(stage1_data.read_rows(train_files, spec), list(spec))

    index = {}
    for id_key, key in sides:
        index[key] = stage1_data.side_feature_index(
            columns[features.transformed_name(id_key)],
            columns[features.transformed_name(key)],
            columns[features.TIMESTAMP],
            vocabularies[id_key].rows,
            vocabularies[key].oov_index,
        )
    return index


def build_model(
    config: Stage1Config, data: PreparedData, strategy: tf.distribute.Strategy
) -> Stage1Model:
    """Create and compile the model and its tables under the strategy."""
    with strategy.scope():
        optimizer = make_optimizer(config)
        model = Stage1Model(
            config,
            data.vocabularies,
            data.side_feature_index,
            data.item_counts,
            strategy,
            optimizer,
        )
        model.compile(optimizer=optimizer)
        model.build_tables()
    return model


def epoch_seed(seed: int, epoch: int) -> int:
    """Return the shuffle seed of an epoch (0-based), a function of the seed and epoch only."""
    return seed * 1_000_003 + epoch


def train(
    config: Stage1Config,
    model: Stage1Model,
    data: PreparedData,
    strategy: tf.distribute.Strategy,
    checkpoint_dir: str,
    run_dir: str,
    on_epoch_end: EpochCallback | None = None,
) -> tuple[list[dict], list[int]]:
    """Train epoch by epoch from the last checkpoint, evaluating and checkpointing each epoch.

    Returns:
      The metric history of all finished epochs, and the epochs trained by this call.
    """
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    history_json = tf.Variable("[]", dtype=tf.string, trainable=False)
    checkpoint = tf.train.Checkpoint(
        model=model, optimizer=model.optimizer, epoch=epoch, history=history_json
    )
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=2)
    _restore(checkpoint, manager, checkpoint_dir, config.epochs)
    _write_inputs_note(checkpoint_dir, config)

    history = json.loads(history_json.numpy().decode())
    writer = tf.summary.create_file_writer(run_dir)
    trained = []
    for index in range(int(epoch.numpy()), config.epochs):
        record = {"epoch": index + 1, "loss": _fit_one_epoch(config, model, data, strategy, index)}
        record.update(evaluate(config, model, data))
        history.append(record)
        _write_summaries(writer, record)

        epoch.assign(index + 1)
        history_json.assign(json.dumps(history))
        manager.save(checkpoint_number=index + 1)
        trained.append(index + 1)
        logging.info("Stage I epoch %d/%d: %s", index + 1, config.epochs, record)
        if on_epoch_end is not None:
            on_epoch_end(index + 1, record, model)
    writer.flush()
    return history, trained


def _restore(
    checkpoint: tf.train.Checkpoint,
    manager: tf.train.CheckpointManager,
    checkpoint_dir: str,
    epochs: int,
) -> None:
    if manager.latest_checkpoint is None:
        logging.info("Stage I starts at epoch 1; checkpoints go to %s", checkpoint_dir)
        return
    status = checkpoint.restore(manager.latest_checkpoint)
    status.assert_existing_objects_matched()

    # `epochs` is not part of the checkpoint key, so that raising it resumes. A checkpoint
    # past the configured epochs would export a model trained longer than the config records.
    finished = int(checkpoint.epoch.numpy())
    if finished > epochs:
        # The restore is abandoned, so TensorFlow need not warn about unused values.
        status.expect_partial()
        raise ValueError(
            f"Stage I config epochs={epochs}, but the checkpoint in {checkpoint_dir} has "
            f"already trained {finished} epochs with the same inputs and settings: set "
            f"epochs to {finished} or more to reuse it, or delete that folder (or set "
            "checkpoint_dir to another one) to train from scratch"
        )

    logging.info("Stage I resumes from %s after epoch %d", manager.latest_checkpoint, finished)


def _write_inputs_note(checkpoint_dir: str, config: Stage1Config) -> None:
    # Readers of the checkpoint folder see which config keyed it.
    path = os.path.join(checkpoint_dir, INPUTS_FILE)
    if not tf.io.gfile.exists(path):
        tf.io.gfile.makedirs(checkpoint_dir)
        with tf.io.gfile.GFile(path, "w") as out:
            out.write(config.to_json())


def _fit_one_epoch(
    config: Stage1Config,
    model: Stage1Model,
    data: PreparedData,
    strategy: tf.distribute.Strategy,
    index: int,
) -> float:
    dataset = data.train_rows.shuffle(
        config.shuffle_buffer_size,
        seed=epoch_seed(config.seed, index),
        reshuffle_each_iteration=False,
    )
    dataset = dataset.batch(config.batch_size, drop_remainder=_on_tpu(strategy))
    dataset = dataset.prefetch(tf.data.AUTOTUNE)

    fit_options = {}
    if tables.strategy_kind(strategy) == tables.STRATEGY_PARAMETER_SERVER:
        # NOTE: parameter-server training needs an endless dataset and a step count; this
        # path is untested here (no cluster).
        dataset = dataset.repeat()
        fit_options["steps_per_epoch"] = math.ceil(data.num_train_rows / config.batch_size)

    logs = model.fit(dataset, epochs=index + 1, initial_epoch=index, verbose=0, **fit_options)
    return float(logs.history["loss"][-1])


def _on_tpu(strategy: tf.distribute.Strategy) -> bool:
    # A TPU compiles the step for one batch shape, so a short last batch is dropped there.
    # NOTE: never run on a TPU; elsewhere every row trains and the last batch may be short.
    return tables.strategy_kind(strategy) == tables.STRATEGY_TPU


def evaluate(config: Stage1Config, model: Stage1Model, data: PreparedData) -> dict:
    """Return the eval loss and recall@K of the current model.

    The eval loss is the training loss over eval positives whose item is in the vocabulary
    (OOV items have no trained candidate row). Recall covers every eval positive.
    """
    columns = data.eval_columns
    item_vocabulary_size = data.vocabularies[features.ITEM_ID].size
    in_vocabulary = columns[ITEM_IDS] < item_vocabulary_size

    eval_loss = None
    if in_vocabulary.any():
        in_vocabulary_columns = {key: value[in_vocabulary] for key, value in columns.items()}
        dataset = tf.data.Dataset.from_tensor_slices(in_vocabulary_columns)
        dataset = dataset.batch(
            config.batch_size, drop_remainder=_on_tpu(model.distribute_strategy)
        )
        eval_loss = float(model.evaluate(dataset, verbose=0, return_dict=True)["loss"])

    metrics = retrieval_metrics.evaluate_recall(
        model.query_matrix(),
        model.candidate_matrix()[:item_vocabulary_size],
        columns[USER_IDS],
        columns[ITEM_IDS],
        columns[features.ITEM_POPULARITY_BUCKET],
        config.recall_ks,
        batch_size=config.eval_batch_size,
        history=data.train_history if config.exclude_train_items else None,
    )
    return {"eval_loss": eval_loss, **metrics}


def _write_summaries(writer, record: dict) -> None:
    # tf.summary.scalar needs the tensorboard package, which the locked environment lacks;
    # tf.summary.write with the scalars plugin's metadata writes the same event records.
    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
    )
    with writer.as_default():
        for name, value in record.items():
            if name == "epoch" or value is None:
                continue
            # TensorBoard accepts [A-Za-z0-9_./-] in tag names.
            tag = name.replace("@", "_at_")
            tf.summary.write(
                tag, tf.constant(value, tf.float32), step=record["epoch"], metadata=metadata
            )


def export(
    config: Stage1Config,
    model: Stage1Model,
    data: PreparedData,
    history: list[dict],
    serving_model_dir: str,
) -> RetrievalServingModule:
    """Write the embedding export, the serving SavedModel, the config and the history.

    Returns:
      The module saved as the serving SavedModel.
    """
    root = embedding_export.export_root(serving_model_dir)
    for key, vocabulary in data.vocabularies.items():
        values = model.tables.table_values(key).numpy()
        embedding_export.write_table(root, key, vocabulary.tokens, values)

    users = data.vocabularies[features.USER_ID]
    items = data.vocabularies[features.ITEM_ID]
    module = RetrievalServingModule(
        user_tokens_file=os.path.join(root, features.USER_ID, features.EMBEDDING_TOKENS_FILE),
        user_vocabulary_size=users.size,
        query_matrix=model.query_matrix().numpy(),
        item_tokens=list(items.tokens),
        candidate_matrix=model.candidate_matrix()[: items.size].numpy(),
        top_k=config.retrieve_top_k,
    )
    save_serving_model(module, serving_model_dir)

    _write_json(os.path.join(serving_model_dir, features.STAGE1_CONFIG_FILE), config.to_dict())
    _write_json(
        os.path.join(serving_model_dir, features.STAGE1_HISTORY_FILE),
        history_document(config, history, model.tables.kind),
    )
    logging.info("Stage I model and embedding export written to %s", serving_model_dir)
    return module


def history_document(config: Stage1Config, history: list[dict], table_kind: str) -> dict:
    """Return the JSON document of the metric history saved beside the model."""
    return {
        "epochs": history,
        "final": history[-1] if history else {},
        "recall_ks": list(config.recall_ks),
        "popularity_bucket_names": list(features.POPULARITY_BUCKET_NAMES),
        "table_kind": table_kind,
    }


def _write_json(path: str, document: dict) -> None:
    with tf.io.gfile.GFile(path, "w") as out:
        out.write(json.dumps(document, indent=2, sort_keys=True))


def read_history(model_dir: str) -> dict:
    """Read the metric history saved beside a Stage I serving model.

    Args:
      model_dir: The serving model folder (the Model artifact's `Format-Serving`).

    Raises:
      FileNotFoundError: The folder has no history file.
    """
    path = os.path.join(model_dir, features.STAGE1_HISTORY_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"Stage I history {path} not found: is this a Stage I model?")
    with tf.io.gfile.GFile(path) as source:
        return json.loads(source.read())
