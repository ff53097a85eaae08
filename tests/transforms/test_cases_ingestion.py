"""Ingestion part of every bad-input case: rows kept, rows dropped by reason, exact errors.

Each expectation is computed here from the case file with the csv module and the
test's own classification, not with the readers' code. Each fault is also checked
as a kind: the same fault in Parquet, or in another spelling, gets the same outcome.
"""

import collections
import csv

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from transforms import features, readers
from transforms.log_mapping import ColumnMapping, LogFormatError, ReadReport


def case_rows(path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))
    return rows[0], rows[1:]


def read_all(path, format="csv", mapping=None):
    report = ReadReport()
    rows = list(readers.read_log(str(path), format, mapping, report))
    return rows, report


def as_tuples(rows) -> list[tuple]:
    return [tuple(row[name] for name in features.REQUIRED_COLUMNS) for row in rows]


def to_parquet(header, rows, path) -> str:
    """Write the case's text cells as Parquet string columns, empty cells as nulls."""
    columns = {name: [row[i] or None for row in rows] for i, name in enumerate(header)}
    pq.write_table(pa.table(columns, schema=pa.schema([(n, pa.string()) for n in header])), path)
    return str(path)


# --- empty ids --------------------------------------------------------------------------


def expected_id_drops(rows) -> tuple[list[tuple], collections.Counter]:
    kept_rows, dropped = [], collections.Counter()
    for user, item, timestamp, label in rows:
        if not user.strip():
            dropped["empty user_id"] += 1
        elif not item.strip():
            dropped["empty item_id"] += 1
        else:
            kept_rows.append((user, item, int(timestamp), int(label)))
    return kept_rows, dropped


def test_empty_ids(cases_dir):
    _, rows = case_rows(cases_dir / "empty_ids.csv")
    expected_kept, expected_dropped = expected_id_drops(rows)

    kept_rows, report = read_all(cases_dir / "empty_ids.csv")

    # Two empty or whitespace-only user ids and two item ids, so 196 of 200 rows stay.
    assert expected_dropped == {"empty user_id": 2, "empty item_id": 2}
    assert report.dropped == dict(expected_dropped)
    assert report.rows_read == 200
    assert report.rows_kept == 196
    assert as_tuples(kept_rows) == expected_kept


def test_empty_ids_in_parquet(cases_dir, tmp_path):
    header, rows = case_rows(cases_dir / "empty_ids.csv")
    _, expected_dropped = expected_id_drops(rows)
    path = to_parquet(header, rows, tmp_path / "empty_ids.parquet")

    kept_rows, report = read_all(path, "parquet")

    # Empty cells became nulls, whitespace-only cells stayed strings: both are missing ids.
    assert report.dropped == dict(expected_dropped)
    assert len(kept_rows) == 196


# --- index column -----------------------------------------------------------------------


def test_index_column(cases_dir):
    path = cases_dir / "index_column.csv"

    with pytest.raises(LogFormatError) as error:
        read_all(path)

    assert str(error.value) == (
        f"{path}: header column 1 is unnamed (''), as in a dataframe written with its index. "
        "Write the file without the index (pandas: to_csv(path, index=False)) or give the "
        "column a name."
    )


def test_index_column_kinds(cases_dir, tmp_path):
    header, rows = case_rows(cases_dir / "index_column.csv")
    # The same file as pandas reads and rewrites it with its index: "Unnamed: 0".
    renamed = tmp_path / "unnamed.csv"
    with open(renamed, "w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows([["Unnamed: 0", *header[1:]], *rows])
    parquet = to_parquet(["Unnamed: 0", *header[1:]], rows, tmp_path / "unnamed.parquet")

    for path, format in ((renamed, "csv"), (parquet, "parquet")):
        with pytest.raises(LogFormatError) as error:
            readers.column_types(str(path), format, readers.default_mapping(format))
        assert str(error.value).startswith(f"{path}: header column 1 is unnamed ('Unnamed: 0')")

    # Renaming the column in the file makes it an ignored extra column.
    named = tmp_path / "named.csv"
    with open(named, "w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows([["row", *header[1:]], *rows])
    kept_rows, report = read_all(named)
    assert as_tuples(kept_rows) == [(u, i, int(t), int(label)) for _, u, i, t, label in rows]
    assert report.rows_kept == 120


# --- labels -----------------------------------------------------------------------------

# The test's own classification of every label spelling in bad_labels.csv.
LABEL_CLASSES = {
    "0": "valid",
    "1": "valid",
    "": "missing",
    "NaN": "non-finite",
    "inf": "non-finite",
    "yes": "unreadable",
    "0x1": "unreadable",
    "2.5": "out of range",
    "-1": "out of range",
}


def test_bad_labels_binary_is_an_error(cases_dir):
    path = cases_dir / "bad_labels.csv"
    _, rows = case_rows(path)
    # Data rows start on line 2; collect the out-of-range labels in file order.
    out_of_range = [
        (n + 2, r[3]) for n, r in enumerate(rows) if LABEL_CLASSES[r[3]] == "out of range"
    ]

    with pytest.raises(LogFormatError) as error:
        read_all(path)

    assert [label for _, label in out_of_range] == ["2.5", "-1"]
    assert str(error.value) == (
        f"{path}: label column 'label' has values other than 0 and 1, which label_rule "
        f"'binary' rejects: '2.5', '-1' in 2 row(s), the first at line {out_of_range[0][0]}. "
        "To binarise a rating or score, use a threshold rule (value >= T gives label 1): "
        "label_rule=threshold:T rating=label label=; otherwise correct these values in the file."
    )


def test_bad_labels_unreadable_are_dropped(cases_dir, tmp_path):
    header, rows = case_rows(cases_dir / "bad_labels.csv")
    in_range = [r for r in rows if LABEL_CLASSES[r[3]] != "out of range"]
    path = tmp_path / "bad_labels_in_range.csv"
    with open(path, "w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows([header, *in_range])
    classes = collections.Counter(LABEL_CLASSES[r[3]] for r in in_range)

    kept_rows, report = read_all(path)

    # 198 rows: 193 with 0/1, one empty, two non-finite (NaN, inf), two unreadable (yes, 0x1).
    assert classes == {"valid": 193, "missing": 1, "non-finite": 2, "unreadable": 2}
    assert report.dropped == {"missing label": 1, "non-finite label": 2, "unreadable label": 2}
    assert as_tuples(kept_rows) == [
        (u, i, int(t), int(label)) for u, i, t, label in in_range if LABEL_CLASSES[label] == "valid"
    ]


def test_bad_labels_threshold_rule(cases_dir):
    _, rows = case_rows(cases_dir / "bad_labels.csv")
    mapping = ColumnMapping.from_cli(["label=", "rating=label", "label_rule=threshold:1"])

    kept_rows, report = read_all(cases_dir / "bad_labels.csv", mapping=mapping)

    # threshold:1 binarises 2.5 to 1 and -1 to 0; unreadable values are dropped as ratings.
    expected = [
        (u, i, int(t), int(float(label) >= 1))
        for u, i, t, label in rows
        if LABEL_CLASSES[label] in ("valid", "out of range")
    ]
    assert len(expected) == 195
    assert as_tuples(kept_rows) == expected
    assert report.dropped == {"missing rating": 1, "non-finite rating": 2, "unreadable rating": 2}


def test_bad_labels_in_parquet_floats(tmp_path):
    # The label kinds as typed values: a null, NaN, inf, then an out-of-range 2.5.
    table = pa.table(
        {
            "user_id": ["u1", "u2", "u3", "u4", "u5"],
            "item_id": ["i", "i", "i", "i", "i"],
            "timestamp": [1, 2, 3, 4, 5],
            "label": [1.0, None, float("nan"), float("inf"), 0.0],
        }
    )
    path = str(tmp_path / "labels.parquet")
    pq.write_table(table, path)
    kept_rows, report = read_all(path, "parquet")
    assert [row[features.LABEL] for row in kept_rows] == [1, 0]
    assert report.dropped == {"missing label": 1, "non-finite label": 2}

    pq.write_table(table.set_column(3, "label", pa.array([1.0, 0.0, 2.5, -1.0, 0.0])), path)
    with pytest.raises(LogFormatError) as error:
        read_all(path, "parquet")
    assert "rejects: 2.5, -1.0 in 2 row(s), the first at row 3." in str(error.value)


# --- ids --------------------------------------------------------------------------------


def test_numeric_looking_ids(cases_dir):
    _, rows = case_rows(cases_dir / "numeric_looking_ids.csv")

    kept_rows, _ = read_all(cases_dir / "numeric_looking_ids.csv")

    items = collections.Counter(row[features.ITEM_ID] for row in kept_rows)
    assert items == collections.Counter(r[1] for r in rows)
    # "007", "7" and "7.0" are three items, each counted on its own.
    assert {"007", "7", "7.0"} <= set(items)
    assert as_tuples(kept_rows) == [(u, i, int(t), int(label)) for u, i, t, label in rows]
    assert (
        readers.column_types(str(cases_dir / "numeric_looking_ids.csv"), "csv")[features.ITEM_ID]
        == "string"
    )


def test_numeric_looking_ids_in_parquet(cases_dir, tmp_path):
    header, rows = case_rows(cases_dir / "numeric_looking_ids.csv")
    path = to_parquet(header, rows, tmp_path / "ids.parquet")
    kept_rows, _ = read_all(path, "parquet")
    assert as_tuples(kept_rows) == [(u, i, int(t), int(label)) for u, i, t, label in rows]


def test_odd_id_strings(cases_dir):
    _, rows = case_rows(cases_dir / "odd_id_strings.csv")

    kept_rows, report = read_all(cases_dir / "odd_id_strings.csv")

    assert report.rows_kept == 150
    assert as_tuples(kept_rows) == [(u, i, int(t), int(label)) for u, i, t, label in rows]
    items = {row[features.ITEM_ID] for row in kept_rows}
    assert {"crème brûlée", "item, with comma", 'quote"inside', "x" * 1500} <= items
    assert "用户42" in {row[features.USER_ID] for row in kept_rows}


# --- files that ingestion reads in full (their faults are for later stages) --------------


@pytest.mark.parametrize(
    "name",
    [
        "unsorted_timestamps.csv",
        "all_items_rare.csv",
        "single_timestamp.csv",
        "partial_last_batch.csv",
        "duplicate_items_in_batch.csv",
    ],
)
def test_cases_read_in_full(cases_dir, name):
    _, rows = case_rows(cases_dir / name)

    kept_rows, report = read_all(cases_dir / name)

    # Rows keep file order: the time split, not the reader, orders them.
    assert as_tuples(kept_rows) == [(u, i, int(t), int(label)) for u, i, t, label in rows]
    assert report.rows_read == report.rows_kept == len(rows)


def test_case_sizes(cases_dir):
    # The sizes the cases describe, checked so a changed case file is noticed.
    sizes = {
        name: len(case_rows(cases_dir / name)[1])
        for name in ("partial_last_batch.csv", "duplicate_items_in_batch.csv", "all_items_rare.csv")
    }
    assert sizes == {
        "partial_last_batch.csv": 1763,
        "duplicate_items_in_batch.csv": 16,
        "all_items_rare.csv": 300,
    }
    _, rows = case_rows(cases_dir / "single_timestamp.csv")
    assert {r[2] for r in rows} == {"1700000000"}


# --- numeric side feature ---------------------------------------------------------------


def test_numeric_feature_nan_inf(cases_dir):
    _, rows = case_rows(cases_dir / "numeric_feature_nan_inf.csv")
    mapping = ColumnMapping.from_cli(["side=item_price", "numeric=item_price"])

    kept_rows, report = read_all(cases_dir / "numeric_feature_nan_inf.csv", mapping=mapping)

    # NaN, inf and empty cells are missing (None); 1e12 and negatives stay as read.
    missing = {"", "NaN", "inf"}
    expected = [None if r[4] in missing else float(r[4]) for r in rows]
    assert [row[features.ITEM_PRICE] for row in kept_rows] == expected
    assert {"1e12", "-3"} <= {r[4] for r in rows}
    assert 1e12 in expected
    assert -3.0 in expected
    assert report.rows_kept == 300
    assert report.missing_values == {features.ITEM_PRICE: sum(r[4] in missing for r in rows)}
    assert readers.column_types(str(cases_dir / "numeric_feature_nan_inf.csv"), "csv", mapping) == {
        features.USER_ID: "string",
        features.ITEM_ID: "string",
        features.TIMESTAMP: "int",
        features.LABEL: "int",
        features.ITEM_PRICE: "float",
    }


def test_numeric_feature_in_parquet(cases_dir, tmp_path):
    _, rows = case_rows(cases_dir / "numeric_feature_nan_inf.csv")
    prices = [float(r[4]) if r[4] else None for r in rows]
    table = pa.table(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": [int(r[2]) for r in rows],
            "label": [int(r[3]) for r in rows],
            "item_price": pa.array(prices, pa.float64()),
        }
    )
    path = str(tmp_path / "prices.parquet")
    pq.write_table(table, path)
    mapping = ColumnMapping.from_cli(["side=item_price", "numeric=item_price"])

    kept_rows, _ = read_all(path, "parquet", mapping)

    expected = [
        None if p is None or p != p or p in (float("inf"), -float("inf")) else p for p in prices
    ]
    assert [row[features.ITEM_PRICE] for row in kept_rows] == expected
