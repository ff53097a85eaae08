"""Round trips and validation of the Stage I config."""

from __future__ import annotations

import dataclasses

import pytest

from trainer.config import Stage1Config
from trainer.stage1 import resolve_config


def test_defaults_match_documented_method():
    config = Stage1Config()
    assert config.epochs == 20
    assert config.temperature == 0.05
    assert config.similarity == "cosine"
    assert config.recall_ks == (10, 50, 100)
    assert config.retrieve_top_k == 100


def test_json_round_trip_keeps_every_field():
    # Every field gets a value unlike its default, so a field saved under another's name
    # or dropped would show.
    config = Stage1Config(
        embedding_dim=16,
        epochs=3,
        batch_size=128,
        eval_batch_size=64,
        learning_rate=0.05,
        optimizer="adam",
        similarity="dot",
        temperature=0.2,
        num_sampled_negatives=7,
        negative_sampler="uniform",
        sampler_power=0.5,
        logq_correction=False,
        remove_accidental_hits=False,
        query_id_features=("user_segment",),
        candidate_id_features=("item_genre", "item_year"),
        unseen_user_loss_weight=2.0,
        recall_ks=(5, 20),
        exclude_train_items=True,
        retrieve_top_k=30,
        shuffle_buffer_size=1000,
        cache_train_examples=False,
        seed=9,
        distribution="default",
        tpu_address="tpu-1",
        table_backend="keras",
        max_shard_bytes=1024,
        checkpoint_dir="/tmp/checkpoints",
    )
    defaults = Stage1Config()
    for field in dataclasses.fields(Stage1Config):
        assert getattr(config, field.name) != getattr(defaults, field.name), field.name

    assert Stage1Config.from_json(config.to_json()) == config


def test_from_dict_accepts_json_lists():
    config = Stage1Config.from_dict({"recall_ks": [1, 2], "candidate_id_features": ["item_genre"]})
    assert config.recall_ks == (1, 2)
    assert config.candidate_id_features == ("item_genre",)


def test_from_dict_none_gives_defaults():
    assert Stage1Config.from_dict(None) == Stage1Config()


def test_unknown_key_is_rejected():
    with pytest.raises(ValueError, match=r"^Unknown Stage I config keys \['epoch'\]: valid keys"):
        Stage1Config.from_dict({"epoch": 3})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"similarity": "l2"}, "similarity='l2' is invalid"),
        ({"temperature": 0}, "temperature=0 is invalid: it must be above 0"),
        ({"num_sampled_negatives": -1}, "num_sampled_negatives=-1 is invalid"),
        ({"unseen_user_loss_weight": -1}, "unseen_user_loss_weight=-1 is invalid"),
        ({"recall_ks": [0]}, r"recall_ks=\(0,\) is invalid"),
        ({"recall_ks": [10, 10]}, r"recall_ks=\(10, 10\) is invalid: give each cut-off once"),
        ({"seed": -1}, r"seed=-1 is invalid: use an integer in \[0, 2\*\*32\)"),
        ({"seed": 2**32}, r"seed=4294967296 is invalid"),
        ({"query_id_features": ["item_genre"]}, r"query_id_features has \['item_genre'\]"),
        ({"candidate_id_features": ["item_id"]}, r"candidate_id_features has \['item_id'\]"),
    ],
)
def test_invalid_values_are_rejected(values, message):
    with pytest.raises(ValueError, match=message):
        Stage1Config.from_dict(values)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"temperature": "0.05"}, "temperature='0.05' is invalid: use a number"),
        (
            {"unseen_user_loss_weight": float("nan")},
            "unseen_user_loss_weight=nan is invalid: use a finite number",
        ),
        ({"learning_rate": float("inf")}, "learning_rate=inf is invalid: use a finite number"),
        ({"batch_size": 2.5}, "batch_size=2.5 is invalid: use an integer"),
        ({"num_sampled_negatives": True}, "num_sampled_negatives=True is invalid: use an integer"),
        ({"logq_correction": "false"}, "logq_correction='false' is invalid: use true or false"),
        (
            {"query_id_features": "user_country"},
            "query_id_features='user_country' is invalid: use a list of strings",
        ),
        ({"recall_ks": 10}, "recall_ks=10 is invalid: use a list of integers"),
        ({"recall_ks": ["10"]}, r"recall_ks=\('10',\) is invalid: use a list of integers"),
        ({"sampler_power": -2}, "sampler_power=-2 is invalid: use 0 or more"),
    ],
)
def test_wrong_types_are_rejected(values, message):
    with pytest.raises(ValueError, match=f"^Stage I config {message}"):
        Stage1Config.from_dict(values)


def test_constructor_list_names_tuple():
    expected = r"^Stage I config recall_ks=\[5\] is invalid: use a tuple of integers \(from_dict"
    with pytest.raises(ValueError, match=expected):
        Stage1Config(recall_ks=[5])


def test_integral_floats_become_counts():
    # protobuf's Struct stores every number as a double, 30 as 30.0.
    config = Stage1Config.from_dict({"epochs": 30.0, "temperature": 1})

    assert config.epochs == 30
    assert isinstance(config.epochs, int)
    assert config.temperature == 1


def test_fingerprint_ignores_epochs_but_not_learning_rate():
    base = Stage1Config()
    assert dataclasses.replace(base, epochs=40).training_fingerprint() == (
        base.training_fingerprint()
    )
    assert dataclasses.replace(base, learning_rate=0.3).training_fingerprint() != (
        base.training_fingerprint()
    )


def test_hyperparameters_override_custom_config():
    config = resolve_config({"epochs": 5, "embedding_dim": 8}, {"epochs": 30})
    assert (config.epochs, config.embedding_dim) == (30, 8)
    tuner_form = {"space": [], "values": {"learning_rate": 0.05}}
    assert resolve_config({}, tuner_form).learning_rate == 0.05
    assert resolve_config(None, None) == Stage1Config()
