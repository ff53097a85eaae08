"""Test configuration shared by the whole suite.

TF_USE_LEGACY_KERAS is set here, before any test module imports TensorFlow,
so tf.keras is Keras 2 (tf_keras) in every test, as in the idpt entry point.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
MOVIELENS_100K = SHARED / "data" / "movielens-100k"
CASES = SHARED / "cases"


@pytest.fixture
def movielens_dir() -> pathlib.Path:
    """The MovieLens 100K folder; tests that need it skip when it is absent."""
    if not (MOVIELENS_100K / "u.data").is_file():
        pytest.skip(
            f"MovieLens 100K is not at {MOVIELENS_100K}: it is read from there, never copied"
        )
    return MOVIELENS_100K


@pytest.fixture
def cases_dir() -> pathlib.Path:
    """The folder of small bad-input logs; tests that need it skip when it is absent."""
    if not (CASES / "README.md").is_file():
        pytest.skip(f"the bad-input cases are not at {CASES}")
    return CASES
