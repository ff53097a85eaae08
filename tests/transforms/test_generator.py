"""Tests of the synthetic log generator: determinism, shape of the log, and its reader."""

import collections
import hashlib

import numpy as np
import pytest

from transforms import features, generator, readers
from transforms.generator import SyntheticSpec
from transforms.log_mapping import ColumnMapping, ReadReport


def checksum(rows) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(repr(sorted(row.items())).encode())
    return digest.hexdigest()


def columns_of(spec: SyntheticSpec) -> dict[str, np.ndarray]:
    pieces = [generator.generate_chunk(spec, chunk) for chunk in generator.chunks(spec)]
    return {name: np.concatenate([piece[name] for piece in pieces]) for name in generator.COLUMNS}


def test_same_seed_same_rows():
    spec = SyntheticSpec(rows=20_000, seed=3, weeks=2, chunk_rows=3_000)

    first = checksum(generator.generate_rows(spec))
    generator._entity_block.cache_clear()
    generator._entities.cache_clear()
    second = checksum(generator.generate_rows(spec))
    other_seed = checksum(generator.generate_rows(SyntheticSpec(rows=20_000, seed=4, weeks=2)))

    assert first == second
    assert first != other_seed


def test_spec_string_round_trip():
    spec = SyntheticSpec.parse("synthetic:rows=200000,seed=7,weeks=6")

    # users and items default to rows // 50 and rows // 25.
    assert spec.to_string() == (
        "synthetic:rows=200000,seed=7,weeks=6,start_week=0,users=4000,items=8000,chunk_rows=50000"
    )
    assert SyntheticSpec.parse(spec.to_string()) == spec.resolved()
    assert SyntheticSpec.parse("synthetic") == SyntheticSpec()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "synth:rows=5",
            "synthetic log spec 'synth:rows=5' must start with 'synthetic', "
            "e.g. 'synthetic:rows=100000,seed=7,weeks=6'.",
        ),
        (
            "synthetic:rows=1e6",
            "synthetic log spec item 'rows=1e6' is invalid: expected KEY=INTEGER with KEY one "
            "of ['chunk_rows', 'items', 'rows', 'seed', 'start_week', 'users', 'weeks'].",
        ),
        ("synthetic:weeks=0", "synthetic weeks must be an integer >= 1, got 0."),
        ("synthetic:users=5", "synthetic users must be an integer >= 20, got 5."),
    ],
)
def test_spec_errors(text, message):
    with pytest.raises(ValueError) as error:
        SyntheticSpec.parse(text)
    assert str(error.value) == message


def test_chunks_split_weeks():
    spec = SyntheticSpec(rows=10, weeks=3, start_week=2, chunk_rows=3)

    pieces = generator.chunks(spec)

    # Week shares: 10 * 1 // 3 = 3, 20 // 3 - 3 = 3, 10 - 6 = 4; a week of 4 rows with
    # chunk_rows=3 is 2 chunks of 2 rows, each covering half of the week.
    week = generator.SECONDS_PER_WEEK
    start = generator.EPOCH_START + 2 * week
    assert [(c.week, c.index, c.rows) for c in pieces] == [
        (2, 0, 3),
        (3, 0, 3),
        (4, 0, 2),
        (4, 1, 2),
    ]
    assert (pieces[0].start_time, pieces[0].end_time) == (start, start + week)
    assert (pieces[2].start_time, pieces[2].end_time) == (
        start + 2 * week,
        start + 2 * week + week // 2,
    )
    assert pieces[3].end_time == start + 3 * week


def test_log_is_time_ordered_over_its_weeks():
    spec = SyntheticSpec(rows=30_000, weeks=3, start_week=1, chunk_rows=7_000)
    timestamps = columns_of(spec)[features.TIMESTAMP]

    assert len(timestamps) == 30_000
    assert np.all(np.diff(timestamps) >= 0)
    assert timestamps.min() >= generator.EPOCH_START + generator.SECONDS_PER_WEEK
    assert timestamps.max() < generator.EPOCH_START + 4 * generator.SECONDS_PER_WEEK


def test_item_popularity_is_zipf_like():
    columns = columns_of(SyntheticSpec(rows=200_000))
    _, counts = np.unique(columns[features.ITEM_ID], return_counts=True)
    counts = np.sort(counts)[::-1]

    # Sorted iid Pareto(1.25) weights follow rank^(-1 / 1.25) = rank^(-0.8); fit the
    # log-log slope over ranks 10..1000, away from the noisy head and the sparse tail.
    ranks = np.arange(10, 1001)
    slope = np.polyfit(np.log(ranks), np.log(counts[ranks - 1]), 1)[0]
    assert -1.0 < slope < -0.6
    # A long tail: many items have fewer than 5 impressions, the top 1% hold > 15%.
    assert np.mean(counts < 5) > 0.1
    assert counts[: len(counts) // 100].sum() / counts.sum() > 0.15


def test_user_activity_is_heavy_tailed():
    columns = columns_of(SyntheticSpec(rows=100_000))
    _, counts = np.unique(columns[features.USER_ID], return_counts=True)

    # Pareto(2) activity over ~2,000 users: the most active user is about sqrt(2000) = 45
    # times the least active, and about 30 times the median (median weight sqrt(2)).
    assert counts.max() > 10 * np.median(counts)


def test_clicks_follow_latent_affinity():
    columns = columns_of(SyntheticSpec(rows=100_000))
    users, categories = columns[features.USER_ID], columns[features.ITEM_CATEGORY]
    labels = columns[features.LABEL]
    half = len(labels) // 2

    # Each user's favourite category: the most clicked one in the first half of the log.
    clicked = collections.defaultdict(collections.Counter)
    for user, category, label in zip(users[:half], categories[:half], labels[:half], strict=True):
        clicked[user][category] += label
    favourite = {user: counter.most_common(1)[0][0] for user, counter in clicked.items()}
    match = np.array(
        [favourite.get(u) == c for u, c in zip(users[half:], categories[half:], strict=True)]
    )

    # In the second half, impressions of the favourite category are clicked far more often.
    assert set(np.unique(labels)) == {0, 1}
    assert 0.1 < labels.mean() < 0.5
    assert labels[half:][match].mean() > 2 * labels[half:][~match].mean()


def test_side_features_fixed_per_entity():
    columns = columns_of(SyntheticSpec(rows=20_000))
    for key, feature in (
        (features.USER_ID, features.USER_COUNTRY),
        (features.USER_ID, features.USER_DEVICE),
        (features.ITEM_ID, features.ITEM_CATEGORY),
        (features.ITEM_ID, features.ITEM_PRICE),
    ):
        pairs = set(zip(columns[key].tolist(), columns[feature].tolist(), strict=True))
        assert len(pairs) == len(set(columns[key].tolist())), feature
    assert set(columns[features.USER_DEVICE].tolist()) == set(generator.DEVICES)
    assert np.all(columns[features.ITEM_PRICE] > 0)


def test_following_weeks_share_the_universe():
    first = SyntheticSpec(rows=60_000, weeks=6, users=1_000, items=2_000)
    later = SyntheticSpec(rows=10_000, weeks=1, start_week=6, users=1_000, items=2_000)
    before, after = columns_of(first), columns_of(later)

    # Every week adds 5% of the week-0 users: 50. By week 6, users u0..u1299 exist and
    # u1250..u1299 arrived in week 6.
    after_users = {int(u[1:]) for u in after[features.USER_ID].tolist()}
    before_users = {int(u[1:]) for u in before[features.USER_ID].tolist()}
    assert max(before_users) < 1_250
    assert max(after_users) < 1_300
    assert any(u >= 1_250 for u in after_users)
    assert len(after_users & before_users) > 500

    # The same user keeps their side features across the two logs.
    country_before = dict(zip(before[features.USER_ID], before[features.USER_COUNTRY], strict=True))
    country_after = dict(zip(after[features.USER_ID], after[features.USER_COUNTRY], strict=True))
    shared = set(country_before) & set(country_after)
    assert all(country_before[u] == country_after[u] for u in shared)

    week_6 = generator.EPOCH_START + 6 * generator.SECONDS_PER_WEEK
    assert after[features.TIMESTAMP].min() >= week_6


def test_write_csv_reads_back(tmp_path):
    spec = SyntheticSpec(rows=5_000, weeks=2, chunk_rows=2_000)
    path = str(tmp_path / "log.csv")

    written = generator.write_csv(spec, path)
    mapping = ColumnMapping.from_cli(
        [*(f"side={name}" for name in generator.SIDE_FEATURES), "numeric=item_price"]
    )
    report = ReadReport()
    rows = list(readers.read_log(path, "csv", mapping, report))

    assert written == 5_000
    assert report.rows_kept == 5_000
    assert checksum(rows) == checksum(generator.generate_rows(spec))


def test_synthetic_format_in_readers():
    path = "synthetic:rows=12000,seed=5,weeks=2,chunk_rows=4000"
    spec = SyntheticSpec.parse(path)

    shards = readers.list_shards(path, "synthetic")
    report = ReadReport()
    rows = list(readers.read_log(path, "synthetic", report=report))

    # 6,000 rows a week in chunks of at most 4,000: 2 chunks of 3,000 per week.
    assert len(shards) == 4
    assert shards[0] == spec.to_string() + "#week=0,chunk=0"
    assert report.rows_kept == 12_000
    assert checksum(rows) == checksum(generator.generate_rows(spec))
    assert readers.column_types(path, "synthetic") == {
        features.USER_ID: "string",
        features.ITEM_ID: "string",
        features.TIMESTAMP: "int",
        features.LABEL: "int",
        features.USER_COUNTRY: "string",
        features.USER_DEVICE: "string",
        features.ITEM_CATEGORY: "string",
        features.ITEM_PRICE: "float",
    }


def test_ten_million_rows_are_streamed():
    path = "synthetic:rows=10000000"

    shards = readers.list_shards(path, "synthetic")
    report = ReadReport()
    last = list(readers.read_shard(shards[-1], "synthetic", None, report))

    # 10M rows over 6 weeks are 1,666,666 or 1,666,667 rows a week, in 34 chunks of about
    # 49,000 rows, so 204 shards. Reading one shard generates only that chunk.
    assert len(shards) == 6 * 34
    assert len(last) == report.rows_kept
    assert 49_000 <= len(last) <= generator.CHUNK_ROWS
    assert last[-1][features.TIMESTAMP] < generator.EPOCH_START + 6 * generator.SECONDS_PER_WEEK


def test_unknown_chunk_spec():
    with pytest.raises(ValueError) as error:
        list(
            readers.read_shard("synthetic:rows=10#week=9,chunk=0", "synthetic", None, ReadReport())
        )
    assert str(error.value) == (
        "synthetic shard 'synthetic:rows=10#week=9,chunk=0' names no chunk of its spec: "
        "expected SPEC#week=W,chunk=C as returned by list_shards."
    )
