"""Pusher for both IDPT models into one TF Serving model base directory.

Layout: `<base>/ranking/<version>/` and `<base>/retrieval/<version>/`, each a
SavedModel with `assets.extra/tf_serving_warmup_requests`. A version is copied
into a hidden sibling folder first and renamed into place, so TF Serving (which
loads only all-digit folder names) never loads a half-written version. TFX's own
Pusher copies in place and handles one model per component.

Each version records the SavedModel it was copied from. When a rerun's trainer was
cached, the pusher gets the same model again and does not push it while the latest
version came from it.
"""

import collections
import os
import shutil
import time

import tensorflow as tf
from absl import logging
from tfx import types
from tfx.dsl.component.experimental.annotations import (
    InputArtifact,
    OutputArtifact,
    Parameter,
)
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from serving import history
from transforms import features

SERVING_MODEL_FOLDER = "Format-Serving"
BLESSED_PROPERTY = "blessed"
REASON_PROPERTY = "reason"


def is_blessed(blessing: types.Artifact | None) -> bool:
    """Return True when a blessing artifact exists and its `blessed` property is 1."""
    if blessing is None:
        return False
    return bool(blessing.get_int_custom_property(BLESSED_PROPERTY))


def next_version(model_dir: str) -> int:
    """Return a version number above every version already under `model_dir`.

    Versions follow TFX's Pusher (Unix seconds) but never go backwards, even
    when two pushes fall within one second or the clock moved back.
    """
    existing = []
    if os.path.isdir(model_dir):
        existing = [int(name) for name in os.listdir(model_dir) if name.isdigit()]
    return max([int(time.time()), *[version + 1 for version in existing]])


def latest_version_from(model_dir: str, saved_model_dir: str) -> str | None:
    """Return the latest version folder under `model_dir` if it was copied from `saved_model_dir`.

    Returns:
      The version folder's path, or None when there is no version yet, or the latest
      one came from another SavedModel or from a push that recorded no source.
    """
    if not os.path.isdir(model_dir):
        return None
    versions = [int(name) for name in os.listdir(model_dir) if name.isdigit()]
    if not versions:
        return None

    latest = os.path.join(model_dir, str(max(versions)))
    source_file = os.path.join(latest, features.PUSH_SOURCE_FILE)
    if not os.path.isfile(source_file):
        return None
    with open(source_file, encoding="utf-8") as file:
        source = file.read().strip()
    return latest if source == os.path.abspath(saved_model_dir) else None


def read_train_history(examples_uri: str) -> dict[str, set[str]]:
    """Return the items each user engaged with (label 1) in the train split.

    Args:
      examples_uri: an Examples artifact with raw `user_id`, `item_id` and
        `label` features (Transform's transformed examples pass them through).
    """
    pattern = os.path.join(examples_uri, f"Split-{features.TRAIN_SPLIT}", "*")
    files = sorted(tf.io.gfile.glob(pattern))
    compression = "GZIP" if files and files[0].endswith(".gz") else ""
    history: dict[str, set[str]] = collections.defaultdict(set)
    for record in tf.data.TFRecordDataset(files, compression_type=compression):
        row = tf.train.Example.FromString(record.numpy()).features.feature
        if row[features.LABEL].int64_list.value[:1] != [1]:
            continue
        user = row[features.USER_ID].bytes_list.value[0].decode("utf-8")
        history[user].add(row[features.ITEM_ID].bytes_list.value[0].decode("utf-8"))
    return dict(history)


def push_saved_model(
    saved_model_dir: str,
    model_dir: str,
    warmup_file: str | None,
    user_history: dict[str, set[str]] | None = None,
) -> str:
    """Copy a SavedModel into `model_dir/<version>` atomically and return that path.

    Args:
      saved_model_dir: the SavedModel to push.
      model_dir: the served model's folder, e.g. `<base>/ranking`.
      warmup_file: a PredictionLog TFRecord file to install as the version's
        warmup requests, or None to keep what the SavedModel already has.
      user_history: items each user engaged with in training, written as
        `features.USER_HISTORY_FILE` for `recommend` to exclude; None writes none.

    Returns:
      The path of the new version folder.
    """
    os.makedirs(model_dir, exist_ok=True)
    version = next_version(model_dir)
    staging = os.path.join(model_dir, f".{version}.incomplete")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(saved_model_dir, staging)

    if warmup_file:
        target = os.path.join(staging, features.WARMUP_FILE)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(warmup_file, target)

    if user_history is not None:
        history.write_user_history(os.path.join(staging, features.USER_HISTORY_FILE), user_history)

    source_file = os.path.join(staging, features.PUSH_SOURCE_FILE)
    os.makedirs(os.path.dirname(source_file), exist_ok=True)
    with open(source_file, "w", encoding="utf-8") as file:
        file.write(os.path.abspath(saved_model_dir) + "\n")

    final = os.path.join(model_dir, str(version))
    os.rename(staging, final)
    return final


def _record_push(pushed: types.Artifact, destination: str | None, reason: str) -> None:
    pushed.set_int_custom_property("pushed", 1 if destination else 0)
    pushed.set_string_custom_property(REASON_PROPERTY, reason)
    if destination:
        pushed.set_string_custom_property("pushed_destination", destination)
        pushed.set_string_custom_property("pushed_version", os.path.basename(destination))


def _push_one(
    name: str,
    model: types.Artifact | None,
    gate_blessing: types.Artifact | None,
    serving_blessing: types.Artifact | None,
    base_directory: str,
    pushed: types.Artifact,
    examples: types.Artifact | None = None,
) -> None:
    if model is None:
        _record_push(pushed, None, f"no new {name} model in this run")
    elif not is_blessed(gate_blessing):
        _record_push(pushed, None, f"the {name} model was not blessed by its gate")
    elif not is_blessed(serving_blessing):
        _record_push(pushed, None, "serving validation did not bless the models")
    elif serving := latest_version_from(
        os.path.join(base_directory, name), os.path.join(model.uri, SERVING_MODEL_FOLDER)
    ):
        # A cached trainer hands the same model to a rerun's pusher.
        _record_push(pushed, None, f"version {os.path.basename(serving)} already serves it")
    else:
        warmup = os.path.join(serving_blessing.uri, "warmup", name)
        destination = push_saved_model(
            os.path.join(model.uri, SERVING_MODEL_FOLDER),
            os.path.join(base_directory, name),
            warmup if os.path.isfile(warmup) else None,
            read_train_history(examples.uri) if examples is not None else None,
        )
        _record_push(pushed, destination, "blessed by its gate and by serving validation")
        logging.info("Pushed the %s model to %s", name, destination)
        return
    logging.info(
        "Did not push the %s model: %s", name, pushed.get_string_custom_property(REASON_PROPERTY)
    )


@component
def ModelPusher(  # noqa: N802 - TFX names components like classes.
    ranking_model: InputArtifact[standard_artifacts.Model],
    ranking_blessing: InputArtifact[standard_artifacts.ModelBlessing],
    serving_blessing: InputArtifact[standard_artifacts.InfraBlessing],
    pushed_ranking: OutputArtifact[standard_artifacts.PushedModel],
    pushed_retrieval: OutputArtifact[standard_artifacts.PushedModel],
    base_directory: Parameter[str],
    retrieval_model: InputArtifact[standard_artifacts.Model] = None,
    retrieval_blessing: InputArtifact[standard_artifacts.ModelBlessing] = None,
    examples: InputArtifact[standard_artifacts.Examples] = None,
) -> None:
    """Push the blessed ranking and retrieval models as TF Serving versions.

    A model is pushed only when its own gate (Evaluator for ranking, the
    retrieval gate for Stage I) and serving validation both blessed it. When
    Stage I was skipped in this run, there is no retrieval model to push.
    With `examples`, the retrieval version also gets the users' train history.
    """
    _push_one(
        features.RANKING_MODEL_NAME,
        ranking_model,
        ranking_blessing,
        serving_blessing,
        base_directory,
        pushed_ranking,
    )
    _push_one(
        features.RETRIEVAL_MODEL_NAME,
        retrieval_model,
        retrieval_blessing,
        serving_blessing,
        base_directory,
        pushed_retrieval,
        examples,
    )
