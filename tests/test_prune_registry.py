"""Prune methods are objects in one registry: adding one is a class (its own file in utils/pruning/methods/) and one
registry line, and prune.py, its report and its checks then take it by name. Torch-Pruning's pruners plug in the same
way (tp-magnitude, tp-taylor)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch

import prune
from helpers import save_model, spread_gammas
from models.yolo import DetectionModel
from utils.checkpoint import load_checkpoint, load_model
from utils.errors import UserError
from utils.pruning.data import SearchData
from utils.pruning.methods import METHODS, Ranked, create, register
from utils.pruning.pruner import PruneSettings, prune_model
from utils.torch_utils import model_flops

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class KeepFirst(Ranked):
    """A toy method: every group's first channels are the most important, so a cut keeps them."""

    name: ClassVar[str] = "first"

    def scores(self, model, groups, s: PruneSettings, data: SearchData) -> list[torch.Tensor]:
        return [torch.arange(g.channels, 0, -1, dtype=torch.float) for g in groups]


@pytest.fixture
def first():
    register(KeepFirst)  # the one registry line (in a method's file: @register above the class)
    yield KeepFirst
    METHODS.pop(KeepFirst.name)


@pytest.fixture(scope="module")
def n_model():
    torch.manual_seed(0)
    return spread_gammas(DetectionModel("yolov5n.yaml", nc=3))


def test_a_registered_method_runs_through_prune_py(tmp_path, n_model, first):
    w = save_model(n_model, tmp_path / "n.pt")
    rec = prune.main(["--weights", str(w), "--method", "first", "--percent", "0.5", "--imgsz", "64",
                      "--project", str(tmp_path / "p")])
    out = Path(rec["save_dir"])
    s = json.loads((out / "report.json").read_text())["settings"]
    assert s["method"] == "first" and s["removed_share"] == pytest.approx(0.5, abs=0.01)
    assert rec["command"] == "--method first --percent 0.5"
    assert "Method `first`, percent 0.5" in (out / "report.md").read_text()
    assert load_checkpoint(out / "pruned.pt")["prune"]["method"] == "first"
    pruned = load_model(out / "pruned.pt").float()
    a, b = pruned.model[0].conv.weight, n_model.model[0].conv.weight  # the stem reads the image: only outputs cut
    assert 0 < len(a) < len(b) and torch.allclose(a, b[:len(a)].float(), atol=1e-3)  # the first channels, fp16


def test_the_library_takes_a_method_object_or_its_name(n_model, first):
    by_object = prune_model(n_model, PruneSettings(percent=0.3), method=KeepFirst())
    by_name = prune_model(n_model, PruneSettings(percent=0.3), method="first")
    assert all(torch.equal(v, torch.arange(len(v))) for v in by_object.keep.values())
    assert {k: v.tolist() for k, v in by_name.keep.items()} == {k: v.tolist() for k, v in by_object.keep.items()}
    assert by_object.summary()["method"] == "first" and by_object.method.ranked


def test_the_registry_says_what_each_method_needs(first):
    assert list(METHODS)[:8] == ["slim", "l1", "taylor", "eagleeye", "sensitivity", "layer", "layer+slim",
                                 "unstructured"]  # --method's choices, in --help's order
    assert [n for n, c in METHODS.items() if c.ranked] == ["slim", "l1", "taylor", "layer+slim", "first"]
    assert {n for n, c in METHODS.items() if c.needs} == {"taylor", "eagleeye", "sensitivity", "tp-taylor"}
    assert [n for n, c in METHODS.items() if not c.structured] == ["unstructured"]
    assert create("layer", layers=3, candidates=5).options() == {"layers": 3}  # other methods' flags are ignored
    with pytest.raises(ValueError, match="taken"):
        register(KeepFirst)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        create("nope")
    with pytest.raises(ValueError, match="--method eagleeye needs --flops-target"):
        PruneSettings(auto=True).check(create("eagleeye"))  # its own checks first, as before the registry
    with pytest.raises(ValueError, match="--percent auto cuts .* methods slim, l1, taylor, layer\\+slim, first,"):
        PruneSettings(auto=True, flops_target=0.5).check(create("eagleeye"))


def test_torch_pruning_plugs_in_as_a_method(tmp_path, n_model):
    w = save_model(n_model, tmp_path / "n.pt")
    with pytest.raises(UserError, match="--method tp-magnitude needs --flops-target"):
        prune.settings_from(prune.parse_opt(["--weights", str(w), "--method", "tp-magnitude"]))
    rec = prune.main(["--weights", str(w), "--method", "tp-magnitude", "--flops-target", "0.6", "--imgsz", "64",
                      "--project", str(tmp_path / "p")])
    s, out = rec["settings"], Path(rec["save_dir"])
    assert 0.55 < s["share"] <= 0.6 and s["target_share"] == 0.6 and len(s["tries"]) == 15
    assert rec["after"]["GFLOPs"] / rec["before"]["GFLOPs"] == pytest.approx(s["share"], rel=0.01)
    assert model_flops(load_model(out / "pruned.pt").float(), 64) == pytest.approx(rec["after"]["GFLOPs"], abs=1e-4)
    assert rec["command"] == "--method tp-magnitude --flops-target 0.6"
    assert "not folded" in (out / "report.md").read_text()
