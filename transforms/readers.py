"""Readers that turn raw interaction logs into canonical log rows.

Formats (FORMATS), with what `path` names and what one shard is:

  movielens-100k  the folder holding u.data (or u.data itself); one shard. Side
                  features from u.user and u.item (ISO-8859-1): user_age, user_gender,
                  user_occupation, item_title, item_genre (the first flagged genre in
                  u.genre order), item_year. Label: rating >= 4.
  movielens-dat   ratings.dat (`user::item::rating::timestamp`) or its folder; one shard.
  movielens-csv   ratings.csv (userId,movieId,rating,timestamp) or its folder; one shard.
  csv             a CSV file with a header, a folder of *.csv / *.csv.gz files, or a glob;
                  one shard per file.
  parquet         a Parquet file, a folder of *.parquet / *.pq files, or a glob.
  tfrecord        a file of tf.train.Example records, a folder of *.tfrecord(s)[.gz]
                  files, or a glob.
  synthetic       a spec string such as "synthetic:rows=100000,seed=7,weeks=6"
                  (see `transforms.generator`); one shard per generated chunk.

A `ColumnMapping` (transforms.log_mapping) maps source columns onto the canonical
columns and sets the label rule; every format has a default (`default_mapping`).
The value rules and drop reasons are in transforms.log_parsing. Rows are
streamed: a shard is read in chunks, never whole.
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Iterator

from transforms import features, generator, log_sources
from transforms.log_mapping import ColumnMapping, LogFormatError, ReadReport
from transforms.log_parsing import RowConverter

__all__ = [
    "FORMATS",
    "ColumnMapping",
    "LogFormatError",
    "ReadReport",
    "column_types",
    "default_mapping",
    "list_shards",
    "read_log",
    "read_shard",
]

MOVIELENS_100K = "movielens-100k"
MOVIELENS_DAT = "movielens-dat"
MOVIELENS_CSV = "movielens-csv"
CSV = "csv"
PARQUET = "parquet"
TFRECORD = "tfrecord"
SYNTHETIC = "synthetic"
FORMATS = (MOVIELENS_100K, MOVIELENS_DAT, MOVIELENS_CSV, CSV, PARQUET, TFRECORD, SYNTHETIC)

MOVIELENS_THRESHOLD_RULE = "threshold:4"
# The file that a MovieLens folder path stands for.
_MOVIELENS_FILES = {
    MOVIELENS_100K: "u.data",
    MOVIELENS_DAT: "ratings.dat",
    MOVIELENS_CSV: "ratings.csv",
}
# File name endings that make a file in a folder a shard of the format.
_SHARD_SUFFIXES = {
    CSV: (".csv", ".csv.gz"),
    PARQUET: (".parquet", ".pq"),
    TFRECORD: (".tfrecord", ".tfrecords", ".tfrecord.gz", ".tfrecords.gz"),
}
_GLOB_CHARACTERS = "*?["


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise ValueError(f"log format {format!r} is unknown: use one of {', '.join(FORMATS)}.")


def default_mapping(format: str) -> ColumnMapping:
    """Return the mapping a format is read with when the user gives none.

    csv, parquet and tfrecord expect the canonical column names and 0/1 labels;
    the MovieLens formats binarise the rating with rating >= 4.

    Raises:
      ValueError: an unknown format.
    """
    _check_format(format)
    if format == MOVIELENS_100K:
        return ColumnMapping(
            label=None,
            rating="rating",
            label_rule=MOVIELENS_THRESHOLD_RULE,
            side_features=(
                ("age", features.USER_AGE),
                ("gender", features.USER_GENDER),
                ("occupation", features.USER_OCCUPATION),
                ("title", features.ITEM_TITLE),
                ("genre", features.ITEM_GENRE),
                ("year", features.ITEM_YEAR),
            ),
            numeric_features=(features.USER_AGE, features.ITEM_YEAR),
        )
    if format == MOVIELENS_DAT:
        return ColumnMapping(label=None, rating="rating", label_rule=MOVIELENS_THRESHOLD_RULE)
    if format == MOVIELENS_CSV:
        return ColumnMapping(
            user_id="userId",
            item_id="movieId",
            label=None,
            rating="rating",
            label_rule=MOVIELENS_THRESHOLD_RULE,
        )
    if format == SYNTHETIC:
        return ColumnMapping(
            side_features=tuple((name, name) for name in generator.SIDE_FEATURES),
            numeric_features=generator.NUMERIC_FEATURES,
        )
    return ColumnMapping()


def list_shards(path: str, format: str) -> list[str]:
    """List the independent pieces of a log, in read order.

    Args:
      path: a file, a folder or a glob (see the module docstring), or a synthetic spec.
      format: one of FORMATS.

    Returns:
      File paths, or synthetic chunk specs.

    Raises:
      ValueError: an unknown format or an invalid synthetic spec.
      FileNotFoundError: the path, or every shard file under it, is missing.
    """
    _check_format(format)
    if format == SYNTHETIC:
        spec = generator.SyntheticSpec.parse(path)
        return [generator.chunk_spec(spec, chunk) for chunk in generator.chunks(spec)]
    if format in _MOVIELENS_FILES:
        name = _MOVIELENS_FILES[format]
        file = os.path.join(path, name) if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(
                f"{format} log not found: {file!r} is not a file. Pass the {name} file "
                "or the folder that holds it."
            )
        return [file]
    return _list_files(path, format)


def _list_files(path: str, format: str) -> list[str]:
    suffixes = _SHARD_SUFFIXES[format]
    if any(character in path for character in _GLOB_CHARACTERS):
        files = sorted(file for file in glob.glob(path) if os.path.isfile(file))
    elif os.path.isdir(path):
        names = sorted(os.listdir(path))
        files = [os.path.join(path, name) for name in names if name.endswith(suffixes)]
    elif os.path.isfile(path):
        files = [path]
    else:
        raise FileNotFoundError(f"{format} log not found: no file or folder at {path!r}.")
    if not files:
        raise FileNotFoundError(
            f"no {format} files at {path!r}: a folder must contain files ending in "
            f"{', '.join(suffixes)}, and a glob must match at least one file."
        )
    return files


def read_shard(
    shard: str,
    format: str,
    mapping: ColumnMapping | None,
    report: ReadReport,
) -> Iterator[dict]:
    """Yield the canonical rows of one shard, counting reads and drops in `report`.

    Args:
      shard: one entry of `list_shards(path, format)`.
      format: one of FORMATS.
      mapping: the column mapping; None uses `default_mapping(format)`.
      report: updated as rows are read; it counts rows read, kept and dropped by reason.

    Yields:
      Dicts with user_id and item_id (str), timestamp (int), label (int 0/1), weight
      (float) when mapped, and every mapped side feature (str, or float when numeric;
      None when missing).

    Raises:
      LogFormatError: the shard cannot be read (bad header, absent column, labels
        outside 0/1 under the binary rule, float ids, undecodable text).
    """
    _check_format(format)
    mapping = mapping or default_mapping(format)
    with _open(shard, format, mapping) as table:
        if table.header is None:
            return
        converter = RowConverter(
            table.name, table.header, table.row_columns, mapping, table.position_unit
        )
        yield from converter.convert(table.rows, report)


def read_log(
    path: str,
    format: str,
    mapping: ColumnMapping | None = None,
    report: ReadReport | None = None,
) -> Iterator[dict]:
    """Yield the canonical rows of every shard of a log, in `list_shards` order.

    Args and Raises: as `list_shards` and `read_shard`; also LogFormatError when
    timestamp=@row is mapped on a log of several files.
    """
    report = report if report is not None else ReadReport()
    shards = list_shards(path, format)
    _check_position_timestamp(path, shards, mapping or default_mapping(format))
    for shard in shards:
        yield from read_shard(shard, format, mapping, report)


def column_types(path: str, format: str, mapping: ColumnMapping | None = None) -> dict[str, str]:
    """Return canonical name -> "string" | "int" | "float" for every column rows carry.

    Types come from the mapping (numeric side features are declared), not from the
    data, so all shards agree. The first shard's header is checked against the
    mapping, so a bad header fails here, before any row is read.

    Raises:
      LogFormatError: the first shard's header is unusable for this mapping, or
        timestamp=@row is mapped on a log of several files.
      FileNotFoundError, ValueError: as `list_shards`.
    """
    mapping = mapping or default_mapping(format)
    shards = list_shards(path, format)
    _check_position_timestamp(path, shards, mapping)
    with _open(shards[0], format, mapping) as table:
        if table.header is not None:
            RowConverter(table.name, table.header, table.row_columns, mapping)
    types = {
        features.USER_ID: "string",
        features.ITEM_ID: "string",
        features.TIMESTAMP: "int",
        features.LABEL: "int",
    }
    if mapping.weight:
        types[features.WEIGHT] = "float"
    for _, name in mapping.side_features:
        types[name] = "float" if name in mapping.numeric_features else "string"
    return types


def _check_position_timestamp(path: str, shards: list[str], mapping: ColumnMapping) -> None:
    if mapping.timestamp_from_position and len(shards) > 1:
        raise LogFormatError(
            f"{path}: timestamp=@row takes each row's position in its file as the timestamp, "
            f"but this log has {len(shards)} files whose positions would overlap. Merge them "
            "into one time-ordered file, or map a timestamp column."
        )


@contextlib.contextmanager
def _open(shard: str, format: str, mapping: ColumnMapping) -> Iterator[log_sources.SourceTable]:
    needed_columns = list(mapping.source_columns().values())
    if format == SYNTHETIC:
        yield _synthetic_table(shard)
    elif format == MOVIELENS_100K:
        with log_sources.open_movielens_100k(shard) as table:
            yield table
    elif format == MOVIELENS_DAT:
        with log_sources.open_movielens_dat(shard) as table:
            yield table
    elif format == MOVIELENS_CSV:
        with log_sources.open_movielens_csv(shard) as table:
            yield table
    elif format == CSV:
        with log_sources.open_csv(shard, mapping.delimiter, mapping.encoding) as table:
            yield table
    elif format == PARQUET:
        with log_sources.open_parquet(shard, needed_columns) as table:
            yield table
    else:
        with log_sources.open_tfrecord(shard, needed_columns) as table:
            yield table


def _synthetic_table(shard: str) -> log_sources.SourceTable:
    spec, chunk = generator.parse_chunk_spec(shard)
    names = list(generator.COLUMNS)
    return log_sources.SourceTable(shard, names, names, _synthetic_rows(spec, chunk), "row")


def _synthetic_rows(spec: generator.SyntheticSpec, chunk: generator.SyntheticChunk) -> Iterator:
    # Generated on first use, so opening a shard to check its header costs nothing.
    columns = generator.generate_chunk(spec, chunk)
    values = zip(*(columns[name].tolist() for name in generator.COLUMNS), strict=True)
    yield from enumerate(values, start=1)
