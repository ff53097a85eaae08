"""Tests of the log readers: formats, mappings, label rules, value parsing and drop counts."""

import csv
import datetime
import json
import pathlib

import pytest

from transforms import features, readers
from transforms.log_mapping import ColumnMapping, LogFormatError, ReadReport
from transforms.log_parsing import CHUNK_ROWS, number_value, timestamp_value

FIXTURES = pathlib.Path(readers.__file__).parent / "fixtures" / "goodbooks-10k-sample"


def write_text(path: pathlib.Path, text: str, encoding: str = "utf-8") -> str:
    path.write_text(text, encoding=encoding)
    return str(path)


def read_all(path, format="csv", mapping=None):
    report = ReadReport()
    rows = list(readers.read_log(str(path), format, mapping, report))
    return rows, report


# --- MovieLens 100K --------------------------------------------------------------------


@pytest.mark.movielens
def test_movielens_100k_rows_and_labels(movielens_dir):
    rows, report = read_all(movielens_dir, "movielens-100k")

    # Reference: u.data read with the csv module, rating >= 4 counted by hand.
    with open(movielens_dir / "u.data", newline="") as file:
        reference = list(csv.reader(file, delimiter="\t"))
    assert report.rows_read == 100_000
    assert report.rows_kept == 100_000
    assert report.dropped == {}
    assert [row[features.USER_ID] for row in rows] == [fields[0] for fields in reference]
    assert [row[features.ITEM_ID] for row in rows] == [fields[1] for fields in reference]
    assert [row[features.TIMESTAMP] for row in rows] == [int(fields[3]) for fields in reference]
    expected_labels = [int(int(fields[2]) >= 4) for fields in reference]
    assert [row[features.LABEL] for row in rows] == expected_labels
    assert sum(expected_labels) == 55_375


@pytest.mark.movielens
def test_movielens_100k_side_features(movielens_dir):
    rows, report = read_all(movielens_dir, "movielens-100k")
    first = rows[0]

    # u.data line 1 is "196 242 3 881250949"; u.user: "196|49|M|writer|55105"; u.item 242 is
    # "Kolya (1996)", released 24-Jan-1997, with only the Comedy flag (index 5) set.
    assert first == {
        features.USER_ID: "196",
        features.ITEM_ID: "242",
        features.TIMESTAMP: 881250949,
        features.LABEL: 0,
        features.USER_AGE: 49.0,
        features.USER_GENDER: "M",
        features.USER_OCCUPATION: "writer",
        features.ITEM_TITLE: "Kolya (1996)",
        features.ITEM_GENRE: "Comedy",
        features.ITEM_YEAR: 1997.0,
    }
    # Item 267 has flag "unknown" and no release date; 9 rows of u.data rate items
    # with an empty release date, and their item_year is missing.
    unknown = next(row for row in rows if row[features.ITEM_ID] == "267")
    assert unknown[features.ITEM_GENRE] == "unknown"
    assert unknown[features.ITEM_YEAR] is None
    assert report.missing_values == {features.ITEM_YEAR: 9}


@pytest.mark.movielens
def test_movielens_100k_accented_titles(movielens_dir):
    rows, _ = read_all(movielens_dir, "movielens-100k")
    titles = {row[features.ITEM_ID]: row[features.ITEM_TITLE] for row in rows}

    # u.item is ISO-8859-1: byte 0xE9 is "é", 0xC1 is "Á", 0xF6 is "ö".
    assert titles["543"] == "Misérables, Les (1995)"
    assert titles["1633"] == "Á köldum klaka (Cold Fever) (1994)"
    raw = (movielens_dir / "u.item").read_bytes().decode("iso-8859-1")
    reference = {line.split("|")[0]: line.split("|")[1] for line in raw.splitlines()}
    assert titles == {item: reference[item] for item in titles}


@pytest.mark.movielens
def test_movielens_100k_column_types(movielens_dir):
    types = readers.column_types(str(movielens_dir), "movielens-100k")
    assert types == {
        features.USER_ID: "string",
        features.ITEM_ID: "string",
        features.TIMESTAMP: "int",
        features.LABEL: "int",
        features.USER_AGE: "float",
        features.USER_GENDER: "string",
        features.USER_OCCUPATION: "string",
        features.ITEM_TITLE: "string",
        features.ITEM_GENRE: "string",
        features.ITEM_YEAR: "float",
    }


def test_movielens_100k_tiny_folder(tmp_path):
    write_text(tmp_path / "u.data", "1\t10\t4\t100\n2\t11\t3\t200\n3\t10\tfive\t300\n1\t10\n")
    write_text(tmp_path / "u.user", "1|24|M|technician|85711\n2||F|other|94043\n")
    genres = "".join(f"{name}|{i}\n" for i, name in enumerate(["unknown", "Action", "Comedy"]))
    write_text(tmp_path / "u.genre", genres)
    items = "10|Caf\xe9 (1993)|01-Jan-1993||url|0|1|1\n11|Plain|||url|0|0|0\n"
    write_text(tmp_path / "u.item", items, encoding="iso-8859-1")

    rows, report = read_all(tmp_path, "movielens-100k")

    # Row 3's rating "five" is unreadable; row 4 has 2 fields instead of 4.
    assert report.to_dict() == {
        "rows_read": 4,
        "rows_kept": 2,
        "rows_dropped": 2,
        "dropped": {"malformed row": 1, "unreadable rating": 1},
        # User 2 has an empty age; item 11 has no flagged genre and no release date.
        "missing_values": {
            features.USER_AGE: 1,
            features.ITEM_GENRE: 1,
            features.ITEM_YEAR: 1,
        },
    }
    assert rows[0][features.ITEM_TITLE] == "Café (1993)"
    assert rows[0][features.ITEM_GENRE] == "Action"
    assert rows[0][features.LABEL] == 1
    assert rows[1][features.USER_AGE] is None
    assert rows[1][features.LABEL] == 0


# --- other MovieLens layouts ------------------------------------------------------------


def test_movielens_dat_with_companions(tmp_path):
    write_text(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    write_text(tmp_path / "users.dat", "1::F::1::10::48067\n")
    movies = "1193::Cuckoo's Nest (1975)::Drama\n661::Mis\xe9rables (1995)::Drama|War\n"
    write_text(tmp_path / "movies.dat", movies, encoding="iso-8859-1")
    mapping = ColumnMapping.from_cli(
        [
            "side=title:item_title",
            "side=genre:item_genre",
            "side=year:item_year",
            "numeric=item_year",
        ],
        base=readers.default_mapping("movielens-dat"),
    )

    rows, report = read_all(tmp_path, "movielens-dat", mapping)

    assert report.rows_kept == 2
    assert rows[0][features.LABEL] == 1
    assert rows[1] == {
        features.USER_ID: "1",
        features.ITEM_ID: "661",
        features.TIMESTAMP: 978302109,
        features.LABEL: 0,
        features.ITEM_TITLE: "Misérables (1995)",
        features.ITEM_GENRE: "Drama",
        features.ITEM_YEAR: 1995.0,
    }


def test_movielens_csv_half_stars(tmp_path):
    ratings = "userId,movieId,rating,timestamp\n1,007,3.5,1\n1,7,4.0,2\n2,7.0,4.5,3\n"
    write_text(tmp_path / "ratings.csv", ratings)
    write_text(
        tmp_path / "movies.csv", 'movieId,title,genres\n7,"Sabrina, (1995)",Comedy|Romance\n'
    )
    mapping = ColumnMapping.from_cli(
        ["side=genre:item_genre"], base=readers.default_mapping("movielens-csv")
    )

    rows, _ = read_all(tmp_path / "ratings.csv", "movielens-csv", mapping)

    # rating >= 4: 3.5 -> 0, 4.0 -> 1, 4.5 -> 1; only "7" is in movies.csv.
    assert [row[features.ITEM_ID] for row in rows] == ["007", "7", "7.0"]
    assert [row[features.LABEL] for row in rows] == [0, 1, 1]
    assert [row[features.ITEM_GENRE] for row in rows] == [None, "Comedy", None]


# --- generic CSV with a mapping: goodbooks-10k sample -----------------------------------


def test_goodbooks_ratings_with_mapping():
    mapping = ColumnMapping.from_file(FIXTURES / "ratings.mapping.json")
    rows, report = read_all(FIXTURES / "ratings.csv", "csv", mapping)

    with open(FIXTURES / "ratings.csv", newline="") as file:
        reference = list(csv.DictReader(file))
    assert len(reference) == 99
    assert report.rows_kept == 99
    assert [row[features.USER_ID] for row in rows] == [r["user_id"] for r in reference]
    assert [row[features.ITEM_ID] for row in rows] == [r["book_id"] for r in reference]
    assert [row[features.LABEL] for row in rows] == [int(int(r["rating"]) >= 4) for r in reference]
    # Ratings 4 and 5 occur 38 and 35 times in the sample.
    assert sum(row[features.LABEL] for row in rows) == 73
    # timestamp=@row: data lines are 2..100 of the file.
    assert [row[features.TIMESTAMP] for row in rows] == list(range(2, 101))


def test_goodbooks_to_read_all_positive():
    mapping = ColumnMapping.from_file(FIXTURES / "to_read.mapping.json")
    rows, report = read_all(FIXTURES / "to_read.csv", "csv", mapping)

    assert report.rows_kept == 99
    assert {row[features.LABEL] for row in rows} == {1}
    assert rows[0][features.USER_ID] == "9"
    assert rows[0][features.ITEM_ID] == "8"


def test_position_timestamp_rejects_several_files(tmp_path):
    for name in ("a.csv", "b.csv"):
        write_text(tmp_path / name, "user_id,book_id\n1,2\n")
    mapping = ColumnMapping.from_file(FIXTURES / "to_read.mapping.json")

    with pytest.raises(LogFormatError) as error:
        readers.column_types(str(tmp_path), "csv", mapping)

    assert str(error.value) == (
        f"{tmp_path}: timestamp=@row takes each row's position in its file as the timestamp, "
        "but this log has 2 files whose positions would overlap. Merge them into one "
        "time-ordered file, or map a timestamp column."
    )


# --- mapping ----------------------------------------------------------------------------


def test_mapping_json_round_trip(tmp_path):
    mapping = ColumnMapping(
        user_id="uid",
        item_id="iid",
        timestamp="ts",
        label=None,
        rating="stars",
        weight="w",
        label_rule="threshold:3.5",
        side_features=(("country", features.USER_COUNTRY), ("price", features.ITEM_PRICE)),
        numeric_features=(features.ITEM_PRICE,),
        delimiter=";",
        encoding="iso-8859-1",
    )
    assert ColumnMapping.from_json(mapping.to_json()) == mapping
    path = write_text(tmp_path / "mapping.json", mapping.to_json())
    assert ColumnMapping.from_file(path) == mapping


def test_mapping_from_cli():
    mapping = ColumnMapping.from_cli(
        [
            "user_id=uid",
            "label=",
            "rating=score",
            "label_rule=threshold:4",
            "side=country:user_country",
            "side=item_price",
            "numeric=item_price",
            "delimiter=tab",
        ]
    )
    assert mapping == ColumnMapping(
        user_id="uid",
        label=None,
        rating="score",
        label_rule="threshold:4",
        side_features=(("country", "user_country"), ("item_price", "item_price")),
        numeric_features=("item_price",),
        delimiter="\t",
    )
    assert mapping.source_columns() == {
        features.USER_ID: "uid",
        features.ITEM_ID: features.ITEM_ID,
        features.TIMESTAMP: features.TIMESTAMP,
        features.LABEL: "score",
        features.USER_COUNTRY: "country",
        features.ITEM_PRICE: "item_price",
    }


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (
            ["uid"],
            "column mapping item 'uid' is invalid: expected KEY=VALUE with KEY one of user_id, "
            "item_id, timestamp, label, rating, weight, label_rule, side, numeric, delimiter, "
            "encoding.",
        ),
        (
            ["label_rule=threshold:high"],
            "label_rule 'threshold:high' is invalid: use 'binary' (labels must be 0 or 1), "
            "'threshold:T' with a number T (rating >= T gives label 1, e.g. 'threshold:4') "
            "or 'positive' (every row has label 1).",
        ),
        (
            ["label_rule=threshold:4"],
            "label_rule 'threshold:4' reads a rating column, but rating is not set: "
            "set rating=COLUMN.",
        ),
        (
            ["label="],
            "label_rule 'binary' reads the label column, but label is not set: set "
            "label=COLUMN, or binarise a rating with label_rule=threshold:T rating=COLUMN.",
        ),
        (
            ["side=country"],
            "side feature name 'country' must start with 'user_' or 'item_' and must not be "
            "a canonical column: rename it, e.g. side=SOURCE:user_age.",
        ),
        (
            ["numeric=item_price"],
            "numeric_features ['item_price'] are not side features of this mapping "
            "(side features: []); map them first, e.g. side=SOURCE:item_price.",
        ),
    ],
)
def test_mapping_errors(items, message):
    with pytest.raises(ValueError) as error:
        ColumnMapping.from_cli(items)
    assert str(error.value) == message


def test_mapping_json_unknown_field():
    with pytest.raises(ValueError) as error:
        ColumnMapping.from_json(json.dumps({"user": "uid"}))
    assert str(error.value).startswith("unknown column mapping fields ['user']; known fields: [")


# --- value parsing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1.0),
        (" 0 ", 0.0),
        ("1.0", 1.0),
        ("1e0", 1.0),
        ("-2.5", -2.5),
        (".5", 0.5),
        ("1e12", 1e12),
        ("", "missing"),
        ("   ", "missing"),
        (None, "missing"),
        ("NaN", "non-finite"),
        ("-inf", "non-finite"),
        ("Infinity", "non-finite"),
        (float("nan"), "non-finite"),
        ("yes", "unreadable"),
        ("0x1", "unreadable"),
        ("1_0", "unreadable"),
        ("1,5", "unreadable"),
        (3, 3.0),
        (b"4", 4.0),
    ],
)
def test_number_value(text, expected):
    assert number_value(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1700000000", 1_700_000_000),
        (" 1700000000 ", 1_700_000_000),
        ("1700000000.9", 1_700_000_000),
        ("-1.5", -2),
        ("2024-01-01T00:00:00Z", 1_704_067_200),
        ("2024-01-01 01:00:00", 1_704_070_800),
        ("2024-01-01T02:00:00+02:00", 1_704_067_200),
        ("2024-01-01", 1_704_067_200),
        (1_700_000_000, 1_700_000_000),
        (1.7e9, 1_700_000_000),
        (datetime.date(2024, 1, 1), 1_704_067_200),
        (datetime.datetime(2024, 1, 1, 0, 0, 1), 1_704_067_201),
        ("", "missing"),
        ("yesterday", "unreadable"),
        ("nan", "unreadable"),
        (str(2**63), "unreadable"),
        (True, "unreadable"),
    ],
)
def test_timestamp_value(value, expected):
    assert timestamp_value(value) == expected


def test_binary_label_spellings(tmp_path):
    labels = ["1", "0", "1.0", "0.0", " 1", "1e0", "-0"]
    lines = "".join(f"u,i,{n},{label}\n" for n, label in enumerate(labels))
    path = write_text(tmp_path / "log.csv", "user_id,item_id,timestamp,label\n" + lines)

    rows, report = read_all(path)

    assert [row[features.LABEL] for row in rows] == [1, 0, 1, 0, 1, 1, 0]
    assert report.dropped == {}


def test_threshold_boundaries(tmp_path):
    ratings = ["3.999", "4", "4.0", "5", "-1", "2.5"]
    lines = "".join(f"u,i,{n},{rating}\n" for n, rating in enumerate(ratings))
    path = write_text(tmp_path / "log.csv", "user_id,item_id,timestamp,stars\n" + lines)
    mapping = ColumnMapping.from_cli(["label=", "rating=stars", "label_rule=threshold:4"])

    rows, _ = read_all(path, mapping=mapping)

    assert [row[features.LABEL] for row in rows] == [0, 1, 1, 1, 0, 0]


def test_weight_rules(tmp_path):
    weights = ["1.5", "0", "", "-1", "inf", "NaN", "heavy", "2"]
    lines = "".join(f"u,i,{n},1,{weight}\n" for n, weight in enumerate(weights))
    path = write_text(tmp_path / "log.csv", "user_id,item_id,timestamp,label,w\n" + lines)

    rows, report = read_all(path, mapping=ColumnMapping(weight="w"))

    assert [row[features.WEIGHT] for row in rows] == [1.5, 0.0, 2.0]
    assert report.dropped == {
        "missing weight": 1,
        "negative weight": 1,
        "non-finite weight": 2,
        "unreadable weight": 1,
    }
    assert readers.column_types(path, "csv", ColumnMapping(weight="w"))[features.WEIGHT] == "float"


def test_ids_exact_and_not_stripped(tmp_path):
    text = 'user_id,item_id,timestamp,label\n" u1",007,1,1\nu1 ,7.0,2,0\n"a,b","q""q",3,1\n'
    path = write_text(tmp_path / "log.csv", text)

    rows, _ = read_all(path)

    assert [(row[features.USER_ID], row[features.ITEM_ID]) for row in rows] == [
        (" u1", "007"),
        ("u1 ", "7.0"),
        ("a,b", 'q"q'),
    ]


def test_first_failing_check_counts(tmp_path):
    # One reason per row, in the order field count, user_id, item_id, timestamp, label.
    lines = [
        "u,i,1,1,extra",  # malformed row
        " ,,,",  # empty user_id (item, timestamp and label are also bad)
        "u, ,x,yes",  # empty item_id
        "u,i,,2.5",  # missing timestamp
        "u,i,soon,1",  # unreadable timestamp
        "u,i,3,",  # missing label
        "u,i,4,1",  # kept
    ]
    path = write_text(tmp_path / "log.csv", "user_id,item_id,timestamp,label\n" + "\n".join(lines))

    rows, report = read_all(path)

    assert report.to_dict() == {
        "rows_read": 7,
        "rows_kept": 1,
        "rows_dropped": 6,
        "dropped": {
            "empty item_id": 1,
            "empty user_id": 1,
            "malformed row": 1,
            "missing label": 1,
            "missing timestamp": 1,
            "unreadable timestamp": 1,
        },
        "missing_values": {},
    }
    assert rows == [{"user_id": "u", "item_id": "i", "timestamp": 4, "label": 1}]


def test_blank_lines_and_bom_skipped(tmp_path):
    text = "\ufeffuser_id,item_id,timestamp,label\nu,i,1,1\n\nu,j,2,0\n\n"
    rows, report = read_all(write_text(tmp_path / "log.csv", text))
    assert [row[features.ITEM_ID] for row in rows] == ["i", "j"]
    assert report.rows_read == 2


def test_semicolon_latin1_csv(tmp_path):
    text = "uid;iid;ts;clicked;title\nu1;i1;5;1;Caf\xe9\n"
    path = write_text(tmp_path / "log.csv", text, encoding="iso-8859-1")
    items = ["user_id=uid", "item_id=iid", "timestamp=ts", "label=clicked", "side=title:item_title"]

    with pytest.raises(LogFormatError) as error:
        read_all(path, mapping=ColumnMapping.from_cli([*items, "delimiter=;"]))
    assert str(error.value) == (
        f"{path}: the text from line 1 on is not valid utf-8 (invalid continuation byte). "
        "Set the mapping's "
        "encoding to the file's encoding, e.g. encoding=iso-8859-1."
    )

    mapping = ColumnMapping.from_cli([*items, "delimiter=;", "encoding=iso-8859-1"])
    rows, _ = read_all(path, mapping=mapping)
    assert rows[0][features.ITEM_TITLE] == "Café"


# --- header problems --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (
            "user_id,item_id,Unnamed: 4,timestamp,label",
            "header column 3 is unnamed ('Unnamed: 4'), as in a dataframe written with its "
            "index. Write the file without the index (pandas: to_csv(path, index=False)) or "
            "give the column a name.",
        ),
        (
            "user_id,item_id,timestamp,label, ",
            "header column 5 is unnamed (' '), as in a dataframe written with its index. "
            "Write the file without the index (pandas: to_csv(path, index=False)) or give "
            "the column a name.",
        ),
        (
            "user_id,item_id,timestamp,label,item_id",
            "header column name 'item_id' appears 2 times (columns 2, 5). Rename the "
            "columns so each name is unique.",
        ),
        (
            "uid,item_id,time,label",
            "column(s) 'user_id' (user_id), 'timestamp' (timestamp) not found in the header "
            "['uid', 'item_id', 'time', 'label']. Map each canonical column to a header "
            "column, on the command line as CANONICAL=COLUMN (e.g. user_id=uid, "
            "side=COLUMN:item_price) or in a mapping file.",
        ),
    ],
)
def test_header_errors(tmp_path, header, message):
    path = write_text(tmp_path / "log.csv", header + "\n")

    with pytest.raises(LogFormatError) as error:
        read_all(path)
    assert str(error.value) == f"{path}: {message}"

    # column_types checks the same header before any row is read.
    with pytest.raises(LogFormatError) as error:
        readers.column_types(path, "csv", readers.default_mapping("csv"))
    assert str(error.value) == f"{path}: {message}"


def test_empty_file(tmp_path):
    path = write_text(tmp_path / "log.csv", "")
    with pytest.raises(LogFormatError) as error:
        read_all(path)
    assert str(error.value) == f"{path}: the file is empty, but a header line is expected."


def test_out_of_range_labels_stop_by_chunk(tmp_path):
    # The bad label sits in the second chunk: the first chunk is yielded, then the read stops.
    lines = [f"u{n},i,{n},{n % 2}" for n in range(CHUNK_ROWS)] + ["u,i,1,3", "u,i,2,1"]
    path = write_text(tmp_path / "log.csv", "user_id,item_id,timestamp,label\n" + "\n".join(lines))
    report = ReadReport()
    rows = readers.read_log(path, "csv", None, report)

    first_chunk = [next(rows) for _ in range(CHUNK_ROWS)]
    with pytest.raises(LogFormatError) as error:
        next(rows)

    assert first_chunk[-1][features.USER_ID] == f"u{CHUNK_ROWS - 1}"
    # Line 1 is the header, so the bad label is on line CHUNK_ROWS + 2.
    assert str(error.value) == (
        f"{path}: label column 'label' has values other than 0 and 1, which label_rule "
        f"'binary' rejects: '3' in 1 row(s), the first at line {CHUNK_ROWS + 2}. To binarise "
        "a rating or score, use a threshold rule (value >= T gives label 1): "
        "label_rule=threshold:T rating=label label=; otherwise correct these values in the file."
    )


# --- shards -----------------------------------------------------------------------------


def test_folder_of_csv_files_is_shards(tmp_path):
    write_text(tmp_path / "part-b.csv", "user_id,item_id,timestamp,label\nu2,i,2,1\n,i,3,1\n")
    write_text(tmp_path / "part-a.csv", "user_id,item_id,timestamp,label\nu1,i,1,0\n")
    write_text(tmp_path / "notes.txt", "not a shard")

    shards = readers.list_shards(str(tmp_path), "csv")
    rows, report = read_all(tmp_path)

    assert shards == [str(tmp_path / "part-a.csv"), str(tmp_path / "part-b.csv")]
    assert readers.list_shards(str(tmp_path / "part-*.csv"), "csv") == shards
    assert [row[features.USER_ID] for row in rows] == ["u1", "u2"]
    assert report.to_dict()["dropped"] == {"empty user_id": 1}
    assert report.rows_read == 3


def test_report_merge():
    first = ReadReport(rows_read=5, rows_kept=3, dropped={"empty user_id": 2})
    second = ReadReport(
        rows_read=4, rows_kept=3, dropped={"empty user_id": 1}, missing_values={"item_price": 2}
    )
    first.merge(second)
    assert first.to_dict() == {
        "rows_read": 9,
        "rows_kept": 6,
        "rows_dropped": 3,
        "dropped": {"empty user_id": 3},
        "missing_values": {"item_price": 2},
    }


def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        readers.list_shards(str(tmp_path), "csv")
    assert str(error.value) == (
        f"no csv files at {str(tmp_path)!r}: a folder must contain files ending in .csv, "
        ".csv.gz, and a glob must match at least one file."
    )
    with pytest.raises(FileNotFoundError) as error:
        readers.list_shards(str(tmp_path), "movielens-100k")
    assert str(error.value) == (
        f"movielens-100k log not found: {str(tmp_path / 'u.data')!r} is not a file. "
        "Pass the u.data file or the folder that holds it."
    )
    with pytest.raises(ValueError) as error:
        readers.list_shards(str(tmp_path), "xlsx")
    assert str(error.value) == (
        "log format 'xlsx' is unknown: use one of movielens-100k, movielens-dat, "
        "movielens-csv, csv, parquet, tfrecord, synthetic."
    )


def test_gzip_csv(tmp_path):
    import gzip

    path = tmp_path / "log.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as file:
        file.write("user_id,item_id,timestamp,label\nu1,crème,1,1\n")
    rows, _ = read_all(path)
    assert rows == [{"user_id": "u1", "item_id": "crème", "timestamp": 1, "label": 1}]


# --- Parquet ----------------------------------------------------------------------------


def test_parquet_types(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "user_id": pa.array(["007", "7", None, "u4"]),
            "item_id": pa.array([7, 8, 9, 10], pa.int64()),
            "timestamp": pa.array([1_700_000_000_500, 1_700_000_001_000, 0, 0], pa.timestamp("ms")),
            "label": pa.array([1.0, 0.0, 1.0, float("nan")]),
            "price": pa.array([2.5, None, 1.0, 1.0]),
            "unused": pa.array(["a", "b", "c", "d"]),
        }
    )
    path = str(tmp_path / "log.parquet")
    pq.write_table(table, path)
    mapping = ColumnMapping.from_cli(["side=price:item_price", "numeric=item_price"])

    rows, report = read_all(path, "parquet", mapping)

    # Integer item ids become decimal strings; milliseconds are floored to seconds.
    assert rows == [
        {
            "user_id": "007",
            "item_id": "7",
            "timestamp": 1_700_000_000,
            "label": 1,
            "item_price": 2.5,
        },
        {
            "user_id": "7",
            "item_id": "8",
            "timestamp": 1_700_000_001,
            "label": 0,
            "item_price": None,
        },
    ]
    assert report.dropped == {"empty user_id": 1, "non-finite label": 1}
    assert report.missing_values == {features.ITEM_PRICE: 1}


def test_parquet_float_ids_rejected(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"user_id": ["u"], "item_id": [7.0], "timestamp": [1], "label": [1]})
    path = str(tmp_path / "log.parquet")
    pq.write_table(table, path)

    with pytest.raises(LogFormatError) as error:
        read_all(path, "parquet")
    assert str(error.value) == (
        f"{path}: item_id at row 1 is 7.0 of type float; ids must be strings or integers, "
        "because a float id such as 7.0 cannot be distinguished from 7. Write the id column "
        "as strings."
    )


def test_parquet_unnamed_index_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {"Unnamed: 0": [0], "user_id": ["u"], "item_id": ["i"], "timestamp": [1], "label": [1]}
    )
    path = str(tmp_path / "log.parquet")
    pq.write_table(table, path)

    with pytest.raises(LogFormatError) as error:
        read_all(path, "parquet")
    assert str(error.value).startswith(f"{path}: header column 1 is unnamed ('Unnamed: 0')")


# --- TFRecord ---------------------------------------------------------------------------


def test_tfrecord_examples(tmp_path):
    import tensorflow as tf

    def example(**values):
        feature = {}
        for key, value in values.items():
            if isinstance(value, list) and value and isinstance(value[0], bytes):
                feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=value))
            elif isinstance(value, list) and value and isinstance(value[0], float):
                feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=value))
            else:
                feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=value))
        return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()

    good = str(tmp_path / "good.tfrecord.gz")
    with tf.io.TFRecordWriter(good, options="GZIP") as writer:
        # The first record lacks the label: a row-level drop, not a header error.
        writer.write(example(user_id=[b"u4"], item_id=[b"i"], timestamp=[8]))
        writer.write(
            example(user_id=["crème".encode()], item_id=[b"007"], timestamp=[5], label=[1])
        )
        writer.write(example(user_id=[b"u2"], item_id=[7], timestamp=[6], label=[0.0]))
        writer.write(example(user_id=[b"u3"], item_id=[b"a", b"b"], timestamp=[7], label=[1]))
    bad = str(tmp_path / "bad.tfrecords")
    with tf.io.TFRecordWriter(bad) as writer:
        writer.write(example(user_id=[b"u5"], item_id=[b"i"], timestamp=[9], label=[2.0]))

    rows, report = read_all(good, "tfrecord")
    with pytest.raises(LogFormatError) as error:
        read_all(bad, "tfrecord")

    # Bytes ids are UTF-8; int64 ids become decimal strings.
    assert rows == [
        {"user_id": "crème", "item_id": "007", "timestamp": 5, "label": 1},
        {"user_id": "u2", "item_id": "7", "timestamp": 6, "label": 0},
    ]
    assert report.dropped == {"multi-valued item_id": 1, "missing label": 1}
    assert str(error.value).startswith(
        f"{bad}: label column 'label' has values other than 0 and 1, which label_rule "
        "'binary' rejects: 2.0 in 1 row(s), the first at record 1."
    )
    assert readers.list_shards(str(tmp_path), "tfrecord") == [bad, good]
