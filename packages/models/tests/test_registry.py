"""The model registry: create_model and list_models over the models this package registers."""

from __future__ import annotations

import pytest
import torch

from rnnkit.models import SequenceModel, create_model, is_model, list_models


def test_list_models_filters_with_fnmatch() -> None:
    names = list_models()
    assert names == sorted(names)
    assert {"sequence_classifier", "sequence_tagger", "char_lm"} <= set(names)
    assert list_models("sequence_*") == [n for n in names if n.startswith("sequence_")]
    assert "char_lm" not in list_models(exclude="char*")
    assert is_model("char_lm") and not is_model("nope")


def test_create_model_shapes() -> None:
    clf = create_model(
        "sequence_classifier", input_size=3, output_size=5, cell="gru", hidden_size=8
    )
    assert isinstance(clf, SequenceModel)
    assert clf(torch.randn(2, 7, 3)).shape == (2, 5)
    tagger = create_model(
        "sequence_tagger",
        input_size=3,
        output_size=4,
        hidden_size=8,
        num_layers=2,
        bidirectional=True,
    )
    assert tagger(torch.randn(2, 7, 3)).shape == (2, 7, 4)
    lm = create_model("char_lm", vocab_size=11, hidden_size=8, cell="slstm", heads=2)
    assert lm(torch.randint(0, 11, (2, 7))).shape == (2, 7, 11)


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(ValueError, match="did you mean 'char_lm'"):
        create_model("char_ml")


def test_bad_pooling() -> None:
    with pytest.raises(ValueError, match="pooling must be"):
        SequenceModel(3, 2, pooling="max")
