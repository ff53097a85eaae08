"""The per-user training history that `recommend` can exclude, read and written as JSON Lines.

The file is `features.USER_HISTORY_FILE` inside a retrieval model version folder: one UTF-8
JSON object per line, `{"user_id": "<id>", "item_ids": ["<id>", ...]}`, ids as exact
strings. A user on several lines gets the union of their items.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable, Mapping

from transforms import features


def history_path(version_dir: str | os.PathLike) -> pathlib.Path:
    """Return where the user history of a retrieval model version folder is."""
    return pathlib.Path(version_dir) / features.USER_HISTORY_FILE


def read_user_history(path: str | os.PathLike) -> dict[str, frozenset[str]]:
    """Read a user history file (format in `features.USER_HISTORY_FILE`).

    Raises:
        ValueError: a line is not a JSON object with the two keys, naming the line.
    """
    history: dict[str, frozenset[str]] = {}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                user_id = record[features.USER_ID]
                item_ids = record[features.USER_HISTORY_ITEMS_KEY]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(
                    f"{path}:{number}: expected a JSON object with '{features.USER_ID}' and "
                    f"'{features.USER_HISTORY_ITEMS_KEY}' keys, got {_excerpt(line)} ({error})"
                ) from None
            if not isinstance(user_id, str) or not isinstance(item_ids, list):
                raise ValueError(
                    f"{path}:{number}: '{features.USER_ID}' must be a string and "
                    f"'{features.USER_HISTORY_ITEMS_KEY}' a list of strings, got {_excerpt(line)}"
                )
            history[user_id] = history.get(user_id, frozenset()) | frozenset(map(str, item_ids))
    return history


def _excerpt(line: str) -> str:
    return repr(line.strip()[:200])


def write_user_history(
    path: str | os.PathLike, history: Mapping[str, Iterable[str]]
) -> pathlib.Path:
    """Write a user history file (format in `features.USER_HISTORY_FILE`), users sorted."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        for user_id in sorted(history):
            record = {
                features.USER_ID: user_id,
                features.USER_HISTORY_ITEMS_KEY: sorted(history[user_id]),
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
