"""Turn source rows into canonical log rows: header checks, value parsing and drop rules.

Sources (see `transforms.log_sources`) hand over a header and rows of raw
values: strings from text formats, Python numbers, strings or bytes from typed
formats. `RowConverter` applies a `ColumnMapping` to them:

  * header: an unnamed column ("", whitespace, pandas' "Unnamed: 0"), a duplicate
    column name or a mapped column that is absent raises LogFormatError.
  * ids: kept as the exact string. An empty or whitespace-only id drops the row
    ("empty user_id" / "empty item_id"). Integer values of typed formats become
    their decimal string; float ids raise LogFormatError, because the id 7.0
    cannot be distinguished from 7.
  * timestamp: an integer, a number (fractional seconds are floored) or an ISO 8601
    date-time (naive means UTC); otherwise the row is dropped ("missing timestamp",
    "unreadable timestamp"). With timestamp=@row it is the row's position.
  * label: see the label rules in `transforms.log_mapping`. Missing, non-finite and
    unreadable labels (or ratings) drop the row ("missing label", "non-finite label",
    "unreadable label", or "... rating" under a threshold rule).
  * weight: a finite number >= 0; otherwise the row is dropped ("missing weight",
    "non-finite weight", "unreadable weight", "negative weight").
  * side features: categorical values are exact strings; numeric ones are finite
    floats. An empty, non-finite or unreadable value becomes None (the row is kept
    and counted in ReadReport.missing_values); Transform imputes it later.
  * a text row whose field count differs from the header's is dropped ("malformed row").

A row is counted once, under the first failing check in the order: field count,
user_id, item_id, timestamp, label, weight.
"""

from __future__ import annotations

import datetime
import itertools
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from transforms import features
from transforms.log_mapping import ColumnMapping, LogFormatError, ReadReport

# Rows are converted and checked in chunks of this many before any is yielded,
# so out-of-range labels stop a read early on a huge file and memory stays bounded.
CHUNK_ROWS = 10_000
MAX_LABEL_EXAMPLES = 5

MISSING = "missing"
NON_FINITE = "non-finite"
UNREADABLE = "unreadable"

_NUMBER = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*")
_INTEGER = re.compile(r"\s*[+-]?\d+\s*")
_NON_FINITE_NUMBER = re.compile(r"\s*[+-]?(?:nan|inf|infinity)\s*", re.IGNORECASE)
_PANDAS_UNNAMED = re.compile(r"Unnamed: \d+")
_INT64_MAX = 2**63 - 1


class MultiValued(tuple):
    """A feature with several values (TFRecord lists), where one value is expected."""


def number_value(value: Any) -> float | str:
    """Parse a label, rating, weight or numeric side feature strictly.

    Text must be a decimal number ("3", "-2.5", "1e12"); Python's looser forms
    such as "0x1" or "1_0" are unreadable.

    Returns:
      The finite float, or the problem: MISSING, NON_FINITE or UNREADABLE.
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        if not value.strip():
            return MISSING
        if _NUMBER.fullmatch(value):
            number = float(value)
            return number if math.isfinite(number) else NON_FINITE
        return NON_FINITE if _NON_FINITE_NUMBER.fullmatch(value) else UNREADABLE
    if value is None:
        return MISSING
    if isinstance(value, int | float):
        number = float(value)
        return number if math.isfinite(number) else NON_FINITE
    return UNREADABLE


def timestamp_value(value: Any) -> int | str:
    """Parse a timestamp into int64 seconds since the epoch.

    Accepts integers, numbers (fractional seconds are floored), dates, datetimes and
    ISO 8601 text such as "2024-01-31T12:00:00Z". A date or a datetime without a time
    zone is taken as UTC.

    Returns:
      The seconds, or the problem: MISSING or UNREADABLE.
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return _timestamp_from_text(value)
    if value is None:
        return MISSING
    if isinstance(value, datetime.datetime):
        return _seconds_from_datetime(value)
    if isinstance(value, datetime.date):
        return _seconds_from_datetime(datetime.datetime.combine(value, datetime.time()))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _seconds_from_number(value)
    return UNREADABLE


def _timestamp_from_text(text: str) -> int | str:
    if not text.strip():
        return MISSING
    if _INTEGER.fullmatch(text):
        return _seconds_from_number(int(text))
    if _NUMBER.fullmatch(text):
        return _seconds_from_number(float(text))
    try:
        return _seconds_from_datetime(datetime.datetime.fromisoformat(text.strip()))
    except ValueError:
        return UNREADABLE


def _seconds_from_number(number: int | float) -> int | str:
    if isinstance(number, float):
        if not math.isfinite(number):
            return UNREADABLE
        number = math.floor(number)
    return number if -_INT64_MAX <= number <= _INT64_MAX else UNREADABLE


def _seconds_from_datetime(moment: datetime.datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return math.floor(moment.timestamp())


def is_unnamed_column(name: str) -> bool:
    """Return True for a header name that a dataframe index or a stray delimiter produces."""
    return not name.strip() or bool(_PANDAS_UNNAMED.fullmatch(name))


def check_header(source_name: str, header: Sequence[str]) -> None:
    """Raise LogFormatError for unnamed or duplicate column names in a header.

    Raises:
      LogFormatError: with the column's 1-based position, its name and the fix.
    """
    for position, name in enumerate(header, start=1):
        if is_unnamed_column(name):
            raise LogFormatError(
                f"{source_name}: header column {position} is unnamed ({name!r}), as in a "
                "dataframe written with its index. Write the file without the index "
                "(pandas: to_csv(path, index=False)) or give the column a name."
            )
    for name in header:
        positions = [str(i) for i, other in enumerate(header, start=1) if other == name]
        if len(positions) > 1:
            raise LogFormatError(
                f"{source_name}: header column name {name!r} appears {len(positions)} times "
                f"(columns {', '.join(positions)}). Rename the columns so each name is unique."
            )


def check_mapped_columns(source_name: str, header: Sequence[str], mapping: ColumnMapping) -> None:
    """Raise LogFormatError when a column that `mapping` reads is absent from the header.

    Raises:
      LogFormatError: listing every absent column, the header, and the fix.
    """
    present = set(header)
    absent = [
        f"{source!r} ({name})"
        for name, source in mapping.source_columns().items()
        if source not in present
    ]
    if absent:
        raise LogFormatError(
            f"{source_name}: column(s) {', '.join(absent)} not found in the header "
            f"{list(header)}. Map each canonical column to a header column, on the command line "
            "as CANONICAL=COLUMN (e.g. user_id=uid, side=COLUMN:item_price) or in a mapping file."
        )


class _DroppedRowError(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class RowConverter:
    """Apply a ColumnMapping to the rows of one source (one shard)."""

    def __init__(
        self,
        source_name: str,
        header: Sequence[str],
        row_columns: Sequence[str],
        mapping: ColumnMapping,
        position_unit: str = "line",
    ):
        """Check the header and resolve where each mapped column sits in a row.

        Args:
          source_name: the file or spec, for messages.
          header: every column name of the source, checked for unnamed and duplicate names.
          row_columns: the columns each row list holds, in order (the header itself for
            text formats, the mapped columns only for typed formats).
          mapping: the column mapping to apply.
          position_unit: what a row position counts in messages ("line", "row", "record").

        Raises:
          LogFormatError: an unnamed, duplicate or absent column.
        """
        check_header(source_name, header)
        check_mapped_columns(source_name, header, mapping)
        self._source_name = source_name
        self._position_unit = position_unit
        self._mapping = mapping
        self._width = len(row_columns)
        index = {name: i for i, name in enumerate(row_columns)}
        sources = mapping.source_columns()
        self._user = index[sources[features.USER_ID]]
        self._item = index[sources[features.ITEM_ID]]
        # None: the timestamp is the row position, or the label is 1 for every row.
        self._timestamp = _index_of(index, sources, features.TIMESTAMP)
        self._label = _index_of(index, sources, features.LABEL)
        self._weight = index[mapping.weight] if mapping.weight else None
        numeric = set(mapping.numeric_features)
        self._side = [
            (name, index[source], name in numeric) for source, name in mapping.side_features
        ]
        self._threshold = mapping.threshold
        self._label_word = "label" if self._threshold is None else "rating"

    def convert(
        self, rows: Iterable[tuple[int, Sequence[Any]]], report: ReadReport
    ) -> Iterator[dict]:
        """Yield canonical rows, counting every row read, kept or dropped in `report`.

        Args:
          rows: (position, values) pairs; position is the line or row number for messages.
          report: updated as rows are read.

        Raises:
          LogFormatError: labels outside 0/1 under the binary rule (checked per chunk of
            CHUNK_ROWS rows, before that chunk is yielded), or a float id.
        """
        rows = iter(rows)
        while chunk := list(itertools.islice(rows, CHUNK_ROWS)):
            out_of_range: list[tuple[int, Any]] = []
            converted = []
            for position, values in chunk:
                report.rows_read += 1
                try:
                    converted.append(self._convert_row(position, values, report, out_of_range))
                except _DroppedRowError as dropped:
                    report.drop(dropped.reason)
            if out_of_range:
                raise self._label_range_error(out_of_range)
            for row in converted:
                report.rows_kept += 1
                yield row

    def _convert_row(
        self, position: int, values: Sequence[Any], report: ReadReport, out_of_range: list
    ) -> dict:
        if len(values) != self._width:
            raise _DroppedRowError("malformed row")
        row = {
            features.USER_ID: self._id(values[self._user], features.USER_ID, position),
            features.ITEM_ID: self._id(values[self._item], features.ITEM_ID, position),
            features.TIMESTAMP: (
                position if self._timestamp is None else self._timestamp_of(values[self._timestamp])
            ),
            features.LABEL: (
                1
                if self._label is None
                else self._label_of(position, values[self._label], out_of_range)
            ),
        }
        if self._weight is not None:
            row[features.WEIGHT] = self._weight_of(values[self._weight])
        for name, column, numeric in self._side:
            value = _numeric_side(values[column]) if numeric else _categorical_side(values[column])
            if value is None:
                report.missing_values[name] = report.missing_values.get(name, 0) + 1
            row[name] = value
        return row

    def _id(self, value: Any, name: str, position: int) -> str:
        if isinstance(value, str):
            text = value
        elif isinstance(value, bytes):
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                raise _DroppedRowError(f"unreadable {name}") from None
        elif value is None:
            text = ""
        elif isinstance(value, MultiValued):
            raise _DroppedRowError(f"multi-valued {name}")
        elif isinstance(value, int) and not isinstance(value, bool):
            text = str(value)
        else:
            raise LogFormatError(
                f"{self._source_name}: {name} at {self._position_unit} {position} is "
                f"{value!r} of type {type(value).__name__}; ids must be strings or integers, "
                "because a float id such as 7.0 cannot be distinguished from 7. "
                "Write the id column as strings."
            )
        if not text.strip():
            raise _DroppedRowError(f"empty {name}")
        return text

    def _timestamp_of(self, value: Any) -> int:
        if isinstance(value, MultiValued):
            raise _DroppedRowError(f"multi-valued {features.TIMESTAMP}")
        seconds = timestamp_value(value)
        if isinstance(seconds, str):
            raise _DroppedRowError(f"{seconds} {features.TIMESTAMP}")
        return seconds

    def _label_of(self, position: int, value: Any, out_of_range: list) -> int:
        if isinstance(value, MultiValued):
            raise _DroppedRowError(f"multi-valued {self._label_word}")
        number = number_value(value)
        if isinstance(number, str):
            raise _DroppedRowError(f"{number} {self._label_word}")
        if self._threshold is not None:
            return int(number >= self._threshold)
        if number not in (0.0, 1.0):
            out_of_range.append((position, value))
        return int(number)

    def _weight_of(self, value: Any) -> float:
        if isinstance(value, MultiValued):
            raise _DroppedRowError(f"multi-valued {features.WEIGHT}")
        number = number_value(value)
        if isinstance(number, str):
            raise _DroppedRowError(f"{number} {features.WEIGHT}")
        if number < 0:
            raise _DroppedRowError(f"negative {features.WEIGHT}")
        return number

    def _label_range_error(self, out_of_range: list[tuple[int, Any]]) -> LogFormatError:
        examples: list[str] = []
        for _, value in out_of_range:
            text = repr(value.decode() if isinstance(value, bytes) else value)
            if text not in examples and len(examples) < MAX_LABEL_EXAMPLES:
                examples.append(text)
        column = self._mapping.label
        return LogFormatError(
            f"{self._source_name}: label column {column!r} has values other than 0 and 1, "
            f"which label_rule 'binary' rejects: {', '.join(examples)} in "
            f"{len(out_of_range)} row(s), the first at {self._position_unit} "
            f"{out_of_range[0][0]}. To binarise a rating or score, use a threshold rule "
            f"(value >= T gives label 1): label_rule=threshold:T rating={column} label=; "
            "otherwise correct these values in the file."
        )


def _index_of(index: dict[str, int], sources: dict[str, str], name: str) -> int | None:
    return index[sources[name]] if name in sources else None


def _categorical_side(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value if value.strip() else None
    if value is None or isinstance(value, MultiValued):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _numeric_side(value: Any) -> float | None:
    if isinstance(value, MultiValued):
        return None
    number = number_value(value)
    return None if isinstance(number, str) else number
