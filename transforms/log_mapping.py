"""Column mapping, label rules and the read report shared by every log reader.

A `ColumnMapping` names the source column of each canonical column of the
raw log (see `transforms.features`), the rule that derives the label, and the
source columns that become user/item side features. It round-trips through JSON
(a mapping file) and can be built from `key=value` command-line items.

Label rules:
  binary       the label column must hold 0 or 1. Numeric spellings of the two
               values count ("1", "1.0", "1e0", " 0 "), because a pandas column
               with missing values is written as 0.0/1.0. Any other finite value
               makes the file unusable (LogFormatError), never a silent cast.
  threshold:T  the rating column is read as a number and binarised:
               rating >= T gives label 1, else 0 (MovieLens default T = 4).
  positive     every row is an engagement (label 1) and no label column is read,
               for logs that hold only positives, such as a list of books marked
               "to read".

A log without a timestamp column whose rows are in time order (goodbooks-10k's
ratings.csv) can set timestamp=@row: the row's position in the file (its line
number for text formats) becomes the timestamp. Positions restart in every
file, so such a log must be a single file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any

from transforms import features

BINARY_RULE = "binary"
THRESHOLD_RULE_PREFIX = "threshold:"
POSITIVE_RULE = "positive"
ROW_POSITION_TIMESTAMP = "@row"

# Keys accepted by ColumnMapping.from_cli, in help order.
CLI_KEYS = (
    "user_id",
    "item_id",
    "timestamp",
    "label",
    "rating",
    "weight",
    "label_rule",
    "side",
    "numeric",
    "delimiter",
    "encoding",
)
_OPTIONAL_COLUMN_KEYS = ("label", "rating", "weight")
_DELIMITER_ALIASES = {"tab": "\t", "\\t": "\t", "pipe": "|", "semicolon": ";", "comma": ","}


class LogFormatError(ValueError):
    """A raw log that cannot be read at all: bad header, missing column, invalid labels."""


def parse_label_rule(rule: str) -> float | None:
    """Parse a label rule into its rating threshold.

    Args:
      rule: "binary", "positive" or "threshold:T" with a finite number T.

    Returns:
      The threshold T of a threshold rule, None for "binary" and "positive".

    Raises:
      ValueError: the rule has none of the three forms, with the received text.
    """
    if rule in (BINARY_RULE, POSITIVE_RULE):
        return None
    if rule.startswith(THRESHOLD_RULE_PREFIX):
        text = rule[len(THRESHOLD_RULE_PREFIX) :]
        try:
            threshold = float(text)
        except ValueError:
            threshold = math.nan
        if math.isfinite(threshold):
            return threshold
    raise ValueError(
        f"label_rule {rule!r} is invalid: use 'binary' (labels must be 0 or 1), "
        "'threshold:T' with a number T (rating >= T gives label 1, e.g. 'threshold:4') "
        "or 'positive' (every row has label 1)."
    )


@dataclasses.dataclass(frozen=True)
class ColumnMapping:
    """Mapping of a source's columns onto the canonical log (names from `transforms.features`).

    Attributes:
      user_id: source column read as the user id, an exact string.
      item_id: source column read as the item id, an exact string.
      timestamp: source column read as int64 seconds since the epoch, or "@row" for
        the row's position in a single time-ordered file.
      label: source column holding 0/1 labels; None when another rule than "binary" is used.
      rating: source column read by a threshold rule.
      weight: optional source column of non-negative finite row weights.
      label_rule: "binary", "threshold:T" or "positive" (see the module docstring).
      side_features: (source column, canonical name) pairs; canonical names start with
        `user_` or `item_`. Source columns not named here or above are ignored.
      numeric_features: canonical side-feature names read as numbers; every other
        side feature is a categorical string. Types are declared, never inferred
        from values, so every shard of a log gets the same types.
      delimiter: field delimiter of CSV sources.
      encoding: text encoding of CSV sources (a UTF-8 byte order mark is skipped).
    """

    user_id: str = features.USER_ID
    item_id: str = features.ITEM_ID
    timestamp: str = features.TIMESTAMP
    label: str | None = features.LABEL
    rating: str | None = None
    weight: str | None = None
    label_rule: str = BINARY_RULE
    side_features: tuple[tuple[str, str], ...] = ()
    numeric_features: tuple[str, ...] = ()
    delimiter: str = ","
    encoding: str = "utf-8"

    def __post_init__(self) -> None:
        # JSON gives lists; freeze them so mappings stay hashable and comparable.
        side = tuple((str(source), str(name)) for source, name in self.side_features)
        object.__setattr__(self, "side_features", side)
        object.__setattr__(self, "numeric_features", tuple(self.numeric_features))
        self._validate()

    def _validate(self) -> None:
        threshold = parse_label_rule(self.label_rule)
        if self.label_rule == BINARY_RULE and not self.label:
            raise ValueError(
                "label_rule 'binary' reads the label column, but label is not set: "
                "set label=COLUMN, or binarise a rating with label_rule=threshold:T rating=COLUMN."
            )
        if threshold is not None and not self.rating:
            raise ValueError(
                f"label_rule {self.label_rule!r} reads a rating column, but rating is not set: "
                "set rating=COLUMN."
            )
        for field in (features.USER_ID, features.ITEM_ID, features.TIMESTAMP):
            if not getattr(self, field):
                raise ValueError(
                    f"{field} must name a source column, got {getattr(self, field)!r}."
                )
        self._validate_side_features()
        if len(self.delimiter) != 1:
            raise ValueError(
                f"delimiter must be one character, got {self.delimiter!r} "
                "(on the command line 'tab' or '\\t' give a tab)."
            )

    def _validate_side_features(self) -> None:
        names = [name for _, name in self.side_features]
        for name in names:
            if not features.is_side_feature(name):
                raise ValueError(
                    f"side feature name {name!r} must start with "
                    f"{features.USER_FEATURE_PREFIX!r} or {features.ITEM_FEATURE_PREFIX!r} "
                    "and must not be a canonical column: rename it, e.g. side=SOURCE:user_age."
                )
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"side feature names {duplicates} are mapped more than once.")
        undeclared = [name for name in self.numeric_features if name not in names]
        if undeclared:
            raise ValueError(
                f"numeric_features {undeclared} are not side features of this mapping "
                f"(side features: {names}); map them first, e.g. side=SOURCE:{undeclared[0]}."
            )

    @property
    def threshold(self) -> float | None:
        """Rating threshold of a threshold rule, None under the other rules."""
        return parse_label_rule(self.label_rule)

    @property
    def all_positive(self) -> bool:
        """True when every row gets label 1 without reading a column."""
        return self.label_rule == POSITIVE_RULE

    @property
    def timestamp_from_position(self) -> bool:
        """True when the timestamp is the row's position in the file (timestamp=@row)."""
        return self.timestamp == ROW_POSITION_TIMESTAMP

    def source_columns(self) -> dict[str, str]:
        """Return canonical name -> source column for every column this mapping reads."""
        columns = {features.USER_ID: self.user_id, features.ITEM_ID: self.item_id}
        if not self.timestamp_from_position:
            columns[features.TIMESTAMP] = self.timestamp
        if self.threshold is not None:
            # The rating is read under the label's canonical name and binarised.
            columns[features.LABEL] = self.rating
        elif not self.all_positive:
            columns[features.LABEL] = self.label
        if self.weight:
            columns[features.WEIGHT] = self.weight
        for source, name in self.side_features:
            columns[name] = source
        return columns

    def to_json(self) -> str:
        """Return the mapping as a JSON object that `from_json` reads back unchanged."""
        fields = dataclasses.asdict(self)
        fields["side_features"] = [list(pair) for pair in self.side_features]
        fields["numeric_features"] = list(self.numeric_features)
        return json.dumps(fields, indent=2, sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> ColumnMapping:
        """Build a mapping from a JSON object with a subset of the dataclass fields.

        Raises:
          ValueError: invalid JSON, an unknown field, or an invalid mapping.
        """
        fields = json.loads(text)
        if not isinstance(fields, dict):
            raise ValueError(
                f"a column mapping must be a JSON object, got {type(fields).__name__}."
            )
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(
                f"unknown column mapping fields {unknown}; known fields: {sorted(known)}."
            )
        return cls(**fields)

    @classmethod
    def from_file(cls, path: str | pathlib.Path) -> ColumnMapping:
        """Read a mapping from a JSON file (see `to_json` for the layout).

        Raises:
          ValueError: the file's content is not a valid mapping; the message names the file.
        """
        text = pathlib.Path(path).read_text(encoding="utf-8")
        try:
            return cls.from_json(text)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error

    @classmethod
    def from_cli(cls, items: list[str], base: ColumnMapping | None = None) -> ColumnMapping:
        """Build a mapping from `key=value` items, applied over `base` (default: canonical names).

        Keys: user_id, item_id, timestamp, label, rating, weight (a source column; an empty
        value unsets label, rating or weight; timestamp=@row uses the row position),
        label_rule ("binary", "threshold:T" or "positive"),
        side ("SOURCE:user_x", or "user_x" when the source column has that name; repeat the
        key for several; the first side item replaces the base's side features), numeric
        (comma-separated canonical side-feature names read as numbers), delimiter ("tab"
        is accepted) and encoding.

        Example: ["user_id=uid", "item_id=book_id", "label=", "rating=stars",
        "label_rule=threshold:4", "side=country:user_country"].

        Raises:
          ValueError: an item without '=', an unknown key, or an invalid mapping.
        """
        fields = dataclasses.asdict(base or cls())
        side: list[tuple[str, str]] | None = None
        numeric: list[str] | None = None
        for item in items:
            key, separator, value = item.partition("=")
            if not separator or key not in CLI_KEYS:
                raise ValueError(
                    f"column mapping item {item!r} is invalid: expected KEY=VALUE "
                    f"with KEY one of {', '.join(CLI_KEYS)}."
                )
            if key == "side":
                side = (side or []) + ([_parse_side_item(value)] if value else [])
            elif key == "numeric":
                numeric = (numeric or []) + [name for name in value.split(",") if name]
            elif key == "delimiter":
                fields[key] = _DELIMITER_ALIASES.get(value, value)
            elif key in _OPTIONAL_COLUMN_KEYS:
                fields[key] = value or None
            else:
                fields[key] = value
        if side is not None:
            fields["side_features"] = tuple(side)
            fields["numeric_features"] = ()
        if numeric is not None:
            fields["numeric_features"] = tuple(numeric)
        return cls(**fields)


def _parse_side_item(value: str) -> tuple[str, str]:
    # Canonical names never contain ':', so the last ':' separates the source column.
    source, separator, name = value.rpartition(":")
    if not separator:
        return value, value
    return source, name


@dataclasses.dataclass
class ReadReport:
    """Counts of one read: rows read, kept, dropped by reason, and missing side values.

    Every row read is either kept or dropped under exactly one reason, so
    rows_read == rows_kept + sum(dropped.values()) once a read has finished.
    `missing_values` counts, per side feature, kept rows whose value is missing
    (empty, non-finite or unreadable); those rows are kept with the value None.
    """

    rows_read: int = 0
    rows_kept: int = 0
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    missing_values: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def rows_dropped(self) -> int:
        """Number of rows dropped for any reason."""
        return sum(self.dropped.values())

    def drop(self, reason: str) -> None:
        """Count one dropped row under `reason`."""
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def merge(self, other: ReadReport) -> None:
        """Add another report's counts (e.g. another shard's) to this one."""
        self.rows_read += other.rows_read
        self.rows_kept += other.rows_kept
        for reason, count in other.dropped.items():
            self.dropped[reason] = self.dropped.get(reason, 0) + count
        for name, count in other.missing_values.items():
            self.missing_values[name] = self.missing_values.get(name, 0) + count

    def to_dict(self) -> dict[str, Any]:
        """Return the counts as plain JSON-ready values, reasons sorted by name."""
        return {
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "rows_dropped": self.rows_dropped,
            "dropped": dict(sorted(self.dropped.items())),
            "missing_values": dict(sorted(self.missing_values.items())),
        }
