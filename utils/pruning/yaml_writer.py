"""The model yaml of a DetectionModel as it is now: every width explicit, so a pruned model is plain data.

`model_yaml(model)` reads the widths from the modules themselves (not from the yaml the model was built from) and
keeps everything else of each layer's entry: `from`, the module name, kernel sizes, strides, `nc`/`anchors` names.
The result has `width_multiple: 1.0`, `depth_multiple: 1.0` and `exact_widths: true` (no rounding to multiples of 8),
block inner widths as a trailing `{...}` argument, and the model's current anchors in pixels. The normal parser
rebuilds the same architecture from it: `DetectionModel(model_yaml(m))` loads `m.state_dict()` strictly.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn

from models.common import SPP, SPPF, Bottleneck, C3, C3Ghost, Conv, DWConv, Focus, GhostBottleneck, GhostConv
from models.yolo import Detect, DetectionModel
from utils.files import atomic_write, yaml_load
from utils.pruning.graph import probe_size
from utils.torch_utils import count_params

__all__ = ["check_rebuild", "model_yaml", "yaml_text", "save_model_yaml"]

_BARE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")  # strings yaml reads back as the same string without quotes
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n"}


def _out(conv_module: nn.Module) -> int:
    """Output channels of a Conv (conv + bn) or a bare Conv2d."""
    return (conv_module.conv if isinstance(conv_module, Conv) else conv_module).out_channels


def _ghost_out(m: GhostConv) -> int:
    return 2 * _out(m.cv1)  # half from cv1, half from its depth-wise cv2


def _c3_widths(m: C3) -> dict:
    if isinstance(m, C3Ghost):
        inner = [[_ghost_out(b.conv[0]), _ghost_out(b.conv[2])] for b in m.m]
    else:
        inner = [[_out(b.cv1), _out(b.cv2)] for b in m.m]
    return {"cv1": _out(m.cv1), "cv2": _out(m.cv2), "m": inner}


def _layer_entry(m: nn.Module, entry: list, i: int) -> list:
    """[from, number, module, args] describing layer module `m`, whose original yaml entry is `entry`."""
    f, n, name, args = entry
    args = list(args)
    if isinstance(m, nn.Sequential) and not isinstance(m, (C3, C3Ghost)):  # a non-C3 module repeated n times
        entries = [_layer_entry(x, [f, 1, name, args], i) for x in m]
        if any(e != entries[0] for e in entries):
            raise ValueError(f"layer {i} ({name} x{len(m)}): repeats with different widths cannot be written as one "
                             "yaml entry")
        return [f, len(m), name, entries[0][3]]
    if isinstance(m, (Conv, DWConv)):
        return [f, n, name, [_out(m), *args[1:]]]
    if isinstance(m, Focus):
        return [f, n, name, [_out(m.conv), *args[1:]]]
    if isinstance(m, GhostConv):
        return [f, n, name, [_ghost_out(m), *args[1:]]]
    positional = [a for a in args[1:] if not isinstance(a, dict)]
    if isinstance(m, C3):  # C3Ghost too; the repeat count is the number of bottlenecks kept
        return [f, len(m.m), name, [_out(m.cv3), *positional, _c3_widths(m)]]
    if isinstance(m, Bottleneck):
        return [f, n, name, [_out(m.cv2), *positional, {"c_": _out(m.cv1)}]]
    if isinstance(m, (SPP, SPPF)):
        return [f, n, name, [_out(m.cv2), *positional, {"c_": _out(m.cv1)}]]
    if isinstance(m, GhostBottleneck):
        return [f, n, name, [_ghost_out(m.conv[2]), *positional, {"c_": _ghost_out(m.conv[0])}]]
    if isinstance(m, Detect):  # the top-level nc and anchors, which model_yaml writes from the model itself
        return [f, n, name, ["nc", "anchors", *args[2:]]]
    return [f, n, name, args]  # no widths of its own: Concat, Upsample, ...


def model_yaml(model: nn.Module) -> dict:
    """An explicit-width model yaml dict that rebuilds `model`'s architecture (and its current anchors)."""
    d = model.yaml
    entries = list(d["backbone"]) + list(d["head"])
    layers = list(model.model)
    if len(entries) != len(layers):
        raise ValueError(f"model.yaml lists {len(entries)} layers but the model has {len(layers)}")
    new = [_layer_entry(m, list(e), i) for i, (m, e) in enumerate(zip(layers, entries))]
    detect = layers[-1]
    if not isinstance(detect, Detect):
        raise ValueError("the last layer is not Detect")
    anchors = (detect.anchors * detect.stride.view(-1, 1, 1)).reshape(detect.nl, -1).tolist()
    out = {"nc": detect.nc, "depth_multiple": 1.0, "width_multiple": 1.0, "exact_widths": True,
           "anchors": [[_number(v) for v in level] for level in anchors]}
    if d.get("ch", 3) != 3:
        out["ch"] = d["ch"]
    nb = len(d["backbone"])
    out["backbone"], out["head"] = new[:nb], new[nb:]
    return out


def _number(v: float) -> int | float:
    r = round(float(v), 4)
    return int(r) if r == int(r) else r


def _flow(x) -> str:
    """One value in yaml flow style, as upstream's yamls write layers: [-1, 1, Conv, [64, 6, 2, 2]]."""
    if isinstance(x, bool):
        return "True" if x else "False"
    if x is None:
        return "None"
    if isinstance(x, (int, float)):
        return repr(x)
    if isinstance(x, str):
        return x if _BARE.match(x) and x.lower() not in _YAML_WORDS else "'" + x.replace("'", "''") + "'"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in x.items()) + "}"
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in x) + "]"
    raise TypeError(f"cannot write {type(x).__name__} to a model yaml")


def yaml_text(d: dict, header: str = "", notes: list[str] | None = None) -> str:
    """The yaml file's text: upstream's layout (top-level keys, then one layer per line), `notes[i]` after layer i."""
    lines = [f"# {h}" if h else "#" for h in header.splitlines()] if header else []
    for k, v in d.items():
        if k in ("backbone", "head", "anchors"):
            continue
        lines.append(f"{k}: {_flow(v)}")
    lines.append("anchors:")
    lines += [f"  - {_flow(level)}" for level in d["anchors"]]
    i = 0
    for part in ("backbone", "head"):
        lines += ["", f"{part}:", "  # [from, number, module, args]"]
        for j, layer in enumerate(d[part]):
            note = notes[i] if notes and i < len(notes) else ""
            sep = "," if j < len(d[part]) - 1 else "]"
            lines.append(f"  {'[' if j == 0 else ' '}{_flow(layer)}{sep}  # {i}{' ' + note if note else ''}")
            i += 1
    return "\n".join(lines) + "\n"


def save_model_yaml(path: str | Path, d: dict, header: str = "", notes: list[str] | None = None) -> None:
    text = yaml_text(d, header, notes)
    atomic_write(path, lambda f: f.write(text), mode="w")


@torch.no_grad()
def check_rebuild(pruned: nn.Module, yaml_path: str | Path) -> None:
    """The written yaml must rebuild the pruned model: same parameter count, strict state_dict load, same output."""
    rebuilt = DetectionModel(yaml_load(yaml_path)).eval()
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    if count_params(rebuilt) != count_params(pruned):
        raise RuntimeError(f"{yaml_path} rebuilds {count_params(rebuilt):,} parameters, not {count_params(pruned):,}")
    s = probe_size(pruned)
    x = torch.rand(1, pruned.yaml.get("ch", 3), s, s, generator=torch.Generator().manual_seed(0))
    a, b = pruned.eval()(x)[0], rebuilt(x)[0]
    if not torch.allclose(a, b, atol=1e-5, rtol=1e-5):
        raise RuntimeError(f"{yaml_path}: the rebuilt model's output differs by {(a - b).abs().max():.3g}")
