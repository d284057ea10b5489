"""Train a YOLOv5 detector with YOLOv5's recipe; the one training loop that train_sparse.py and finetune.py extend.

    python train.py                                                       # yolov5s from scratch on data/synthetic.yaml
    python train.py --cfg yolov5n.yaml --weights '' --imgsz 320 --epochs 30
    python train.py --weights yolov5n.pt --data coco128.yaml --epochs 10  # from a checkpoint on disk
    python train.py --resume                                              # continue the newest interrupted run
    torchrun --nproc_per_node 2 train.py --data data/synthetic.yaml --device cpu  # DDP

Writes runs/train/exp/{weights/last.pt, weights/best.pt, results.csv, results.png, results.json, opt.yaml, hyp.yaml}.
"""

from __future__ import annotations

import argparse

from utils import trainer
from utils.errors import cli
from utils.train_options import build_parser, finalize_opt


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    return finalize_opt(build_parser(__doc__).parse_args(argv))


def run(opt: argparse.Namespace, hooks: trainer.HookSpec = ()) -> dict:
    """Train as `opt` says, with `hooks` added to the loop (utils/engine.py's Hook); the results.json record."""
    return trainer.run(opt, hooks)


@cli
def main(argv: list[str] | None = None) -> dict:
    return run(parse_opt(argv))


if __name__ == "__main__":
    main()
