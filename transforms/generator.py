"""Deterministic synthetic impression log with a long tail, for runs without user data.

The log is a stream of impressions (user, item, timestamp, 0/1 click label)
over whole weeks, generated chunk by chunk so 10M rows never sit in memory:

  * items: Pareto-distributed popularity weights with tail index 1.25. Sorted,
    iid Pareto(a) weights follow Zipf's law rank^(-1/a), here with exponent 0.8;
    impressions sample items by popularity. With the default sizes the top item
    gets about 3% of impressions and the median item about 9 (measured on seed 7).
  * users: Pareto-distributed activity with tail index 2.0, so a few users have many
    impressions and most have a handful.
  * latent factors: an item's factor is its category's centroid (a unit vector in
    FACTOR_DIM dimensions) plus noise. A user's factor mixes the centroids of a
    favourite and a second category, drawn from their country's preferences.
    The click probability is sigmoid(CLICK_BIAS + AFFINITY * <user factor, item
    factor> + device effect - PRICE_EFFECT * log(price / MEDIAN_PRICE)), so clicks
    concentrate on the favourite category and a model can learn user-item affinity.
  * targeting: TARGETED_SHARE of impressions come from the user's favourite
    category (as a recommender would show), the rest from overall popularity.
  * side features: user_country, user_device, item_category (strings) and
    item_price (a number), fixed per user or item.
  * time: week w covers [EPOCH_START + w weeks, EPOCH_START + (w + 1) weeks);
    each week's rows are spread evenly over it and sorted within each chunk.
  * arrivals: `users` users and `items` items exist in week 0, and every later week
    adds NEW_ENTITY_RATE of those counts. Entity attributes depend only on the seed
    and the entity's index. So a spec with the same seed, users and items and a later
    `start_week` generates the following weeks of the same dataset: the same users
    and items, plus those that arrived since.

The same spec always gives the same rows under one NumPy version: every draw
comes from NumPy's default generator (PCG64) seeded from the spec, and NumPy
does not promise identical streams across versions.

Spec strings name a log: "synthetic:rows=100000,seed=7,weeks=6" with optional
start_week, users, items and chunk_rows. The default (100,000 rows, 6 weeks,
2,000 users and 4,000 items at week 0) is meant to keep a whole pipeline run
within a few minutes on 2 cores.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
from collections.abc import Iterator

import numpy as np

from transforms import features

SPEC_PREFIX = "synthetic"
DEFAULT_ROWS = 100_000
DEFAULT_SEED = 7
DEFAULT_WEEKS = 6
CHUNK_ROWS = 50_000
# Users and items at week 0 when the spec does not set them: one user per
# ROWS_PER_USER rows and one item per ROWS_PER_ITEM rows, at least MIN_ENTITIES.
ROWS_PER_USER = 50
ROWS_PER_ITEM = 25
MIN_ENTITIES = 20

EPOCH_START = 1_704_067_200  # 2024-01-01T00:00:00Z, a Monday
SECONDS_PER_WEEK = 7 * 24 * 3600
NEW_ENTITY_RATE = 0.05

FACTOR_DIM = 16
ITEM_POPULARITY_TAIL = 1.25
USER_ACTIVITY_TAIL = 2.0
TARGETED_SHARE = 0.3
CLICK_BIAS = -2.5
AFFINITY = 3.0
PRICE_EFFECT = 0.2
USER_FACTOR_NOISE = 0.15
ITEM_FACTOR_NOISE = 0.25

COUNTRIES = ("US", "IN", "BR", "ID", "NG", "MX", "DE", "GB", "JP", "FR", "KR", "CA")
DEVICES = ("android", "ios", "web")
DEVICE_SHARES = (0.5, 0.35, 0.15)
DEVICE_CLICK_EFFECT = (0.0, 0.15, -0.3)
CATEGORIES = (
    "news",
    "sports",
    "music",
    "movies",
    "games",
    "tech",
    "fashion",
    "food",
    "travel",
    "finance",
    "health",
    "science",
    "books",
    "kids",
    "autos",
    "home",
    "pets",
    "comedy",
    "art",
    "education",
)
MEDIAN_PRICE = 20.0
PRICE_SIGMA = 0.8

SIDE_FEATURES = (
    features.USER_COUNTRY,
    features.USER_DEVICE,
    features.ITEM_CATEGORY,
    features.ITEM_PRICE,
)
NUMERIC_FEATURES = (features.ITEM_PRICE,)
COLUMNS = features.REQUIRED_COLUMNS + SIDE_FEATURES

_BLOCK = 1024
_STREAM_GLOBAL, _STREAM_USERS, _STREAM_ITEMS, _STREAM_ROWS = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of a synthetic log.

    Attributes:
      rows: impressions over the whole window.
      seed: seed of every random draw.
      weeks: number of weeks in the window.
      start_week: first week of the window (0 = the week of EPOCH_START).
      users: users present in week 0; None: max(MIN_ENTITIES, rows // ROWS_PER_USER).
      items: items present in week 0; None: max(MIN_ENTITIES, rows // ROWS_PER_ITEM).
      chunk_rows: maximum rows generated at once (one shard).
    """

    rows: int = DEFAULT_ROWS
    seed: int = DEFAULT_SEED
    weeks: int = DEFAULT_WEEKS
    start_week: int = 0
    users: int | None = None
    items: int | None = None
    chunk_rows: int = CHUNK_ROWS

    def __post_init__(self) -> None:
        minimums = {"rows": 1, "weeks": 1, "start_week": 0, "chunk_rows": 1, "seed": 0}
        minimums.update(users=MIN_ENTITIES, items=MIN_ENTITIES)
        for name, minimum in minimums.items():
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < minimum):
                raise ValueError(
                    f"synthetic {name} must be an integer >= {minimum}, got {value!r}."
                )

    def resolved(self) -> SyntheticSpec:
        """Return the spec with users and items filled in from rows."""
        users = self.users or max(MIN_ENTITIES, self.rows // ROWS_PER_USER)
        items = self.items or max(MIN_ENTITIES, self.rows // ROWS_PER_ITEM)
        return dataclasses.replace(self, users=users, items=items)

    def to_string(self) -> str:
        """Return the spec string, with users and items resolved, that `parse` reads back."""
        spec = self.resolved()
        fields = ",".join(f"{f.name}={getattr(spec, f.name)}" for f in dataclasses.fields(spec))
        return f"{SPEC_PREFIX}:{fields}"

    @classmethod
    def parse(cls, text: str) -> SyntheticSpec:
        """Parse "synthetic" or "synthetic:key=value,..." (keys: the dataclass fields).

        Raises:
          ValueError: another prefix, an unknown key or a value that is not an integer.
        """
        prefix, _, body = text.partition(":")
        if prefix != SPEC_PREFIX:
            raise ValueError(
                f"synthetic log spec {text!r} must start with '{SPEC_PREFIX}', "
                "e.g. 'synthetic:rows=100000,seed=7,weeks=6'."
            )
        known = {field.name for field in dataclasses.fields(cls)}
        values = {}
        for item in filter(None, body.split(",")):
            key, _, value = item.partition("=")
            if key not in known or not value.strip().isdigit():
                raise ValueError(
                    f"synthetic log spec item {item!r} is invalid: expected KEY=INTEGER "
                    f"with KEY one of {sorted(known)}."
                )
            values[key] = int(value)
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class SyntheticChunk:
    """One independently generated piece of a log: rows of one week's time slice."""

    week: int
    index: int
    rows: int
    start_time: int
    end_time: int


def chunks(spec: SyntheticSpec) -> list[SyntheticChunk]:
    """Split a log into chunks of at most `spec.chunk_rows` rows, in time order."""
    pieces = []
    for relative_week in range(spec.weeks):
        week_rows = _share(spec.rows, spec.weeks, relative_week)
        count = max(1, math.ceil(week_rows / spec.chunk_rows))
        week = spec.start_week + relative_week
        week_start = EPOCH_START + week * SECONDS_PER_WEEK
        for index in range(count):
            start = week_start + _share(SECONDS_PER_WEEK, count, index, cumulative=True)
            end = week_start + _share(SECONDS_PER_WEEK, count, index + 1, cumulative=True)
            rows = _share(week_rows, count, index)
            if rows:
                pieces.append(SyntheticChunk(week, index, rows, start, end))
    return pieces


def _share(total: int, parts: int, index: int, cumulative: bool = False) -> int:
    # Integer split of `total` into `parts` nearly equal parts: part `index`, or the
    # sum of the parts before `index` when cumulative.
    if cumulative:
        return total * index // parts
    return total * (index + 1) // parts - total * index // parts


def chunk_spec(spec: SyntheticSpec, chunk: SyntheticChunk) -> str:
    """Return the shard string of one chunk, which `parse_chunk_spec` reads back."""
    return f"{spec.to_string()}#week={chunk.week},chunk={chunk.index}"


def parse_chunk_spec(text: str) -> tuple[SyntheticSpec, SyntheticChunk]:
    """Parse a shard string from `chunk_spec` into its log spec and chunk.

    Raises:
      ValueError: the string is not a chunk of a valid spec.
    """
    spec_text, _, chunk_text = text.partition("#")
    spec = SyntheticSpec.parse(spec_text)
    for chunk in chunks(spec):
        if chunk_text == f"week={chunk.week},chunk={chunk.index}":
            return spec, chunk
    raise ValueError(
        f"synthetic shard {text!r} names no chunk of its spec: expected SPEC#week=W,chunk=C "
        "as returned by list_shards."
    )


def generate_chunk(spec: SyntheticSpec, chunk: SyntheticChunk) -> dict[str, np.ndarray]:
    """Generate one chunk's rows as columns (names in COLUMNS), sorted by timestamp.

    Returns:
      user_id, item_id, user_country, user_device, item_category: string arrays;
      timestamp, label: int64; item_price: float64.
    """
    spec = spec.resolved()
    rng = np.random.default_rng([spec.seed, _STREAM_ROWS, chunk.week, chunk.index, chunk.rows])
    users = _entities(spec.seed, _STREAM_USERS, _active(spec.users, chunk.week))
    items = _entities(spec.seed, _STREAM_ITEMS, _active(spec.items, chunk.week))

    user = rng.choice(len(users["activity"]), size=chunk.rows, p=_normalised(users["activity"]))
    item = _sample_items(rng, users["favourite"][user], items)
    timestamp = np.sort(rng.integers(chunk.start_time, chunk.end_time, size=chunk.rows))
    label = (rng.random(chunk.rows) < _click_probability(users, items, user, item)).astype(np.int64)

    return {
        features.USER_ID: np.char.add("u", user.astype(str)),
        features.ITEM_ID: np.char.add("i", item.astype(str)),
        features.TIMESTAMP: timestamp.astype(np.int64),
        features.LABEL: label,
        features.USER_COUNTRY: np.asarray(COUNTRIES)[users["country"][user]],
        features.USER_DEVICE: np.asarray(DEVICES)[users["device"][user]],
        features.ITEM_CATEGORY: np.asarray(CATEGORIES)[items["category"][item]],
        features.ITEM_PRICE: items["price"][item],
    }


def _active(base_count: int, week: int) -> int:
    return base_count + _new_per_week(base_count) * week


def _new_per_week(base_count: int) -> int:
    return max(1, round(base_count * NEW_ENTITY_RATE))


def _normalised(weights: np.ndarray) -> np.ndarray:
    return weights / weights.sum()


def _sample_items(rng: np.random.Generator, favourite: np.ndarray, items: dict) -> np.ndarray:
    popularity = items["popularity"]
    chosen = rng.choice(len(popularity), size=len(favourite), p=_normalised(popularity))
    targeted = rng.random(len(favourite)) < TARGETED_SHARE
    # Targeted impressions come from the favourite category, by popularity within it.
    for category in np.unique(favourite[targeted]):
        rows = np.flatnonzero(targeted & (favourite == category))
        candidates = np.flatnonzero(items["category"] == category)
        if len(candidates):
            weights = _normalised(popularity[candidates])
            chosen[rows] = candidates[rng.choice(len(candidates), size=len(rows), p=weights)]
    return chosen


def _click_probability(users: dict, items: dict, user: np.ndarray, item: np.ndarray) -> np.ndarray:
    affinity = np.einsum("ij,ij->i", users["factor"][user], items["factor"][item])
    device = np.asarray(DEVICE_CLICK_EFFECT)[users["device"][user]]
    price = np.log(items["price"][item] / MEDIAN_PRICE)
    logits = CLICK_BIAS + AFFINITY * affinity + device - PRICE_EFFECT * price
    return 1.0 / (1.0 + np.exp(-logits))


@functools.lru_cache(maxsize=4)
def _entities(seed: int, stream: int, count: int) -> dict[str, np.ndarray]:
    # Cached because every chunk of a week uses the same entities; callers only read.
    blocks = [_entity_block(seed, stream, b) for b in range(math.ceil(count / _BLOCK))]
    return {key: np.concatenate([block[key] for block in blocks])[:count] for key in blocks[0]}


@functools.lru_cache(maxsize=4096)
def _entity_block(seed: int, stream: int, block: int) -> dict[str, np.ndarray]:
    # Attributes of entities block * _BLOCK .. (block + 1) * _BLOCK - 1 depend only
    # on (seed, stream, block), so every spec with this seed gets the same entities.
    rng = np.random.default_rng([seed, stream, block])
    world = _world(seed)
    if stream == _STREAM_USERS:
        return _user_block(rng, world)
    return _item_block(rng, world)


def _user_block(rng: np.random.Generator, world: dict) -> dict[str, np.ndarray]:
    country = rng.choice(len(COUNTRIES), size=_BLOCK, p=world["country_share"])
    preference = world["category_preference"][country]
    favourite = _sample_rows(rng, preference)
    second = _sample_rows(rng, preference)
    noise = rng.normal(0.0, USER_FACTOR_NOISE, size=(_BLOCK, FACTOR_DIM))
    centroids = world["centroids"]
    return {
        "country": country,
        "device": rng.choice(len(DEVICES), size=_BLOCK, p=DEVICE_SHARES),
        "favourite": favourite,
        "activity": rng.pareto(USER_ACTIVITY_TAIL, size=_BLOCK) + 1.0,
        "factor": centroids[favourite] + 0.5 * centroids[second] + noise,
    }


def _item_block(rng: np.random.Generator, world: dict) -> dict[str, np.ndarray]:
    category = rng.choice(len(CATEGORIES), size=_BLOCK, p=world["category_share"])
    noise = rng.normal(0.0, ITEM_FACTOR_NOISE, size=(_BLOCK, FACTOR_DIM))
    price = np.exp(rng.normal(np.log(MEDIAN_PRICE), PRICE_SIGMA, size=_BLOCK))
    return {
        "category": category,
        "popularity": rng.pareto(ITEM_POPULARITY_TAIL, size=_BLOCK) + 1.0,
        "price": np.round(price, 2),
        "factor": world["centroids"][category] + noise,
    }


def _sample_rows(rng: np.random.Generator, probabilities: np.ndarray) -> np.ndarray:
    # One categorical draw per row of a (n, k) probability matrix.
    cumulative = np.cumsum(probabilities, axis=1)
    draws = rng.random(len(probabilities))[:, None] * cumulative[:, -1:]
    return np.minimum((cumulative < draws).sum(axis=1), probabilities.shape[1] - 1)


@functools.lru_cache(maxsize=16)
def _world(seed: int) -> dict[str, np.ndarray]:
    # Quantities shared by all entities: category centroids, country and category
    # shares (Zipf-like), and each country's preference over categories.
    rng = np.random.default_rng([seed, _STREAM_GLOBAL])
    centroids = rng.normal(size=(len(CATEGORIES), FACTOR_DIM))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    country_share = 1.0 / np.arange(1, len(COUNTRIES) + 1)
    category_share = 1.0 / np.arange(1, len(CATEGORIES) + 1) ** 0.8
    preference = rng.dirichlet(np.full(len(CATEGORIES), 0.3), size=len(COUNTRIES))
    return {
        "centroids": centroids,
        "country_share": _normalised(country_share),
        "category_share": _normalised(category_share),
        "category_preference": preference,
    }


def generate_rows(spec: SyntheticSpec) -> Iterator[dict]:
    """Yield the log's rows as canonical dicts (the reader format), chunk by chunk.

    Yields:
      Dicts with the keys in COLUMNS: ids and categorical features as str, timestamp
      and label as int, item_price as float.
    """
    for chunk in chunks(spec):
        columns = generate_chunk(spec, chunk)
        names = list(columns)
        for values in zip(*(columns[name].tolist() for name in names), strict=True):
            yield dict(zip(names, values, strict=True))


def write_csv(spec: SyntheticSpec, path: str) -> int:
    """Write the log to a CSV file with a header of canonical column names.

    The file reads back through the `csv` format with the mapping
    `side=user_country side=user_device side=item_category side=item_price numeric=item_price`.

    Returns:
      The number of rows written.
    """
    written = 0
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        for chunk in chunks(spec):
            columns = generate_chunk(spec, chunk)
            rows = zip(*(columns[name].tolist() for name in COLUMNS), strict=True)
            writer.writerows(rows)
            written += chunk.rows
    return written
