"""The Stage I benchmark runs every setup in a process of its own and reports its figures."""

import pytest

from tfx_pipeline.benchmarks import stage1_bench

TINY = {
    "rows": 600,
    "users": 50,
    "items": 40,
    "dimension": 4,
    "batch": 64,
    "tutorial_batches": 2,
    "rounds": 1,
}


@pytest.mark.e2e
def test_stage1_bench_reports_every_setup(tmp_path):
    figures = stage1_bench.run(str(tmp_path), quick=True, sizes=TINY)

    assert figures["rows, users, items"] == "600, 50, 40"
    # (50 + 40 + 2) rows * 4 floats * 4 bytes, doubled for the Adagrad slots: 2,944 bytes.
    assert figures["tables + Adagrad slots, MiB"] == round(2944 / 2**20, 1)
    for label in stage1_bench._LABELS.values():
        assert figures[f"{label}: examples/s"] > 0
        # Each peak comes from the setup's own process, which contains TensorFlow
        # (hundreds of MiB) and grows from there.
        assert figures[f"{label}: RSS growth while training, MiB"] >= 0
        assert figures[f"{label}: peak RSS, MiB"] > 100

    bare = figures["tfrs bare Retrieval: examples/s"]
    ratio = figures["idpt, M=0 / tfrs bare"]
    assert ratio == pytest.approx(figures["idpt, M=0: examples/s"] / bare, abs=2e-3)
