"""Fail fast when tf.keras is Keras 3 instead of Keras 2 (tf_keras).

TensorFlow 2.16 and later resolve `tf.keras` to Keras 3 unless the environment
variable TF_USE_LEGACY_KERAS=1 is set before TensorFlow is first imported.
TensorFlow Recommenders 0.7.7 and TFMA work only with Keras 2, so code that
runs inside TFX components calls `ensure_legacy_keras()` before building models.
"""

from __future__ import annotations

LEGACY_KERAS_VARIABLE = "TF_USE_LEGACY_KERAS"

KERAS_3_MESSAGE = (
    "IDPT needs Keras 2 (tf_keras) but tf.keras is Keras {version}. "
    "Set TF_USE_LEGACY_KERAS=1 before anything imports TensorFlow and install "
    "tf-keras; the idpt command, make run and make test set it for you."
)


def ensure_legacy_keras() -> None:
    """Raise RuntimeError unless `tf.keras` resolves to Keras 2.

    Raises:
      RuntimeError: `tf.keras` is Keras 3, with the version found and the fix.
    """
    import tensorflow as tf

    # tf_keras exposes no __version__ on tf.keras, Keras 3 does.
    if tf.keras.__name__.startswith("tf_keras"):
        return
    version = getattr(tf.keras, "__version__", "of unknown version")
    raise RuntimeError(KERAS_3_MESSAGE.format(version=version))
