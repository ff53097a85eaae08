"""Warm start of embedding tables from a Stage I embedding export, matched by token.

Stage I and Stage II may see different vocabularies (a rerun on newer data adds and drops
ids), so rows are matched by token, never by index:
- copied: a token also in the export gets the export's row.
- initialised: a token only in the new vocabulary keeps its freshly initialised row.
- ignored: a token only in the export is not used.
The OOV rows, the last NUM_OOV_BUCKETS rows of both matrices, are copied as well, because
they are Stage I's embedding for every id outside its vocabulary.

The export format is `trainer.embedding_export`'s: per table, the tokens in row order and a
float32 matrix of shape (len(tokens) + NUM_OOV_BUCKETS, dimension).

This is library code: it logs nothing and returns the counts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from trainer import embedding_export
from transforms import features


@dataclasses.dataclass(frozen=True)
class WarmStartCounts:
    """Row counts of one warm-started table, by how each row was filled.

    Attributes:
      table: the table's name, e.g. "item_id".
      copied: tokens in both vocabularies, whose rows were copied from the export.
      initialised: tokens only in the new vocabulary, whose rows kept their initial values.
      ignored: tokens only in the export, whose rows were not used.
      oov_rows_copied: OOV rows copied from the export.
    """

    table: str
    copied: int
    initialised: int
    ignored: int
    oov_rows_copied: int

    def to_dict(self) -> dict[str, int | str]:
        """Return the counts as a JSON-compatible dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class EmbeddingExport:
    """One table of a Stage I embedding export.

    Attributes:
      tokens: the vocabulary in row order.
      matrix: float32 array of shape (len(tokens) + NUM_OOV_BUCKETS, dimension).
    """

    tokens: list[str]
    matrix: np.ndarray

    @property
    def dimension(self) -> int:
        """Width of the table's rows."""
        return int(self.matrix.shape[1])


class WarmStartCheckError(AssertionError):
    """A table row that should equal its Stage I row does not."""


def read_embedding_export(export_dir: str, table: str) -> EmbeddingExport:
    """Read one table of an embedding export.

    Args:
      export_dir: the EMBEDDING_EXPORT_DIR folder of a Stage I model.
      table: the table's folder name, e.g. "item_id".

    Returns:
      The table's tokens and float32 matrix.

    Raises:
      FileNotFoundError: the table's tokens or matrix file is missing.
      ValueError: the matrix's row count is not len(tokens) + NUM_OOV_BUCKETS.
    """
    tokens, matrix = embedding_export.read_table(export_dir, table)
    return EmbeddingExport(tokens=tokens, matrix=np.asarray(matrix, dtype=np.float32))


def check_dimension(table: str, export_dimension: int, table_dimension: int) -> None:
    """Raise ValueError when the export's rows and the new table's rows differ in width."""
    if export_dimension != table_dimension:
        raise ValueError(
            f"embedding dimension mismatch for table {table!r}: the Stage I export has "
            f"dimension {export_dimension} but the Stage II table has dimension "
            f"{table_dimension}; set the Stage II embedding_dim to {export_dimension} "
            "or use the cold variant"
        )


def match_rows(
    source_tokens: Sequence[str], target_tokens: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Pair the rows of tokens present in both vocabularies.

    Returns:
      (source_rows, target_rows): int64 arrays of equal length, in target order, such that
      source_tokens[source_rows[k]] == target_tokens[target_rows[k]].
    """
    source_index = {token: row for row, token in enumerate(source_tokens)}
    source_rows = []
    target_rows = []
    for target_row, token in enumerate(target_tokens):
        source_row = source_index.get(token)
        if source_row is not None:
            source_rows.append(source_row)
            target_rows.append(target_row)
    return np.asarray(source_rows, dtype=np.int64), np.asarray(target_rows, dtype=np.int64)


def remap_rows(
    table: str,
    source: EmbeddingExport,
    target_tokens: Sequence[str],
    initial_matrix: np.ndarray,
) -> tuple[np.ndarray, WarmStartCounts]:
    """Fill a new table from an export, matching rows by token.

    Args:
      table: the table's name, used in counts and errors.
      source: the Stage I export of this table.
      target_tokens: the new vocabulary in row order.
      initial_matrix: the new table's freshly initialised values, shape
        (len(target_tokens) + NUM_OOV_BUCKETS, dimension); it is not modified.

    Returns:
      (matrix, counts): a copy of `initial_matrix` with the shared tokens' rows and the OOV
      rows replaced by the export's, and how many rows of each kind there were.

    Raises:
      ValueError: the widths differ (the message names both), or `initial_matrix` does not
        have one row per token plus the OOV rows.
    """
    expected_rows = len(target_tokens) + features.NUM_OOV_BUCKETS
    if initial_matrix.ndim != 2 or initial_matrix.shape[0] != expected_rows:
        raise ValueError(
            f"table {table!r} has shape {initial_matrix.shape} but its {len(target_tokens)} "
            f"tokens need {expected_rows} rows ({features.NUM_OOV_BUCKETS} OOV rows included)"
        )
    check_dimension(table, source.dimension, int(initial_matrix.shape[1]))

    source_rows, target_rows = match_rows(source.tokens, target_tokens)
    matrix = np.array(initial_matrix, dtype=np.float32, copy=True)
    matrix[target_rows] = source.matrix[source_rows]
    # Both vocabularies keep their OOV rows last, in the same order.
    matrix[len(target_tokens) :] = source.matrix[len(source.tokens) :]

    counts = WarmStartCounts(
        table=table,
        copied=len(target_rows),
        initialised=len(target_tokens) - len(target_rows),
        ignored=len(source.tokens) - len(source_rows),
        oov_rows_copied=features.NUM_OOV_BUCKETS,
    )
    return matrix, counts


def check_copied_rows(
    table: str,
    source: EmbeddingExport,
    target_tokens: Sequence[str],
    loaded_matrix: np.ndarray,
) -> int:
    """Check that every shared token's row of the loaded table equals its export row.

    Call it on the values read back from the model after loading, so a bug anywhere between
    the export and the model's variables is caught before training.

    Returns:
      The number of rows checked: the copied rows plus the OOV rows.

    Raises:
      WarmStartCheckError: a row differs; the message names the first such token and the
        largest absolute difference.
    """
    source_rows, target_rows = match_rows(source.tokens, target_tokens)
    expected = np.concatenate([source.matrix[source_rows], source.matrix[len(source.tokens) :]])
    actual = np.concatenate([loaded_matrix[target_rows], loaded_matrix[len(target_tokens) :]])
    if np.array_equal(expected, actual):
        return int(expected.shape[0])

    differing = np.flatnonzero(np.any(expected != actual, axis=1))
    first = int(differing[0])
    token = target_tokens[target_rows[first]] if first < len(target_rows) else "<OOV row>"
    largest = float(np.max(np.abs(expected - actual)))
    raise WarmStartCheckError(
        f"table {table!r}: {len(differing)} warm-started rows differ from the Stage I export, "
        f"first at token {token!r}, largest absolute difference {largest:g}"
    )
