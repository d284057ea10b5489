"""Batch-1 latency of a base and a pruned model: PyTorch eager, ONNX Runtime and OpenVINO fp32 and int8, several
sizes, one run.

    python benchmarks/latency.py --weights base.pt --pruned pruned.pt --data data/coco128.yaml --imgsz 320 640
    python benchmarks/latency.py --weights base.pt --pruned pruned.pt --data data/coco128.yaml --map   # + mAP
    python benchmarks/latency.py --weights base.pt --pruned pruned=a.pt round16=b.pt --data my.yaml     # several

Each size gets its own fixed-shape exports (fp32, and int8 calibrated on --data's train images unless --no-int8:
ONNX Runtime static QDQ, OpenVINO through NNCF) under runs/benchmarks/latency/; all models of a size are timed in
interleaved rounds (utils/latency.py), medians over --runs calls after warm-up. Three ratios per row: to the base in
PyTorch fp32, to the base in the same runtime and precision, and to the base in the same runtime's fp32 (what a
user deploying that runtime compares an int8 model with). OpenVINO rows: "fp32" forces f32 inference; "auto" is the
CPU plugin's own choice (bf16 on CPUs with AMX or AVX512-BF16, which is not fp32). --map evaluates every row's file
at its size with val.py on --data (batch 1, square letterbox, as fixed-shape files run). Writes latency.json and
latency.md. On CUDA (--device 0) the PyTorch rows run fp16.
"""

from __future__ import annotations

import argparse
import json
import sys
from argparse import Namespace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import export  # noqa: E402
import val  # noqa: E402
from utils.checkpoint import load_model  # noqa: E402
from utils.errors import UserError, cli  # noqa: E402
from utils.files import atomic_write, file_size_mb  # noqa: E402
from utils.latency import measure, torch_runner  # noqa: E402
from utils.log import LOGGER  # noqa: E402
from utils.onnx_backend import OnnxModel  # noqa: E402
from utils.openvino_backend import OpenVinoModel  # noqa: E402
from utils.torch_utils import select_device  # noqa: E402


BACKENDS = ("pytorch", "onnxruntime", "openvino")
EXPORTED = {  # row name: (export_weights' key, loader)
    "onnxruntime fp32": ("onnx", OnnxModel), "onnxruntime int8": ("int8", OnnxModel),
    "openvino fp32": ("openvino", OpenVinoModel),
    "openvino auto": ("openvino", lambda f: OpenVinoModel(f, precision="default")),
    "openvino int8": ("openvino_int8", lambda f: OpenVinoModel(f, precision="default")),
}


def export_size(name: str, w: Path, size: int, opt: argparse.Namespace, out: Path) -> dict:
    include = ["onnx"] * ("onnxruntime" in opt.backends) + ["openvino"] * ("openvino" in opt.backends)
    ns = Namespace(imgsz=[size, size], dynamic=False, opset=export.OPSET, int8=opt.int8, data=opt.data,
                   calib_images=opt.calib_images, calibration="minmax", include=include, ov_preset="mixed")
    return export.export_weights(w, ns, out / f"{name}-{size}.onnx")


def rows_for_size(size: int, models: dict[str, Path], opt, out: Path, device: torch.device) -> list[dict]:
    runners, files = {}, {}
    half = device.type == "cuda"
    for name, w in models.items():
        if "pytorch" in opt.backends:
            m = load_model(w, device, fuse=True)
            runners[(name, "pytorch fp16" if half else "pytorch fp32")] = torch_runner(m.half() if half else m, size,
                                                                                        device)
            files[(name, "pytorch fp16" if half else "pytorch fp32")] = w
        if opt.backends == ["pytorch"]:
            continue
        e = export_size(name, w, size, opt, out)
        for backend, (key, load) in EXPORTED.items():
            if key in e:
                runners[(name, backend)] = load(e[key]).runner(size)
                files[(name, backend)] = Path(e[key])
    LOGGER.info(f"\nlatency at {size}: {opt.runs} runs per model in 5 interleaved rounds...")
    times = measure(runners, runs=opt.runs, rounds=5, warmup=5)
    return ratio_rows(size, times, next(iter(models)), "pytorch fp16" if half else "pytorch fp32", files)


def ratio_rows(size: int, times: dict[tuple[str, str], dict], base: str, ref: str,
               files: dict[tuple[str, str], Path]) -> list[dict]:
    """One row per (model, backend) timed: its ms and three ratios, to `base` in backend `ref` (PyTorch), in the
    same backend (runtime and precision), and in the same runtime's fp32 ("openvino int8" -> "openvino fp32")."""
    def ratio(t: dict, key: tuple[str, str]) -> float | None:
        return round(t["ms"] / times[key]["ms"], 3) if key in times else None

    return [{"imgsz": size, "model": name, "backend": backend, "ms": round(t["ms"], 2), "p10": round(t["p10"], 2),
             "p90": round(t["p90"], 2), "ratio": ratio(t, (base, ref)), "ratio_same": ratio(t, (base, backend)),
             "ratio_fp32": ratio(t, (base, f"{backend.split()[0]} fp32")), "file": str(files[(name, backend)]),
             "file_MB": round(file_size_mb(files[(name, backend)]), 2)} for (name, backend), t in times.items()]


def add_map(rows: list[dict], opt: argparse.Namespace, out: Path) -> None:
    """mAP50 and mAP50-95 of every row's file on --data's val split, at the row's size (batch 1, square)."""
    for size in dict.fromkeys(r["imgsz"] for r in rows):
        mine = [r for r in rows if r["imgsz"] == size]
        vopt = val.parse_opt(["--weights", *[r["file"] for r in mine], "--data", opt.data, "--imgsz", str(size),
                              "--project", str(out), "--name", f"val-{size}", "--exist-ok", "--latency-runs", "0",
                              "--batch-size", "1", "--task", "val", "--no-plots", "--workers", "2"])
        for r, rec in zip(mine, val.run(vopt)):
            r["mAP50"], r["mAP50-95"] = round(rec["mAP50"], 4), round(rec["mAP50-95"], 4)


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def table(rows: list[dict]) -> str:
    has_map = any("mAP50" in r for r in rows)
    head = ("| size | model | backend | ms (median) | p10-p90 | vs base PyTorch | vs base, same runtime and precision "
            "| vs base, same runtime fp32 | MB |" + (" mAP50 | mAP50-95 |" if has_map else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        m = f" {r['mAP50']:.3f} | {r['mAP50-95']:.3f} |" if "mAP50" in r else (" | |" if has_map else "")
        lines.append(f"| {r['imgsz']} | {r['model']} | {r['backend']} | {r['ms']:.1f} | {r['p10']:.1f}-{r['p90']:.1f} "
                     f"| {_x(r['ratio'])} | {_x(r['ratio_same'])} | {_x(r['ratio_fp32'])} | {r['file_MB']:.2f} |{m}")
    return "\n".join(lines)


@cli
def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="base checkpoint")
    p.add_argument("--pruned", nargs="*", default=[], metavar="[NAME=]PT",
                   help="pruned (or finetuned) checkpoints to compare with the base, optionally named: r16=last.pt")
    p.add_argument("--data", required=True, help="dataset yaml: int8 calibration images (and --map)")
    p.add_argument("--imgsz", type=int, nargs="+", default=[320, 640])
    p.add_argument("--runs", type=int, default=60, help="timed calls per model and size (>= 50 recommended)")
    p.add_argument("--calib-images", type=int, default=100)
    p.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True, help="also time int8 exports")
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS, help="runtimes to time")
    p.add_argument("--map", action="store_true", help="also mAP50 and mAP50-95 of every row's file (val.py)")
    p.add_argument("--device", default="cpu", help="PyTorch device (ONNX Runtime and OpenVINO run on the CPU)")
    p.add_argument("--out", default=str(ROOT / "runs/benchmarks/latency"))
    opt = p.parse_args(argv)
    models = {"base": Path(opt.weights)}
    for i, arg in enumerate(opt.pruned):
        name, _, path = arg.rpartition("=")
        models[name or ("pruned" if len(opt.pruned) == 1 else f"pruned{i + 1}")] = Path(path)
    for w in models.values():
        if not w.is_file():
            raise UserError(f"weights not found: {w}")
    out = Path(opt.out)
    out.mkdir(parents=True, exist_ok=True)
    device = select_device(opt.device)
    rows = [r for s in opt.imgsz for r in rows_for_size(s, models, opt, out, device)]
    if opt.map:
        add_map(rows, opt, out)
    md = table(rows)
    threads = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    print(f"\n{threads}; batch 1, medians over {opt.runs} runs after warm-up, interleaved rounds\n\n{md}")
    atomic_write(out / "latency.json", lambda f: json.dump(rows, f, indent=1), mode="w")
    atomic_write(out / "latency.md", lambda f: f.write(f"{threads}\n\n{md}\n"), mode="w")
    print(f"\nwritten: {out / 'latency.md'}, {out / 'latency.json'}")
    return rows


if __name__ == "__main__":
    main()
