"""CCE's ablation variants live apart from the paper's options but switch on the same way."""

import pytest

from napari_sscce.methods.cce import CCEMethod
from napari_sscce.training.config import TrainConfig, parse_method_options

ABLATIONS = {"conf_mse", "cosine", "contrast_balanced", "contrast_soft_targets", "foreground_first"}


def test_ablation_switches_are_experimental_and_off():
    assert ABLATIONS <= set(CCEMethod.experimental_options)
    assert not set(CCEMethod.experimental_options) & set(CCEMethod.default_options)
    assert all(CCEMethod.experimental_options[k] is False for k in ABLATIONS)


def test_a_saved_config_with_ablation_keys_still_loads(tmp_path):
    options = parse_method_options(["cosine=true", "conf_mse=true", "conf_threshold=0.7"])
    TrainConfig(method_options=options).save(tmp_path / "config.json")
    method = CCEMethod(TrainConfig.load(tmp_path / "config.json"))
    assert method.options["cosine"] is True and method.options["conf_threshold"] == 0.7
    assert method.options["cps"] is True  # the paper's options keep their defaults


def test_unknown_option_is_still_refused():
    with pytest.raises(ValueError, match="no_such_term"):
        CCEMethod(TrainConfig(method_options={"no_such_term": True}))
