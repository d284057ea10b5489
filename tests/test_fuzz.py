"""Fuzzing the two parsers users feed by hand: label files and model yamls. Whatever the input, they either accept
it (and then what they return is valid) or refuse it with our own error type and a message; nothing else escapes."""

from __future__ import annotations

import copy
import math

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT
from models.yolo import DetectionModel
from utils.errors import UserError
from utils.labels import LabelError, _parse_label_file

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

token = st.one_of(st.integers(-5, 100).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                  st.sampled_from(["nan", "inf", "-inf", "1e400", "0x10", "", "abc", "0.5,", "½", "1_0"]),
                  st.text(max_size=4))
line = st.lists(token, min_size=0, max_size=11).map(" ".join)
label_text = st.lists(line, max_size=6).map("\n".join)


@FUZZ
@given(text=label_text, nc=st.one_of(st.none(), st.integers(1, 10)))
def test_label_parser_accepts_only_valid_labels(tmp_path_factory, text, nc):
    f = tmp_path_factory.mktemp("lb") / "x.txt"
    f.write_text(text, encoding="utf-8")
    try:
        lb, status, warnings = _parse_label_file(str(f), nc)
    except LabelError as e:  # what verify_image_label turns into "bad label file (...), image skipped"
        assert str(e)
        return
    assert status in ("ok", "empty") and lb.ndim == 2 and lb.shape[1] == 5
    assert np.isfinite(lb).all() and ((lb[:, 1:] >= 0) & (lb[:, 1:] <= 1)).all()
    assert (lb[:, 0] >= 0).all() and (lb[:, 0] == np.round(lb[:, 0])).all()
    assert nc is None or (lb[:, 0] < nc).all()
    assert len(np.unique(lb, axis=0)) == len(lb)  # duplicates removed


@FUZZ
@given(data=st.binary(max_size=64))
def test_label_parser_on_binary_garbage(tmp_path_factory, data):
    f = tmp_path_factory.mktemp("lb") / "x.txt"
    f.write_bytes(data)
    try:
        lb, _, _ = _parse_label_file(str(f), 3)
    except LabelError as e:
        assert str(e)
        return
    assert lb.ndim == 2 and lb.shape[1] == 5 and np.isfinite(lb).all()


TINY = {"nc": 2, "depth_multiple": 0.33, "width_multiple": 0.25, "anchors": [[10, 13, 16, 30, 33, 23]],
        "backbone": [[-1, 1, "Conv", [64, 6, 2, 2]], [-1, 1, "Conv", [128, 3, 2]], [-1, 3, "C3", [128]],
                     [-1, 1, "SPPF", [128, 5]]],
        "head": [[[-1], 1, "Detect", ["nc", "anchors"]]]}
value = st.one_of(st.integers(-3, 64), st.floats(-2, 2), st.none(), st.text(max_size=6),
                  st.sampled_from(["Conv", "C3", "Concat", "nn.Upsample", "Detect", "Foo", "nc", "anchors", "None"]),
                  st.lists(st.integers(-3, 5), max_size=3))

top_value = st.one_of(st.integers(-3, 4), st.floats(-2, 2), st.none(), st.text(max_size=6),
                      st.lists(st.integers(-3, 5), max_size=3), st.lists(st.lists(st.integers(-3, 40), max_size=6),
                                                                          max_size=3))


@st.composite
def mutated_yaml(draw):
    d = copy.deepcopy(TINY)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["backbone", "head", "top"]))
        if where == "top":
            # small numbers only up here: width_multiple 300 is a valid 100 GB model, not a parser bug
            d[draw(st.sampled_from(["nc", "depth_multiple", "width_multiple", "anchors"]))] = draw(top_value)
            continue
        layers = d[where]
        if not isinstance(layers, list) or not layers:
            continue
        i = draw(st.integers(0, len(layers) - 1))
        layer = layers[i] if isinstance(layers[i], list) else [layers[i]]
        j = draw(st.integers(0, max(len(layer) - 1, 0)))
        if layer:
            if j == 3 and isinstance(layer[3], list) and layer[3] and draw(st.booleans()):
                layer[3][draw(st.integers(0, len(layer[3]) - 1))] = draw(value)
            else:
                layer[j] = draw(value)
        layers[i] = layer
    return d


@settings(max_examples=120, deadline=None, derandomize=True)
@given(cfg=mutated_yaml())
def test_model_yaml_parser_builds_or_says_why(cfg):
    try:
        m = DetectionModel(cfg)
    except UserError as e:
        assert str(e)
        return
    n = sum(p.numel() for p in m.parameters())
    assert n > 0 and all(math.isfinite(float(s)) for s in m.stride)


def test_tiny_yaml_itself_builds():
    m = DetectionModel(copy.deepcopy(TINY))
    assert m.stride.tolist() == [4.0] and yaml.safe_dump(m.yaml)  # the fuzz base is a valid model (two stride-2 convs)
    assert DetectionModel(ROOT / "models" / "yolov5n.yaml").stride.tolist() == [8.0, 16.0, 32.0]
