"""The embedding export: each trained table as vocabulary tokens plus a NumPy matrix.

Layout inside the Stage I serving model folder (the Model artifact's `Format-Serving`
folder, which a Stage II Trainer receives as `fn_args.base_model`):

  embeddings/<table>/tokens.txt      one UTF-8 token per line, in row order
  embeddings/<table>/embeddings.npy  float32 [len(tokens) + NUM_OOV_BUCKETS, dimension]

Row r of the matrix is the embedding of token r; the last NUM_OOV_BUCKETS rows are the OOV
rows. Tables are named by the raw feature key (`user_id`, `item_id`, side features). The rows
are the raw table values, before the towers add side features or L2-normalise. The format
is the same whatever the distribution strategy or table kind that trained the tables.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from transforms import features


def export_root(model_dir: str) -> str:
    """Return the embedding export folder inside a Stage I serving model folder."""
    return os.path.join(model_dir, features.EMBEDDING_EXPORT_DIR)


def write_table(root: str, table: str, tokens: Sequence[bytes], matrix: np.ndarray) -> str:
    """Write one table's tokens and matrix.

    Args:
      root: The export folder (`export_root(model_dir)`).
      table: Table name.
      tokens: Vocabulary tokens in row order, as UTF-8 bytes without newlines.
      matrix: [len(tokens) + NUM_OOV_BUCKETS, D] table values.

    Returns:
      The table's folder.

    Raises:
      ValueError: The matrix does not have one row per token plus the OOV rows, or a
        token contains a newline.
    """
    expected_rows = len(tokens) + features.NUM_OOV_BUCKETS
    if matrix.ndim != 2 or matrix.shape[0] != expected_rows:
        raise ValueError(
            f"Table {table!r} has matrix shape {matrix.shape} but {len(tokens)} tokens: it "
            f"needs {expected_rows} rows (tokens plus {features.NUM_OOV_BUCKETS} OOV)"
        )
    bad = [token for token in tokens if b"\n" in token]
    if bad:
        raise ValueError(
            f"Table {table!r} has tokens with newlines, e.g. {bad[0]!r}: the one-token-per-line "
            "tokens file cannot store them; remove newlines from ids before Transform"
        )

    folder = os.path.join(root, table)
    tf.io.gfile.makedirs(folder)
    with tf.io.gfile.GFile(os.path.join(folder, features.EMBEDDING_TOKENS_FILE), "wb") as out:
        out.write(b"".join(token + b"\n" for token in tokens))

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(matrix, np.float32), allow_pickle=False)
    with tf.io.gfile.GFile(os.path.join(folder, features.EMBEDDING_MATRIX_FILE), "wb") as out:
        out.write(buffer.getvalue())
    return folder


def read_table(root: str, table: str) -> tuple[list[str], np.ndarray]:
    """Read one table written by `write_table`.

    Args:
      root: The export folder.
      table: Table name.

    Returns:
      The tokens as str, in row order, and the float32 matrix.

    Raises:
      FileNotFoundError: The table folder or one of its files is missing.
      ValueError: The matrix rows do not match the tokens plus the OOV rows.
    """
    folder = os.path.join(root, table)
    tokens_path = os.path.join(folder, features.EMBEDDING_TOKENS_FILE)
    matrix_path = os.path.join(folder, features.EMBEDDING_MATRIX_FILE)
    for path in (tokens_path, matrix_path):
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"Embedding export file {path} not found")

    with tf.io.gfile.GFile(tokens_path, "rb") as source:
        tokens = source.read().decode("utf-8").split("\n")[:-1]
    with tf.io.gfile.GFile(matrix_path, "rb") as source:
        matrix = np.load(io.BytesIO(source.read()), allow_pickle=False)

    if matrix.shape[0] != len(tokens) + features.NUM_OOV_BUCKETS:
        raise ValueError(
            f"Embedding export {folder} has {len(tokens)} tokens but {matrix.shape[0]} rows: "
            f"expected {len(tokens) + features.NUM_OOV_BUCKETS}"
        )
    return tokens, matrix


def list_tables(root: str) -> list[str]:
    """Return the names of the tables in an export folder, sorted."""
    return sorted(name.rstrip("/") for name in tf.io.gfile.listdir(root))
