"""Stage II training throughput: examples per second of each variant on the same data.

The benchmark generates a synthetic log and runs the Transform on it with `transform_bench`
(not timed). It writes a Stage I embedding export with random rows for the transformed
vocabularies, because the throughput does not depend on the rows' values. Then it trains
each variant for one epoch over the same transformed examples, with the same batch size and
layer sizes. The first batch is left out of the timing because it traces the training step.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io

from tfx_pipeline.benchmarks import transform_bench
from trainer import embedding_export, stage2, stage2_data
from trainer.stage2_config import Stage2Config
from transforms import features, readers

TITLE = "Stage II training throughput"
NOTES = (
    "Training examples per second of the Stage II DCN-v2 ranker, one epoch per variant over "
    "the same transformed synthetic log (batch 1024, 2 full-rank cross layers, deep tower "
    "256-128, stacked; id tables 64 wide), timed after the first batch. `+distillation` adds "
    "the Platt-scaled Stage I teacher (lambda 1). The Transform and the warm start are not "
    "timed."
)
QUICK_ROWS = 100_000
FULL_ROWS = 1_000_000
EMBEDDING_DIM = 64
BATCH_SIZE = 1024
# (label, variant, distillation weight)
RUNS = (
    ("frozen", "frozen", 0.0),
    ("finetune", "finetune", 0.0),
    ("full", "full", 0.0),
    ("cold", "cold", 0.0),
    ("finetune+distillation", "finetune", 1.0),
)


class _Throughput(tf.keras.callbacks.Callback):
    """Time from the end of the first batch to the end of training."""

    def __init__(self) -> None:
        super().__init__()
        self.start = None
        self.batches = 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.start is None:
            self.start = time.perf_counter()
        else:
            self.batches += 1

    def on_train_end(self, logs: dict | None = None) -> None:
        self.seconds = time.perf_counter() - self.start


def run(output_dir: str, quick: bool, rows: int | None = None) -> dict[str, Any]:
    """Time one epoch of each Stage II variant.

    Args:
      output_dir: folder for the generated log, the Transform output and the export.
      quick: 100K rows; otherwise 1M.
      rows: row count overriding `quick` (small ones are for smoke tests).

    Returns:
      "<run>: examples/s" for every run, and the row count.
    """
    rows = rows or (QUICK_ROWS if quick else FULL_ROWS)
    data_dir, transform_dir = _prepare_transform(output_dir, rows)
    tft_output = tft.TFTransformOutput(transform_dir)
    train_files = [os.path.join(data_dir, "transformed", "*")]
    base_model = os.path.join(output_dir, "stage1", "Format-Serving")
    _write_random_export(base_model, tft_output)
    scan = stage2_data.scan_train_split(train_files, tft_output)

    figures: dict[str, Any] = {"rows": rows}
    for label, variant, distillation_weight in RUNS:
        config = Stage2Config(
            variant=variant,
            distillation_weight=distillation_weight,
            batch_size=BATCH_SIZE,
            embedding_dim=EMBEDDING_DIM,
        )
        export_dir = stage2.find_embedding_export(base_model)
        model, _, _ = stage2.build_model(config, tft_output, export_dir, scan)
        throughput = _Throughput()
        stage2.fit_ranker(model, config, tft_output, train_files, callbacks=[throughput])
        examples = throughput.batches * BATCH_SIZE
        figures[f"{label}: examples/s"] = round(examples / throughput.seconds, 1)
    return figures


def _prepare_transform(output_dir: str, rows: int) -> tuple[str, str]:
    """Run `transform_bench` on a synthetic log; return (its folder, the transform graph)."""
    prepare_dir = os.path.join(output_dir, "transform")
    shutil.rmtree(prepare_dir, ignore_errors=True)
    transform_bench.run(prepare_dir, quick=True, sizes=(rows,))
    data_dir = os.path.join(prepare_dir, f"rows-{rows}")
    transform_dir = os.path.join(data_dir, "transform_graph")

    # TFX's Transform component writes the raw schema beside the graph; stage2 reads it.
    column_types = readers.column_types(f"{readers.SYNTHETIC}:rows={rows}", readers.SYNTHETIC)
    # NOTE: transform_bench's private spec rule, so the raw schema matches its examples.
    raw_spec = transform_bench._feature_spec(column_types)
    metadata_io.write_metadata(
        dataset_metadata.DatasetMetadata.from_feature_spec(raw_spec),
        os.path.join(transform_dir, tft.TFTransformOutput.RAW_METADATA_DIR),
    )
    return data_dir, transform_dir


def _write_random_export(base_model: str, tft_output: tft.TFTransformOutput) -> None:
    rng = np.random.default_rng(0)
    root = embedding_export.export_root(base_model)
    for table in stage2.ID_TABLES:
        tokens = tft_output.vocabulary_by_name(features.vocabulary_name(table))
        matrix = rng.normal(size=(len(tokens) + features.NUM_OOV_BUCKETS, EMBEDDING_DIM))
        embedding_export.write_table(root, table, tokens, matrix.astype(np.float32))
