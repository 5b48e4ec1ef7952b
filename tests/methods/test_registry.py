"""One list of methods: a method defined in one file appears in the CLI, the widget and compatibility."""

from __future__ import annotations

from typing import ClassVar

import pytest

from napari_sscce.cli import build_parser
from napari_sscce.methods import (
    METHODS,
    compatible_methods,
    get_method,
    incompatibility,
    method_names,
    register_method,
    unregister_method,
)
from napari_sscce.methods.base import TrainingMethod
from napari_sscce.models.dual import build_dual_model


class EchoMethod(TrainingMethod):
    """A test-local method: two plain VNets trained as a mean teacher."""

    name: ClassVar[str] = "echo"
    label: ClassVar[str] = "Echo (test)"
    default_networks: ClassVar[tuple[str, str]] = ("vnet", "vnet")
    model_kind: ClassVar[str] = "mean_teacher"

    @classmethod
    def accepts_networks(cls, names: tuple[str, ...]) -> bool:
        return all(n == "vnet" for n in names)


@pytest.fixture
def echo():
    register_method(EchoMethod)
    yield EchoMethod
    unregister_method("echo")


def _choices(argv_command: str) -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return list(next(a for a in sub.choices[argv_command]._actions if a.dest == "method").choices)


def test_builtin_methods_are_registered():
    assert method_names()[:3] == ["cce", "supervised", "ugmcl"]
    assert all(METHODS[n].name == n and METHODS[n].label for n in method_names())


def test_a_method_in_one_file_appears_everywhere(echo):
    from napari_sscce.widgets.finetune import method_choices

    assert get_method("echo") is echo
    assert "echo" in _choices("train") and "echo" in _choices("finetune")
    assert ("Echo (test)", "echo") in method_choices()
    model = build_dual_model("echo", base_filters=2)  # models/ asks the method class
    assert model.kind == "mean_teacher" and model.arch["b"]["name"] == "vnet"
    assert compatible_methods(model.arch) == ["echo"]
    cce = build_dual_model("cce", base_filters=2).arch
    assert "echo" not in compatible_methods(cce)
    message = incompatibility("echo", cce, "cce", "model.safetensors")
    assert "trained with cce" in message and "echo trains mean_teacher" in message
    assert "Methods that can: cce, supervised." in message
    unregister_method("echo")
    assert "echo" not in _choices("train")


def test_unknown_and_duplicate_methods_are_refused(echo):
    with pytest.raises(ValueError, match="unknown training method 'nope'; known methods: cce"):
        get_method("nope")

    class Other(EchoMethod):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_method(Other)


def test_incompatible_pairs_of_issue_12():
    ugmcl = build_dual_model("ugmcl", base_filters=2).arch
    cce = build_dual_model("cce", base_filters=2).arch
    assert compatible_methods(ugmcl) == ["ugmcl"] and compatible_methods(cce) == ["cce", "supervised"]
    assert "Methods that can: ugmcl." in incompatibility("cce", ugmcl, "ugmcl", "m")
    assert incompatibility("supervised", cce, "cce", "m") is None
