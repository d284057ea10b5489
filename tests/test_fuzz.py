"""Fuzzing the two parsers users feed by hand: label files and model yamls. Valid inputs must be accepted with the
values they state; invalid ones refused with our own error type and the reason; nothing else escapes. The oracles
are written here from the formats' definitions, not taken from the parsers."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT
from models.common import C3, SPPF, Conv
from models.yolo import Detect, DetectionModel
from utils.errors import UserError
from utils.labels import LabelError, _parse_label_file

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small convs run faster on one thread
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------------------- labels
def _label_oracle(text: str, nc: int | None) -> np.ndarray | str:
    """A YOLO label file by its definition: one object per non-blank line, `class cx cy w h` or `class x1 y1 x2 y2
    x3 y3 ...` (a polygon: its bounding box), class a non-negative integer below nc, coordinates finite and in [0, 1];
    duplicates (as float32) dropped, first kept. Returns the boxes, or the start of the refusal's message."""
    boxes = []
    for row in (line.split() for line in text.splitlines() if line.strip()):
        if len(row) != 5 and (len(row) < 7 or len(row) % 2 == 0):
            return "a line has"
        try:
            v = [float(t) for t in row]
        except ValueError:
            return "a value is not a number"
        if not all(map(math.isfinite, v)):
            return "a value is nan or inf"
        if len(v) > 5:
            xs, ys = v[1::2], v[2::2]
            v = [v[0], (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)]
        boxes.append(v)
    if any(not math.isfinite(x) for b in boxes for x in b):  # 1e308 - -1e308 overflows
        return "a value is nan or inf"
    if any(b[0] < 0 or b[0] != round(b[0]) for b in boxes):
        return "class indices must be non-negative integers"
    if nc is not None and any(b[0] >= nc for b in boxes):
        return "class"  # "class 7 is out of range for nc=3"
    if any(not 0 <= x <= 1 for b in boxes for x in b[1:]):
        return "coordinates outside [0, 1]"
    rows, seen = [], set()
    for b in np.array(boxes, np.float32).reshape(-1, 5):
        if tuple(b) not in seen:
            seen.add(tuple(b))
            rows.append(b)
    return np.array(rows, np.float32).reshape(-1, 5)


def _check_label_file(path, text: str, nc: int | None) -> str:
    """Parse `text` written to `path`; assert the outcome is the oracle's; return 'ok', 'empty' or 'refused'."""
    want = _label_oracle(text, nc)
    try:
        lb, status, warnings = _parse_label_file(str(path), nc)
    except LabelError as e:  # any other exception type escapes and fails the test
        assert isinstance(want, str), f"refused a valid file ({e}): {text!r}"
        assert str(e).startswith(want) and "\n" not in str(e), (str(e), want)
        return "refused"
    assert not isinstance(want, str), f"accepted an invalid file (want {want!r}): {text!r}"
    assert lb.dtype == np.float32 and status == ("ok" if len(lb) else "empty")
    np.testing.assert_array_equal(lb, want)
    n_in = sum(1 for line in text.splitlines() if line.strip())
    assert len(warnings) == (n_in > len(want)) and all("duplicate" in w for w in warnings)
    return status


token = st.one_of(st.integers(-5, 100).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                  st.sampled_from(["nan", "inf", "-inf", "1e400", "0x10", "", "abc", "0.5,", "½", "1_0"]),
                  st.text(max_size=4))
line = st.lists(token, min_size=0, max_size=11).map(" ".join)
label_text = st.lists(line, max_size=6).map("\n".join)


@FUZZ
@given(text=label_text, nc=st.one_of(st.none(), st.integers(1, 10)))
def test_label_parser_on_random_tokens(tmp_path_factory, text, nc):
    f = tmp_path_factory.mktemp("lb") / "x.txt"
    f.write_text(text, encoding="utf-8")
    _check_label_file(f, f.read_text(encoding="utf-8"), nc)  # as read back: newlines translated like the parser's


@FUZZ
@given(data=st.binary(max_size=64))
def test_label_parser_on_binary_garbage(tmp_path_factory, data):
    f = tmp_path_factory.mktemp("lb") / "x.txt"
    f.write_bytes(data)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        with pytest.raises(LabelError, match="^not UTF-8 text$"):
            _parse_label_file(str(f), 3)
        return
    _check_label_file(f, f.read_text(encoding="utf-8"), 3)


coord = st.floats(0, 1)
number_format = st.sampled_from([repr, "{:.6f}".format, "{:g}".format, "{:.3e}".format, "{:.10g}".format])


@st.composite
def valid_label_file(draw) -> tuple[str, int]:
    """A well-formed file in the forms users write: boxes and polygons, numbers in several formats, any whitespace,
    blank lines, repeated rows."""
    nc = draw(st.integers(1, 10))
    fmt = draw(number_format)
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        cls = draw(st.integers(0, nc - 1))
        if draw(st.booleans()):
            values = [draw(coord) for _ in range(4)]
        else:  # a polygon of 3 to 5 points
            values = [draw(coord) for _ in range(2 * draw(st.integers(3, 5)))]
        sep = draw(st.sampled_from([" ", "  ", "\t", " \t "]))
        lines.append(sep.join([draw(st.sampled_from([str(cls), f"{cls}.0", f"{cls:.0e}"])), *map(fmt, values)]))
    if lines and draw(st.booleans()):
        lines += draw(st.lists(st.sampled_from(lines), max_size=3))  # duplicates
    end = draw(st.sampled_from(["", "\n", "\n\n", "  \n"]))
    return draw(st.sampled_from(["\n", "\r\n", "\n\n"])).join(lines) + end, nc


@FUZZ
@given(case=valid_label_file())
def test_valid_label_files_parse_to_their_values(tmp_path_factory, case):
    text, nc = case
    f = tmp_path_factory.mktemp("lb") / "x.txt"
    f.write_text(text, encoding="utf-8")
    assert _check_label_file(f, f.read_text(encoding="utf-8"), nc) in ("ok", "empty")


CORRUPTIONS = {  # what one bad row holds -> the start of the refusal
    "fields": (lambda c, nc: [c, "0.5", "0.5", "0.1"], "a line has 4 fields"),
    "even polygon": (lambda c, nc: [c, *["0.5"] * 7], "a line has 8 fields"),
    "word": (lambda c, nc: [c, "0.5", "abc", "0.1", "0.1"], "a value is not a number"),
    "comma": (lambda c, nc: [c, "0.5,", "0.5", "0.1", "0.1"], "a value is not a number"),
    "nan": (lambda c, nc: [c, "0.5", "0.5", "nan", "0.1"], "a value is nan or inf"),
    "overflow": (lambda c, nc: [c, "1e400", "0.5", "0.1", "0.1"], "a value is nan or inf"),
    "negative class": (lambda c, nc: ["-1", "0.5", "0.5", "0.1", "0.1"], "class indices must be non-negative"),
    "fractional class": (lambda c, nc: ["0.5", "0.5", "0.5", "0.1", "0.1"], "class indices must be non-negative"),
    "class >= nc": (lambda c, nc: [str(nc), "0.5", "0.5", "0.1", "0.1"], "class {nc} is out of range for nc="),
    "above 1": (lambda c, nc: [c, "0.5", "1.5", "0.1", "0.1"], "coordinates outside [0, 1]"),
    "below 0": (lambda c, nc: [c, "0.5", "0.5", "0.1", "-0.01"], "coordinates outside [0, 1]"),
}


@FUZZ
@given(case=valid_label_file(), kind=st.sampled_from(sorted(CORRUPTIONS)), where=st.floats(0, 1))
def test_one_bad_row_refuses_the_file_with_its_reason(tmp_path_factory, case, kind, where):
    text, nc = case
    make, reason = CORRUPTIONS[kind]
    lines = text.splitlines()
    lines.insert(int(where * len(lines)), " ".join(make("0", nc)))
    f = tmp_path_factory.mktemp("lb") / "x.txt"
    f.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(LabelError) as e:
        _parse_label_file(str(f), nc)
    assert str(e.value).startswith(reason.format(nc=nc)), (str(e.value), reason)


# ------------------------------------------------------------------------------------------------------ model yamls
TINY = {"nc": 2, "depth_multiple": 0.33, "width_multiple": 0.25, "anchors": [[10, 13, 16, 30, 33, 23]],
        "backbone": [[-1, 1, "Conv", [64, 6, 2, 2]], [-1, 1, "Conv", [128, 3, 2]], [-1, 3, "C3", [128]],
                     [-1, 1, "SPPF", [128, 5]]],
        "head": [[[-1], 1, "Detect", ["nc", "anchors"]]]}


def _width(c: int, gw: float, no: int) -> int:
    """Upstream's width rule: scaled and rounded up to a multiple of 8, except a width equal to Detect's outputs per
    anchor times anchors (`no` in upstream's parse_model), which is kept as written."""
    return c if c == no else math.ceil(c * gw / 8) * 8


def _conv_params(c1: int, c2: int, k: int) -> int:
    return c1 * c2 * k * k + 2 * c2  # bias-free conv + BN weight and bias


@st.composite
def valid_tiny_yaml(draw) -> dict:
    d = copy.deepcopy(TINY)
    na = draw(st.integers(1, 4))
    d.update(nc=draw(st.integers(1, 20)), depth_multiple=draw(st.floats(0.1, 1.5)),
             width_multiple=draw(st.floats(0.05, 0.5)),
             anchors=[draw(st.lists(st.integers(1, 200), min_size=2 * na, max_size=2 * na))])
    b = d["backbone"]
    b[0][3][0], b[1][3][0] = draw(st.integers(1, 128)), draw(st.integers(1, 256))  # at most 64, 128 wide: fast
    b[2][1], b[2][3][0] = draw(st.integers(1, 6)), draw(st.integers(1, 256))
    b[3][3] = [draw(st.integers(1, 256)), draw(st.sampled_from([3, 5, 7]))]
    return d


@settings(max_examples=30, deadline=None, derandomize=True)
@given(cfg=valid_tiny_yaml())
def test_valid_model_yamls_build_what_they_state(cfg):
    m = DetectionModel(copy.deepcopy(cfg))
    gw, gd, nc = cfg["width_multiple"], cfg["depth_multiple"], cfg["nc"]
    (c0, k0, *_), (c1, k1, _), (n2, c2) = (cfg["backbone"][0][3], cfg["backbone"][1][3],
                                            (cfg["backbone"][2][1], cfg["backbone"][2][3][0]))
    c3, k3 = cfg["backbone"][3][3]
    na = len(cfg["anchors"][0]) // 2
    w0, w1, w2, w3 = (_width(c, gw, na * (nc + 5)) for c in (c0, c1, c2, c3))
    n = max(round(n2 * gd), 1) if n2 > 1 else n2
    layers = m.model
    assert [type(x) for x in layers] == [Conv, Conv, C3, SPPF, Detect]
    assert (layers[0].conv.out_channels, layers[1].conv.out_channels, layers[2].cv3.conv.out_channels,
            layers[3].cv2.conv.out_channels) == (w0, w1, w2, w3)
    assert len(layers[2].m) == n and layers[3].m.kernel_size == k3
    det = layers[4]
    assert (det.nc, det.no, det.na, det.nl) == (nc, nc + 5, na, 1)
    assert m.stride.tolist() == [4.0]  # two stride-2 convs
    assert det.anchors.flatten().mul(4).tolist() == [float(a) for a in cfg["anchors"][0]]  # stored in grid units
    c_, s_ = w2 // 2, w2 // 2  # C3's hidden width; SPPF's (c1 // 2)
    expected = (_conv_params(3, w0, k0) + _conv_params(w0, w1, k1)
                + 2 * _conv_params(w1, c_, 1) + _conv_params(2 * c_, w2, 1) + n * (_conv_params(c_, c_, 1)
                                                                                   + _conv_params(c_, c_, 3))
                + _conv_params(w2, s_, 1) + _conv_params(4 * s_, w3, 1)
                + w3 * na * (nc + 5) + na * (nc + 5))  # Detect's 1x1 conv with bias
    assert sum(p.numel() for p in m.parameters()) == expected
    with torch.no_grad():
        assert m.eval()(torch.zeros(1, 3, 32, 64))[0].shape == (1, na * 8 * 16, nc + 5)


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


def test_model_yaml_parser_builds_or_says_why():
    """Random edits of a valid yaml: a model that runs, or a UserError in one line; any other exception fails. Both
    outcomes must occur, so a parser that refused everything (or nothing) fails too."""
    outcomes = {"built": 0, "refused": 0}

    @settings(max_examples=120, deadline=None, derandomize=True, database=None)
    @given(cfg=mutated_yaml())
    def check(cfg):
        try:
            m = DetectionModel(cfg)
        except UserError as e:
            assert str(e) and "\n" not in str(e)
            outcomes["refused"] += 1
            return
        det = m.model[-1]
        assert isinstance(det, Detect) and det.no == det.nc + 5 and det.nc == cfg["nc"]
        assert sum(p.numel() for p in m.parameters()) > 0 and all(math.isfinite(float(s)) for s in m.stride)
        outcomes["built"] += 1

    check()
    assert min(outcomes.values()) >= 1, outcomes  # measured: 5 of the 120 edits still build


def _edit(path: tuple, v) -> dict:
    d = copy.deepcopy(TINY)
    target = d
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = v
    return d


@pytest.mark.parametrize("path,v,needle", [
    (("nc",), 0, "nc must be a positive integer, got 0"),
    (("nc",), "two", "nc must be a positive integer"),
    (("width_multiple",), -0.5, "width_multiple must be a positive number"),
    (("depth_multiple",), float("nan"), "depth_multiple must be a positive number"),
    (("anchors",), [[10, 13, 16]], "anchors must be a list"),
    (("anchors",), [[10, -13]], "anchors must be a list"),
    (("head",), [], "head must be a non-empty list"),
    (("backbone", 1), [-1, 1, "Conv"], "layer 1: expected [from, number, module, args]"),
    (("backbone", 1, 0), 3, "layer 1: 'from' must name earlier layers"),
    (("backbone", 2, 1), -1, "layer 2: number must be a non-negative integer"),
    (("backbone", 2, 2), "Foo", "layer 2: unknown module 'Foo'"),
    (("backbone", 1, 3), [0, 3, 2], "layer 1: Conv would have 0 output channels"),
    (("head",), [[-1, 1, "Conv", [8, 1, 1]]], "the last layer of a model yaml must be Detect"),
])
def test_known_bad_yamls_say_why(path, v, needle):
    with pytest.raises(UserError) as e:
        DetectionModel(_edit(path, v))
    assert needle in str(e.value), str(e.value)


def test_tiny_yaml_itself_builds():
    m = DetectionModel(copy.deepcopy(TINY))
    assert m.stride.tolist() == [4.0] and yaml.safe_dump(m.yaml)  # the fuzz base is a valid model (two stride-2 convs)
    assert DetectionModel(ROOT / "models" / "yolov5n.yaml").stride.tolist() == [8.0, 16.0, 32.0]
