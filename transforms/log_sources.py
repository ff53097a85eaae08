"""Sources: open one shard of each log format as a header plus a stream of raw rows.

Each opener is a context manager yielding a `SourceTable`; rows are read
lazily, so a shard of any size is never held in memory. Text formats yield
every field as the exact string from the file (no type inference), so the ids
"007", "7" and "7.0" stay three different strings.

MovieLens 100K (`u.data`, tab-separated `user item rating timestamp`) is joined
with `u.user` (`user|age|gender|occupation|zip`) and `u.item`
(`item|title|release date|video release date|IMDb URL|19 genre flags`, ISO-8859-1)
when they sit beside it. The joined source columns are age, gender, occupation,
zip_code, title, release_date, genre (the first flagged genre in `u.genre`
order), genres (every flagged genre joined with '|') and year (of the release
date). A `ratings.dat` (`::`-separated) is joined with `users.dat` and
`movies.dat`, and a `ratings.csv` with `movies.csv`, when present.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gzip
import itertools
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

from transforms.log_mapping import LogFormatError
from transforms.log_parsing import MultiValued

MOVIELENS_RATING_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
ML100K_USER_COLUMNS = ("age", "gender", "occupation", "zip_code")
ML100K_ITEM_COLUMNS = ("title", "release_date", "genre", "genres", "year")
# u.genre lists these 19 names in flag order; used when u.genre is absent.
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
ML1M_USER_COLUMNS = ("gender", "age", "occupation", "zip_code")
MOVIES_COLUMNS = ("title", "genres", "genre", "year")
MOVIELENS_CSV_ITEM_COLUMN = "movieId"
ML100K_ENCODING = "iso-8859-1"

_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")
_PARQUET_BATCH_ROWS = 10_000
TFRECORD_HEADER_RECORDS = 100


@dataclasses.dataclass
class SourceTable:
    """One opened shard.

    Attributes:
      name: the file or spec, for messages.
      header: every column name of the source; None for an empty TFRecord shard.
      row_columns: the columns each row list holds, in order.
      rows: (position, values) pairs, read lazily.
      position_unit: what a position counts ("line", "row" or "record").
    """

    name: str
    header: list[str] | None
    row_columns: list[str]
    rows: Iterator[tuple[int, Sequence[Any]]]
    position_unit: str = "line"


@contextlib.contextmanager
def open_csv(path: str, delimiter: str = ",", encoding: str = "utf-8") -> Iterator[SourceTable]:
    """Open a CSV file (optionally .gz) whose first line is the header.

    Raises:
      LogFormatError: the file is empty, not in `encoding`, or not parseable CSV.
    """
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        encoding = "utf-8-sig"  # skips a byte order mark before the first column name
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="", encoding=encoding) as file:
        reader = csv.reader(file, delimiter=delimiter)
        header = _guard_text_errors(path, lambda: next(reader, None), 1)
        if header is None:
            raise LogFormatError(f"{path}: the file is empty, but a header line is expected.")
        yield SourceTable(path, header, header, _csv_rows(path, reader))


def _csv_rows(path: str, reader: Any) -> Iterator[tuple[int, list[str]]]:
    while True:
        values = _guard_text_errors(path, lambda: next(reader, None), reader.line_num + 1)
        if values is None:
            return
        # A blank line contains no row (csv yields []); it is skipped, not counted.
        if values:
            yield reader.line_num, values


def _guard_text_errors(path: str, read: Any, line: int) -> Any:
    try:
        return read()
    except UnicodeDecodeError as error:
        raise LogFormatError(
            f"{path}: the text from line {line} on is not valid {error.encoding} ({error.reason}). "
            "Set the mapping's encoding to the file's encoding, e.g. encoding=iso-8859-1."
        ) from error
    except csv.Error as error:
        raise LogFormatError(f"{path}: line {line} is not valid CSV: {error}.") from error


@contextlib.contextmanager
def open_movielens_100k(path: str) -> Iterator[SourceTable]:
    """Open MovieLens 100K `u.data`, joined with `u.user` and `u.item` when present."""
    folder = os.path.dirname(path)
    users = _read_ml100k_users(os.path.join(folder, "u.user"))
    items = _read_ml100k_items(os.path.join(folder, "u.item"), os.path.join(folder, "u.genre"))
    header = list(MOVIELENS_RATING_COLUMNS)
    if users is not None:
        header += ML100K_USER_COLUMNS
    if items is not None:
        header += ML100K_ITEM_COLUMNS
    with open(path, encoding=ML100K_ENCODING, newline="") as file:
        lines = _split_lines(file, "\t")
        rows = _join(lines, len(MOVIELENS_RATING_COLUMNS), users, items, 0, 1)
        yield SourceTable(path, header, header, rows)


@contextlib.contextmanager
def open_movielens_dat(path: str) -> Iterator[SourceTable]:
    """Open a MovieLens `ratings.dat`, joined with `users.dat` and `movies.dat` when present."""
    folder = os.path.dirname(path)
    users = _read_companion(os.path.join(folder, "users.dat"), "::", _ml1m_user)
    items = _read_companion(os.path.join(folder, "movies.dat"), "::", _movie)
    header = list(MOVIELENS_RATING_COLUMNS)
    if users is not None:
        header += ML1M_USER_COLUMNS
    if items is not None:
        header += MOVIES_COLUMNS
    with open(path, encoding=ML100K_ENCODING, newline="") as file:
        lines = _split_lines(file, "::")
        rows = _join(lines, len(MOVIELENS_RATING_COLUMNS), users, items, 0, 1)
        yield SourceTable(path, header, header, rows)


@contextlib.contextmanager
def open_movielens_csv(path: str) -> Iterator[SourceTable]:
    """Open a MovieLens `ratings.csv` (header userId,movieId,rating,timestamp) with movies.csv."""
    items = _read_movies_csv(os.path.join(os.path.dirname(path), "movies.csv"))
    with open_csv(path) as table:
        if items is None or MOVIELENS_CSV_ITEM_COLUMN not in table.header:
            yield table
            return
        header = table.header + list(MOVIES_COLUMNS)
        item_index = table.header.index(MOVIELENS_CSV_ITEM_COLUMN)
        rows = _join(table.rows, len(table.header), None, items, 0, item_index)
        yield SourceTable(path, header, header, rows)


def _split_lines(file: Any, separator: str) -> Iterator[tuple[int, list[str]]]:
    for number, line in enumerate(file, start=1):
        line = line.rstrip("\r\n")
        if line:
            yield number, line.split(separator)


def _join(
    rows: Iterator[tuple[int, list[str]]],
    width: int,
    users: dict[str, list[str]] | None,
    items: dict[str, list[str]] | None,
    user_index: int,
    item_index: int,
) -> Iterator[tuple[int, list[Any]]]:
    missing_user = [None] * len(next(iter(users.values()), [])) if users else []
    missing_item = [None] * len(next(iter(items.values()), [])) if items else []
    for position, values in rows:
        # A malformed row is passed on unjoined so the field-count check drops it.
        if len(values) != width:
            yield position, values
            continue
        joined = list(values)
        if users is not None:
            joined += users.get(values[user_index], missing_user)
        if items is not None:
            joined += items.get(values[item_index], missing_item)
        yield position, joined


def _read_ml100k_users(path: str) -> dict[str, list[str]] | None:
    if not os.path.isfile(path):
        return None
    users = {}
    with open(path, encoding=ML100K_ENCODING) as file:
        for line in file:
            fields = line.rstrip("\r\n").split("|")
            if len(fields) == 1 + len(ML100K_USER_COLUMNS):
                users[fields[0]] = fields[1:]
    return users


def _read_ml100k_items(path: str, genre_path: str) -> dict[str, list[str]] | None:
    if not os.path.isfile(path):
        return None
    genres = _read_ml100k_genres(genre_path)
    items = {}
    with open(path, encoding=ML100K_ENCODING) as file:
        for line in file:
            fields = line.rstrip("\r\n").split("|")
            if len(fields) != 5 + len(genres):
                continue
            flagged = [name for name, flag in zip(genres, fields[5:], strict=True) if flag == "1"]
            release = fields[2]
            year = release[-4:] if release[-4:].isdigit() else ""
            genre = flagged[0] if flagged else ""
            items[fields[0]] = [fields[1], release, genre, "|".join(flagged), year]
    return items


def _read_ml100k_genres(path: str) -> tuple[str, ...]:
    if not os.path.isfile(path):
        return ML100K_GENRES
    with open(path, encoding=ML100K_ENCODING) as file:
        pairs = [line.strip().split("|") for line in file if line.strip()]
    ordered = sorted((int(index), name) for name, index in pairs)
    return tuple(name for _, name in ordered)


def _read_companion(path: str, separator: str, parse: Any) -> dict[str, list[str]] | None:
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as file:
        data = file.read()
    # MovieLens 1M files are ISO-8859-1, later releases UTF-8: a file that is not
    # valid UTF-8 is decoded as ISO-8859-1, which accepts every byte.
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode(ML100K_ENCODING)
    table = {}
    for line in text.splitlines():
        fields = line.split(separator)
        parsed = parse(fields)
        if parsed is not None:
            table[fields[0]] = parsed
    return table


def _ml1m_user(fields: list[str]) -> list[str] | None:
    return fields[1:] if len(fields) == 1 + len(ML1M_USER_COLUMNS) else None


def _movie(fields: list[str]) -> list[str] | None:
    if len(fields) != 3:
        return None
    title, genres = fields[1], fields[2]
    match = _TITLE_YEAR.search(title)
    return [title, genres, genres.split("|")[0], match.group(1) if match else ""]


def _read_movies_csv(path: str) -> dict[str, list[str]] | None:
    if not os.path.isfile(path):
        return None
    table = {}
    with open(path, encoding="utf-8-sig", newline="") as file:
        reader = csv.reader(file)
        next(reader, None)
        for fields in reader:
            parsed = _movie(fields)
            if parsed is not None:
                table[fields[0]] = parsed
    return table


@contextlib.contextmanager
def open_parquet(path: str, needed_columns: Sequence[str]) -> Iterator[SourceTable]:
    """Open a Parquet file, reading only those of `needed_columns` that exist, in batches.

    Raises:
      LogFormatError: the file is not Parquet.
    """
    import pyarrow.lib
    import pyarrow.parquet as pq

    try:
        parquet_file = pq.ParquetFile(path)
    except pyarrow.lib.ArrowInvalid as error:
        raise LogFormatError(f"{path}: not a readable Parquet file ({error}).") from error
    with parquet_file:
        header = list(parquet_file.schema_arrow.names)
        columns = [name for name in dict.fromkeys(needed_columns) if name in header]
        rows = _parquet_rows(parquet_file, columns)
        yield SourceTable(path, header, columns, rows, "row")


def _parquet_rows(parquet_file: Any, columns: list[str]) -> Iterator[tuple[int, list[Any]]]:
    import pyarrow as pa

    position = 0
    for batch in parquet_file.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
        values = [_arrow_values(batch.column(name), pa) for name in columns]
        for row in zip(*values, strict=True):
            position += 1
            yield position, row


def _arrow_values(array: Any, pa: Any) -> list[Any]:
    if pa.types.is_timestamp(array.type):
        # Whole seconds since the epoch, floored, whatever the column's unit.
        per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[array.type.unit]
        return [None if v is None else v // per_second for v in array.cast(pa.int64()).to_pylist()]
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return array.to_pylist()


@contextlib.contextmanager
def open_tfrecord(path: str, needed_columns: Sequence[str]) -> Iterator[SourceTable]:
    """Open a file of serialized tf.train.Example records (GZIP when the name ends in .gz).

    The header is the union of the feature keys of the first TFRECORD_HEADER_RECORDS
    records, so a feature absent from one early record is a row-level drop, not a
    header error. An empty file has no header.
    """
    records = _tfrecord_examples(path)
    first = list(itertools.islice(records, TFRECORD_HEADER_RECORDS))
    if not first:
        yield SourceTable(path, None, [], iter(()), "record")
        return
    header = sorted({key for example in first for key in example.features.feature})
    columns = list(dict.fromkeys(needed_columns))
    rows = _tfrecord_rows(itertools.chain(first, records), columns)
    yield SourceTable(path, header, columns, rows, "record")


def _tfrecord_examples(path: str) -> Iterator[Any]:
    # TensorFlow is imported only for this format, because the import takes seconds.
    import tensorflow as tf

    compression = "GZIP" if path.endswith(".gz") else ""
    dataset = tf.data.TFRecordDataset(path, compression_type=compression)
    try:
        for record in dataset.as_numpy_iterator():
            yield tf.train.Example.FromString(record)
    except tf.errors.DataLossError as error:
        raise LogFormatError(f"{path}: not a readable TFRecord file ({error.message}).") from error


def _tfrecord_rows(examples: Iterator[Any], columns: list[str]) -> Iterator[tuple[int, list[Any]]]:
    for position, example in enumerate(examples, start=1):
        feature_map = example.features.feature
        yield position, [_feature_value(feature_map, name) for name in columns]


def _feature_value(feature_map: Any, name: str) -> Any:
    if name not in feature_map:
        return None
    feature = feature_map[name]
    kind = feature.WhichOneof("kind")
    if kind is None:
        return None
    values = getattr(feature, kind).value
    if len(values) == 0:
        return None
    if len(values) > 1:
        return MultiValued(values)
    return values[0]
