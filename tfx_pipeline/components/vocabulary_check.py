"""A component after Transform that rejects empty vocabularies and records their sizes.

TFT writes a placeholder token in place of an empty vocabulary (for example,
every item id seen fewer times than the frequency threshold), and training would
go on with a one-token table. This is the first point where the vocabularies
exist, so the check runs here, before any trainer starts. The trainers may call
`transforms.preprocessing.check_vocabularies` again in their input step.
"""

import json
import os
from typing import Any

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tfx import v1 as tfx

from transforms import preprocessing

VOCABULARY_SIZES_FILE = "vocabulary_sizes.json"


class VocabularySizes(tfx.dsl.Artifact):
    """Token counts of each Transform vocabulary (OOV index excluded), as JSON."""

    # Kubeflow V2 requires custom type names of the form "<namespace>.<Name>".
    TYPE_NAME = "idpt.VocabularySizes"


@tfx.dsl.components.component
def VocabularyCheck(  # noqa: N802 (TFX components are named like classes)
    transform_graph: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.TransformGraph],
    vocabulary_sizes: tfx.dsl.components.OutputArtifact[VocabularySizes],
    preprocessing_config: tfx.dsl.components.Parameter[str] = "{}",
):
    """Raise EmptyVocabularyError on an empty vocabulary, else write every vocabulary's size.

    Args:
      transform_graph: Transform's output.
      vocabulary_sizes: receives VOCABULARY_SIZES_FILE, raw feature -> size.
      preprocessing_config: JSON of the custom_config Transform ran with, so that
        errors name the threshold that emptied the vocabulary.
    """
    config = preprocessing.PreprocessingConfig.from_custom_config(json.loads(preprocessing_config))
    sizes = preprocessing.check_vocabularies(tft.TFTransformOutput(transform_graph.uri), config)
    write_sizes(vocabulary_sizes.uri, sizes)
    logging.info("Vocabulary sizes (OOV index excluded): %s", sizes)


def write_sizes(uri: str, sizes: dict[str, int]) -> None:
    """Write raw feature -> vocabulary size as VOCABULARY_SIZES_FILE under `uri`."""
    tf.io.gfile.makedirs(uri)
    with tf.io.gfile.GFile(os.path.join(uri, VOCABULARY_SIZES_FILE), "w") as file:
        json.dump(sizes, file, indent=2, sort_keys=True)
        file.write("\n")


def load_sizes(uri: str) -> dict[str, Any]:
    """Return the sizes written by VocabularyCheck under a VocabularySizes artifact folder."""
    with tf.io.gfile.GFile(os.path.join(uri, VOCABULARY_SIZES_FILE)) as file:
        return json.loads(file.read())
