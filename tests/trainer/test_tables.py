"""The embedding table factory: selection logic, and training through each CPU-reachable kind."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
from stage1_testdata import FAST_CONFIG, make_fn_args, transformed_log

from trainer import embedding_export, stage1, tables
from trainer.config import Stage1Config
from trainer.stage1_data import Stage1Inputs
from transforms import features


def _uninitialised(strategy_class):
    # Only the class matters to strategy_kind; a real TPU or cluster strategy cannot be
    # created on this machine.
    return strategy_class.__new__(strategy_class)


@pytest.mark.parametrize(
    "strategy_class, expected",
    [
        (tf.distribute.TPUStrategy, tables.STRATEGY_TPU),
        (tf.distribute.experimental.TPUStrategy, tables.STRATEGY_TPU),
        (tf.distribute.ParameterServerStrategy, tables.STRATEGY_PARAMETER_SERVER),
        (tf.distribute.MultiWorkerMirroredStrategy, tables.STRATEGY_MULTI_WORKER_MIRRORED),
        (tf.distribute.MirroredStrategy, tables.STRATEGY_MIRRORED),
        (tf.distribute.OneDeviceStrategy, tables.STRATEGY_DEFAULT),
    ],
)
def test_strategy_kind_by_class(strategy_class, expected):
    assert tables.strategy_kind(_uninitialised(strategy_class)) == expected


def test_strategy_kind_of_real_cpu_strategies():
    assert tables.strategy_kind(tf.distribute.get_strategy()) == tables.STRATEGY_DEFAULT
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0"])
    assert tables.strategy_kind(mirrored) == tables.STRATEGY_MIRRORED


@pytest.mark.parametrize(
    "strategy_name, backend, expected",
    [
        (tables.STRATEGY_TPU, "auto", tables.TABLE_KIND_TPU_EMBEDDING),
        (tables.STRATEGY_TPU, "keras", tables.TABLE_KIND_MIRRORED),
        (tables.STRATEGY_TPU, "tpu_embedding", tables.TABLE_KIND_TPU_EMBEDDING),
        (tables.STRATEGY_MIRRORED, "auto", tables.TABLE_KIND_MIRRORED),
        (tables.STRATEGY_MULTI_WORKER_MIRRORED, "auto", tables.TABLE_KIND_MIRRORED),
        (tables.STRATEGY_PARAMETER_SERVER, "auto", tables.TABLE_KIND_PARTITIONED),
        (tables.STRATEGY_PARAMETER_SERVER, "keras", tables.TABLE_KIND_PARTITIONED),
        (tables.STRATEGY_DEFAULT, "auto", tables.TABLE_KIND_DEFAULT),
        (tables.STRATEGY_DEFAULT, "tpu_embedding", tables.TABLE_KIND_TPU_EMBEDDING),
    ],
)
def test_select_table_kind(strategy_name, backend, expected):
    assert tables.select_table_kind(strategy_name, backend) == expected


def test_tpu_embedding_backend_rejected_under_mirrored():
    with pytest.raises(
        ValueError, match="^The TPUEmbedding table backend runs under a TPUStrategy or the default"
    ):
        tables.select_table_kind(tables.STRATEGY_MIRRORED, "tpu_embedding")


def test_unknown_backend_rejected():
    with pytest.raises(ValueError, match="^Unknown table backend 'jax'"):
        tables.select_table_kind(tables.STRATEGY_DEFAULT, "jax")


def test_partitioner_splits_only_big_tables():
    # 1,000 rows x 16 floats = 64,000 bytes. With 16,384-byte shards a shard has
    # 16,384 / 64 = 256 rows, so the table needs ceil(1000 / 256) = 4 shards.
    partitioner = tables.variable_partitioner(16_384)
    big = tables.TableSpec("item_id", rows=1000, dimension=16)
    small = tables.TableSpec("user_segment", rows=10, dimension=16)

    assert tables.expected_shards(big, 16_384) == 4
    assert partitioner(tf.TensorShape([1000, 16]), tf.float32) == [4, 1]
    assert tables.expected_shards(small, 16_384) == 1
    assert partitioner(tf.TensorShape([10, 16]), tf.float32) == [1, 1]


def test_unknown_table_in_features_rejected():
    specs = [tables.TableSpec("user_id", 5, 4)]
    with pytest.raises(ValueError, match=r"^Features refer to unknown tables \['item_id'\]"):
        tables.create_embedding_tables(
            specs,
            {"item_id": "item_id"},
            tf.distribute.get_strategy(),
            tf.keras.optimizers.legacy.Adagrad(),
        )


def _train(tmp_path, **overrides):
    log = transformed_log()
    config = dict(FAST_CONFIG, **overrides)
    fn_args = make_fn_args(
        log.train_pattern, log.eval_pattern, log.transform_output, str(tmp_path), 1, config
    )
    return fn_args, stage1.train_and_export(fn_args)


def _export(fn_args) -> dict[str, tuple[list[str], np.ndarray]]:
    root = embedding_export.export_root(fn_args.serving_model_dir)
    return {
        name: embedding_export.read_table(root, name) for name in embedding_export.list_tables(root)
    }


def _initial_tables(fn_args, backend: str) -> dict[str, np.ndarray]:
    config = Stage1Config.from_dict(dict(fn_args.custom_config, table_backend=backend))
    inputs = Stage1Inputs(
        tuple(fn_args.train_files), tuple(fn_args.eval_files), fn_args.transform_output
    )
    model = stage1.build_model(
        config, stage1.prepare_data(config, inputs), tf.distribute.get_strategy()
    )
    return {key: model.tables.table_values(key).numpy() for key in model.vocabularies}


@pytest.fixture(scope="module")
def keras_run(tmp_path_factory):
    # No sampled negatives: under MirroredStrategy the random generator draws another
    # stream, so only a run without random draws can be compared value for value.
    return _train(tmp_path_factory.mktemp("keras"), table_backend="keras")


def test_tpu_embedding_exports_like_keras(tmp_path, keras_run):
    fn_args, result = _train(tmp_path, table_backend="tpu_embedding", num_sampled_negatives=3)
    assert result.table_kind == tables.TABLE_KIND_TPU_EMBEDDING
    keras_args, keras_result = keras_run
    assert keras_result.table_kind == tables.TABLE_KIND_DEFAULT

    exported = _export(fn_args)
    keras_exported = _export(keras_args)
    initial = _initial_tables(fn_args, "tpu_embedding")
    assert sorted(exported) == sorted(keras_exported) == [features.ITEM_ID, features.USER_ID]

    for key, (tokens, matrix) in exported.items():
        keras_tokens, keras_matrix = keras_exported[key]
        assert tokens == keras_tokens
        assert (matrix.shape, matrix.dtype) == (keras_matrix.shape, keras_matrix.dtype)

        trained_rows = result.model.tables.table_values(key).numpy()
        np.testing.assert_array_equal(matrix, trained_rows)
        # Training moved the rows of ids seen in train; the OOV item row gets no gradient.
        assert not np.allclose(matrix[:-1], initial[key][:-1])
    np.testing.assert_array_equal(exported[features.ITEM_ID][1][-1], initial[features.ITEM_ID][-1])

    # The legacy optimizer keeps one Adagrad accumulator per TPUEmbedding table.
    for variable in result.model.tables.table_variables(features.USER_ID):
        assert result.model.optimizer.get_slot(variable, "accumulator").shape == variable.shape


def test_tpu_tables_read_through_checkpoint(tmp_path):
    fn_args, result = _train(tmp_path, table_backend="tpu_embedding")
    trained = result.model.tables
    assert not trained.on_tpu
    assert trained.host_copy_dir == os.path.join(result.checkpoint_dir, stage1.TPU_HOST_COPY_FOLDER)

    # The path table_values takes under a TPUStrategy, here run on CPU.
    trained.host_copy_dir = str(tmp_path / "host-copy")
    read = trained.read_through_checkpoint()
    assert sorted(read) == [features.ITEM_ID, features.USER_ID]
    for key, values in read.items():
        np.testing.assert_array_equal(values.numpy(), trained.table_values(key).numpy())
    assert tf.io.gfile.glob(str(tmp_path / "host-copy" / "tables*.index"))

    in_scope = pytest.raises(RuntimeError, match="^Reading TPUEmbedding tables through a")
    with tf.distribute.MirroredStrategy().scope(), in_scope:
        trained.read_through_checkpoint()


def test_mirrored_strategy_trains_like_default(tmp_path, keras_run):
    fn_args, result = _train(tmp_path, distribution="mirrored")
    assert result.table_kind == tables.TABLE_KIND_MIRRORED

    # One CPU replica runs the same computation as the default strategy.
    keras_args, _ = keras_run
    keras_exported = _export(keras_args)
    for key, (tokens, matrix) in _export(fn_args).items():
        assert tokens == keras_exported[key][0]
        np.testing.assert_allclose(matrix, keras_exported[key][1], atol=1e-5)
        np.testing.assert_array_equal(matrix, result.model.tables.table_values(key).numpy())


def test_gpu_path_trains_tables_on_gpu(tmp_path):
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        pytest.skip(
            "TensorFlow sees no GPU (tf.config.list_physical_devices('GPU') is empty), so the "
            "GPU table path cannot run on this machine"
        )
    fn_args, result = _train(tmp_path, distribution="auto")
    expected = tables.TABLE_KIND_MIRRORED if len(gpus) > 1 else tables.TABLE_KIND_DEFAULT
    assert result.table_kind == expected

    for variable in result.model.tables.table_variables(features.USER_ID):
        assert "GPU" in variable.device.upper()
    for key, (_, matrix) in _export(fn_args).items():
        np.testing.assert_array_equal(matrix, result.model.tables.table_values(key).numpy())
