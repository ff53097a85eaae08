"""Warm start by token: vocabulary files and matrices written here, in the export format."""

import os
import re

import numpy as np
import pytest

from trainer import warm_start
from transforms import features

OOV_ROW = [99.0, 99.0]


def write_export(export_dir, table, tokens, matrix):
    """Write one table of an embedding export in the documented format."""
    table_dir = os.path.join(export_dir, table)
    os.makedirs(table_dir, exist_ok=True)
    with open(os.path.join(table_dir, features.EMBEDDING_TOKENS_FILE), "w", encoding="utf-8") as f:
        f.write("".join(token + "\n" for token in tokens))
    np.save(os.path.join(table_dir, features.EMBEDDING_MATRIX_FILE), np.asarray(matrix, np.float32))


def numbered_rows(count):
    """Row i is [10 i, 10 i + 1]; the OOV row is OOV_ROW."""
    return [[10.0 * i, 10.0 * i + 1.0] for i in range(count)] + [OOV_ROW]


def test_export_round_trip_keeps_odd_tokens(tmp_path):
    tokens = ["007", "7", "7.0", " padded ", "日本語", "a,b", 'say "hi"', "x" * 1500]
    write_export(tmp_path, "item_id", tokens, numbered_rows(len(tokens)))

    export = warm_start.read_embedding_export(str(tmp_path), "item_id")

    assert export.tokens == tokens
    assert export.dimension == 2
    assert export.matrix.dtype == np.float32
    np.testing.assert_array_equal(export.matrix, np.asarray(numbered_rows(8), np.float32))


def test_same_tokens_reordered_rows_equal_by_token(tmp_path):
    write_export(tmp_path, "item_id", ["a", "b", "c"], numbered_rows(3))
    source = warm_start.read_embedding_export(str(tmp_path), "item_id")
    initial = np.zeros((4, 2), np.float32)

    matrix, counts = warm_start.remap_rows("item_id", source, ["c", "a", "b"], initial)

    # c was row 2 -> [20, 21]; a row 0 -> [0, 1]; b row 1 -> [10, 11]; OOV copied last.
    expected = np.array([[20, 21], [0, 1], [10, 11], OOV_ROW], np.float32)
    np.testing.assert_array_equal(matrix, expected)
    assert counts == warm_start.WarmStartCounts("item_id", 3, 0, 0, 1)
    np.testing.assert_array_equal(initial, np.zeros((4, 2), np.float32))


def test_grown_and_shrunk_vocabulary(tmp_path):
    # Stage I knew a, b, c, d; the new vocabulary dropped a and c and added x, y, z.
    write_export(tmp_path, "item_id", ["a", "b", "c", "d"], numbered_rows(4))
    source = warm_start.read_embedding_export(str(tmp_path), "item_id")
    target_tokens = ["d", "x", "b", "y", "z"]
    initial = np.full((6, 2), -1.0, np.float32)
    initial[1] = [0.5, 0.25]

    matrix, counts = warm_start.remap_rows("item_id", source, target_tokens, initial)

    assert counts.copied == 2  # d, b
    assert counts.initialised == 3  # x, y, z
    assert counts.ignored == 2  # a, c
    assert counts.oov_rows_copied == 1
    np.testing.assert_array_equal(matrix[0], [30.0, 31.0])  # d was row 3
    np.testing.assert_array_equal(matrix[2], [10.0, 11.0])  # b was row 1
    np.testing.assert_array_equal(matrix[1], [0.5, 0.25])  # x keeps its initial row
    np.testing.assert_array_equal(matrix[3], [-1.0, -1.0])  # y
    np.testing.assert_array_equal(matrix[4], [-1.0, -1.0])  # z
    np.testing.assert_array_equal(matrix[5], OOV_ROW)
    assert warm_start.check_copied_rows("item_id", source, target_tokens, matrix) == 3


def test_counts_to_dict():
    counts = warm_start.WarmStartCounts("user_id", 5, 2, 1, 1)

    assert counts.to_dict() == {
        "table": "user_id",
        "copied": 5,
        "initialised": 2,
        "ignored": 1,
        "oov_rows_copied": 1,
    }


def test_dimension_mismatch_names_both_sizes(tmp_path):
    write_export(tmp_path, "user_id", ["u1", "u2"], numbered_rows(2))
    source = warm_start.read_embedding_export(str(tmp_path), "user_id")
    initial = np.zeros((3, 8), np.float32)

    expected = (
        "embedding dimension mismatch for table 'user_id': the Stage I export has dimension 2 "
        "but the Stage II table has dimension 8; set the Stage II embedding_dim to 2 or use "
        "the cold variant"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        warm_start.remap_rows("user_id", source, ["u1", "u2"], initial)


def test_changed_row_fails_the_check(tmp_path):
    write_export(tmp_path, "item_id", ["a", "b"], numbered_rows(2))
    source = warm_start.read_embedding_export(str(tmp_path), "item_id")
    matrix, _ = warm_start.remap_rows("item_id", source, ["b", "a"], np.zeros((3, 2), np.float32))
    matrix[1, 0] += 0.5  # a's row: [0, 1] -> [0.5, 1]

    expected = (
        "table 'item_id': 1 warm-started rows differ from the Stage I export, "
        "first at token 'a', largest absolute difference 0.5"
    )
    with pytest.raises(warm_start.WarmStartCheckError, match=re.escape(expected)):
        warm_start.check_copied_rows("item_id", source, ["b", "a"], matrix)


def test_changed_oov_row_fails_the_check(tmp_path):
    write_export(tmp_path, "item_id", ["a"], numbered_rows(1))
    source = warm_start.read_embedding_export(str(tmp_path), "item_id")
    matrix = np.array([[0.0, 1.0], [99.0, 97.0]], np.float32)

    with pytest.raises(warm_start.WarmStartCheckError, match="first at token '<OOV row>'"):
        warm_start.check_copied_rows("item_id", source, ["a"], matrix)


def test_matrix_without_oov_row_is_rejected(tmp_path):
    write_export(tmp_path, "item_id", ["a", "b"], numbered_rows(2)[:2])

    with pytest.raises(ValueError, match="has 2 tokens but 2 rows: expected 3"):
        warm_start.read_embedding_export(str(tmp_path), "item_id")


def test_missing_table_names_the_file(tmp_path):
    path = os.path.join(tmp_path, "item_id", features.EMBEDDING_TOKENS_FILE)

    with pytest.raises(FileNotFoundError, match=re.escape(path)):
        warm_start.read_embedding_export(str(tmp_path), "item_id")


def test_match_rows_pairs_tokens():
    source_rows, target_rows = warm_start.match_rows(["a", "b", "c"], ["c", "z", "a"])

    # Target order: c (source 2 -> target 0), then a (source 0 -> target 2).
    np.testing.assert_array_equal(source_rows, [2, 0])
    np.testing.assert_array_equal(target_rows, [0, 2])
