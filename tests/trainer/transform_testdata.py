"""Run the real Transform over raw rows in-process and write the splits as TFX does.

Stage I and Stage II tests both need transformed splits on disk: GZIP TFRecords of
transformed tf.Examples under `<root>/Split-<name>/`, and the Transform output folder with
the raw schema beside the graph. `write_transformed_splits` writes them with
`transforms.preprocessing.preprocessing_fn` on the DirectRunner.
"""

from __future__ import annotations

import os

import apache_beam as beam
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io

from transforms import preprocessing


def write_transformed_splits(
    root: str, raw_spec: dict, train_instances: list[dict], eval_instances: list[dict]
) -> tuple[str, str, str]:
    """Analyse the train split, transform both splits and write them under `root`.

    Args:
      root: Folder to write into.
      raw_spec: Raw feature spec of the instances.
      train_instances: Raw train rows as tft instances (feature name to list of values).
      eval_instances: Raw eval rows, likewise.

    Returns:
      The Transform output folder, and the file patterns of the train and eval splits.
    """
    metadata = dataset_metadata.DatasetMetadata.from_feature_spec(raw_spec)
    transform_output = os.path.join(root, "transform_output")

    with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=os.path.join(root, "tmp")):
        train = pipeline | "ReadTrain" >> beam.Create(train_instances)
        evaluation = pipeline | "ReadEval" >> beam.Create(eval_instances)
        transform_fn = (train, metadata) | tft_beam.AnalyzeDataset(preprocessing.preprocessing_fn)
        _ = transform_fn | tft_beam.WriteTransformFn(transform_output)
        for name, split in (("train", train), ("eval", evaluation)):
            transformed, transformed_metadata = ((split, metadata), transform_fn) | (
                f"Transform{name}" >> tft_beam.TransformDataset()
            )
            coder = tft.coders.ExampleProtoCoder(transformed_metadata.schema)
            _ = (
                transformed
                | f"Encode{name}" >> beam.Map(coder.encode)
                | f"Write{name}"
                >> beam.io.WriteToTFRecord(
                    os.path.join(root, f"Split-{name}", "transformed_examples"),
                    file_name_suffix=".gz",
                )
            )

    # TFX's Transform writes the raw schema beside the graph; TFTransformOutput reads it.
    metadata_io.write_metadata(
        metadata, os.path.join(transform_output, tft.TFTransformOutput.RAW_METADATA_DIR)
    )
    train_pattern = os.path.join(root, "Split-train", "*")
    return transform_output, train_pattern, os.path.join(root, "Split-eval", "*")
