"""Sparse training for network slimming: an L1 penalty on the BatchNorm weights (gamma) of prunable channels.

The penalty is added to the gradients after backward, AMP unscaling and clipping: grad(gamma) += sr * sign(gamma).
With SGD and momentum m a constant gradient g moves a weight by about lr * g / (1 - m) per step, so the penalty can
shrink a gamma by at most sum(lr * sr) / (1 - m) over the run: the "budget" printed at the start (`--shrink` sets
sr from it). `gamma_lr` K multiplies the gammas' whole gradient, loss and penalty alike: the balance between them
(a gamma survives where |dL/dgamma| > sr) stays where sr puts it and is reached K times sooner.

`polarize` t > 0 adds the polarization regulariser of Zhuang et al. (NeurIPS 2020), sr * (t * |gamma| -
|gamma - mean(gamma)|): gammas below the mean are pulled down by sr * (t + 1), those above by sr * (t - 1), so the
channels split into a group at 0 and a group that is kept, where plain L1 lets a whole layer shrink together (the
next BN renormalises it). The mean is taken per BN layer by default (`polarize_scope="layer"`) or over the network
as in the paper ("global"); gamma is not clamped to [0, 1] (a trained yolov5n has gammas up to 6).

A strong penalty moves the weights faster than BN running statistics follow, so after every epoch the EMA model's
statistics are recomputed on `recal_batches` training batches before it is validated and saved.
What was measured with each of these choices: docs/findings.md ("Sparse training", "BatchNorm statistics").
"""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn

from utils.engine import Hook, TrainState
from utils.hooks.bn_recal import BNRecalibration
from utils.files import atomic_write
from utils.log import LOGGER, colorstr
from utils.pruning.collapse import collapse
from utils.pruning.graph import build_groups, prunable_bns
from utils.pruning.groups import group_scores, safe_percent

PREFIX = colorstr("sparsity: ")
HIST_BINS = 80
HISTORY = "bn_gamma.json"  # the per-epoch histogram rows behind bn_gamma.png
# train_sparse.py's flags -> BNSparsity's arguments
FLAGS = {"sr": "sr", "sr_schedule": "schedule", "skip_shortcut": "skip_shortcut", "shrink": "shrink",
         "bn_recal": "recal_batches", "gamma_lr": "gamma_lr", "polarize": "polarize",
         "polarize_scope": "polarize_scope"}
USUAL_CUT = 0.5  # what users usually cut; the end verdict says what to change when far less is free


def sr_factor(schedule: str, epoch: int, epochs: int) -> float:
    """Multiplier of sr at an epoch: 1 throughout ('constant'), or from 1 down to 0.1 at the last epoch ('linear')."""
    if schedule == "constant":
        return 1.0
    return 1.0 - 0.9 * epoch / max(epochs - 1, 1)


def lr_sum(state: TrainState, schedule: str, group: int = 2, start: int | None = None) -> float:
    """sum over the optimizer steps from epoch `start` (default: the state's epoch, i.e. the steps still to come) of
    lr(step) * sr_factor(epoch), replaying warmup and accumulation as the loop will. Group 2 holds the BN weights."""
    w, lr0 = state.warmup, state.hyp["lr0"]
    fake = SimpleNamespace(param_groups=[{"initial_lr": lr0} for _ in range(3)])
    total = 0.0
    for epoch in range(state.epoch if start is None else start, state.epochs):
        last = state.nb * epoch - 1  # the loop starts a fresh accumulation every epoch
        f = sr_factor(schedule, epoch, state.epochs)
        for i in range(state.nb):
            ni = state.nb * epoch + i
            acc = w.step(fake, ni, epoch)
            lr = fake.param_groups[group]["lr"] if ni <= w.n else lr0 * w.lf(epoch)
            if ni - last >= acc:
                total += lr * f
                last = ni
    return total


def _centre(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean of w, mean of sign(w - mean)): the two shared terms of the polarization gradient over w."""
    mean = w.mean()
    return mean, torch.sign(w - mean).mean()


def gamma_stats(bns: dict[str, nn.BatchNorm2d]) -> np.ndarray:
    return torch.cat([b.weight.detach().abs().flatten().float().cpu() for b in bns.values()]).numpy()


class BNSparsity(Hook):
    """The L1-on-gamma hook of train_sparse.py.

    sr: penalty strength; shrink: instead of sr, how far (in |gamma|) the penalty alone should be able to move a
    gamma over the run, from which sr is derived; schedule: 'constant' or 'linear' (down to 10% at the last epoch);
    skip_shortcut: leave the BNs tied to residual adds unpenalised (and unpruned later); recal_batches: training
    batches over which the EMA model's BN statistics are recomputed after each epoch (0: never).
    """

    def __init__(self, sr: float = 0.001, schedule: str = "constant", skip_shortcut: bool = False,
                 shrink: float | None = None, recal_batches: int = 8, gamma_lr: float = 1.0, polarize: float = 0.0,
                 polarize_scope: str = "layer"):
        self.sr, self.schedule, self.skip_shortcut, self.shrink = sr, schedule, skip_shortcut, shrink
        self.recal, self.gamma_lr, self.polarize = BNRecalibration(recal_batches), gamma_lr, polarize
        self.polarize_scope = polarize_scope
        self.bns: dict[str, nn.BatchNorm2d] = {}
        self.history: list[np.ndarray] = []  # |gamma| histogram counts per epoch
        self.epochs: list[int] = []  # the epoch each history row follows (-1: before training)
        self.edges = np.zeros(0)
        self.start: dict = {}  # the whole run's median |gamma| at its start and its shrink budget
        self.record: dict = {}

    @classmethod
    def from_opt(cls, opt: argparse.Namespace) -> BNSparsity:
        """From train_sparse.py's options; a flag that a resumed run's saved options predate keeps its default."""
        return cls(**{arg: getattr(opt, flag) for flag, arg in FLAGS.items() if hasattr(opt, flag)})

    def on_train_start(self, state: TrainState) -> None:
        self.bns = prunable_bns(state.bare, self.skip_shortcut)
        g = gamma_stats(self.bns)
        momentum = state.hyp["momentum"]
        whole = self.gamma_lr * lr_sum(state, self.schedule, start=0) / (1 - momentum)
        if self.shrink is not None:  # from the whole run's steps: a resumed run keeps the sr it started with
            self.sr = self.shrink / max(whole, 1e-12)
        rest = self.gamma_lr * lr_sum(state, self.schedule) / (1 - momentum) if state.epoch else whole
        budget, median = self.sr * rest, float(np.median(g))
        # up to the 99th percentile (a few gammas reach 6 and would squeeze the near-zero mass into one bin);
        # larger values are counted in the last bin
        self.edges = np.linspace(0, max(float(np.quantile(g, 0.99)) * 1.2, 1e-6), HIST_BINS + 1)
        self.history, self.epochs = [np.histogram(np.clip(g, 0, self.edges[-1]), self.edges)[0]], [-1]
        self.start = {"median_gamma_start": median, "budget": self.sr * whole}  # a resumed run loads its own
        if state.epoch and not self._load_history(state):
            LOGGER.info(f"{PREFIX}no {HISTORY} from the interrupted run: bn_gamma.png starts at epoch {state.epoch}")
            self.epochs = [state.epoch - 1]
        faster = f", gamma lr x{self.gamma_lr:g}" if self.gamma_lr != 1 else ""
        t = self.polarize
        scope = "per layer" if self.polarize_scope == "layer" else "over the network"
        kind = f"polarization (t {t:g}, mean {scope})" if t else "L1"
        LOGGER.info(f"{PREFIX}{kind} on {len(self.bns)} BN layers ({g.size} channels), sr {self.sr:.3g} "
                    f"({self.schedule}{faster}); the penalty alone can shrink a gamma by about {budget:.3g} over "
                    f"the {'rest of the ' if state.epoch else ''}run (sum lr x sr / (1 - momentum)); "
                    f"median |gamma| now {median:.3f}")
        if t:
            LOGGER.info(f"{PREFIX}gammas below the mean move {t + 1:g}x that budget towards 0, those above it "
                        f"{t - 1:+g}x")
        if state.opt is not None and getattr(state.opt, "optimizer", "SGD") != "SGD":
            LOGGER.info(f"{PREFIX}with {state.opt.optimizer} that budget is only indicative: Adam rescales gradients")
        if budget < 0.25 * median:
            LOGGER.warning(f"{PREFIX}WARNING: this cannot sparsify: the penalty can move gamma by {budget:.3g} but "
                           f"the median |gamma| is {median:.3f}. Raise --sr or --epochs, or give --shrink "
                           f"{median:.2g} to derive sr from the shrink you want")
        self.record = {"sr": self.sr, "schedule": self.schedule, "gamma_lr": self.gamma_lr, **self.start,
                       "bn_layers": len(self.bns), "channels": int(g.size),
                       "skip_shortcut": self.skip_shortcut, "polarize": self.polarize,
                       "polarize_scope": self.polarize_scope}

    @torch.no_grad()
    def after_backward(self, state: TrainState) -> None:
        s = self.sr * sr_factor(self.schedule, state.epoch, state.epochs)
        bns = [bn for bn in self.bns.values() if bn.weight.grad is not None]
        if self.polarize and self.polarize_scope == "global" and bns:
            network = _centre(torch.cat([bn.weight.flatten() for bn in bns]))
        for bn in bns:
            g = torch.sign(bn.weight)
            if self.polarize:
                # d/dgamma_i of t|gamma_i| - sum_j |gamma_j - mean|: t sign(gamma_i) - sign(gamma_i - mean) + mean(sign)
                mean, shared = network if self.polarize_scope == "global" else _centre(bn.weight)
                g = self.polarize * g - torch.sign(bn.weight - mean) + shared
            bn.weight.grad.add_(g, alpha=s)
            if self.gamma_lr != 1:
                bn.weight.grad.mul_(self.gamma_lr)

    def on_epoch_end(self, state: TrainState) -> None:
        self.recal.on_epoch_end(state)

    def epoch_columns(self, state: TrainState) -> dict[str, float]:
        g = gamma_stats(self._ema_bns(state))
        self.history.append(np.histogram(np.clip(g, 0, self.edges[-1]), self.edges)[0])
        self.epochs.append(state.epoch)
        self._save_history(state)
        return {"sparse/sr": self.sr * sr_factor(self.schedule, state.epoch, state.epochs),
                "sparse/gamma<1e-2": float((g < 1e-2).mean()), "sparse/gamma<1e-3": float((g < 1e-3).mean()),
                "sparse/mean|gamma|": float(g.mean())}

    def on_train_end(self, state: TrainState) -> None:
        model = state.ema.ema if state.ema is not None else state.bare
        g = gamma_stats(self._ema_bns(state))
        scores = group_scores(model, build_groups(model, self.skip_shortcut))  # as prune.py's slim ranks them
        safe, dead = safe_percent(scores), collapse(scores)
        free = min(dead.share, safe)
        plot_gamma_history(np.array(self.history), self.edges, state.save_dir / "bn_gamma.png", self.epochs)
        self.record.update(median_gamma_end=float(np.median(g)), share_below_1e2=float((g < 1e-2).mean()),
                           share_below_1e3=float((g < 1e-3).mean()), safe_prune_percent=safe, **dead.record(),
                           free_percent=free)
        atomic_write(state.save_dir / "sparsity.json", lambda f: json.dump(self.record, f, indent=2), mode="w")
        LOGGER.info(f"{PREFIX}median |gamma| {self.record['median_gamma_start']:.3g} -> {np.median(g):.3g}, "
                    f"{(g < 1e-2).mean():.1%} below 1e-2; bn_gamma.png and sparsity.json written")
        LOGGER.info(f"{PREFIX}verdict: {dead.share:.1%} of the prunable channels have collapsed (|gamma| < "
                    f"{dead.threshold:.3g}); free to cut: --percent {free:.2f} (python prune.py --percent auto; "
                    f"largest percent that empties no layer {safe:.3f})")
        if free < USUAL_CUT / 2:
            LOGGER.warning(f"{PREFIX}WARNING: a --percent {USUAL_CUT} cut would remove live channels and lose mAP "
                           f"until fine-tuned. To sparsify more: {self.advice(dead.share)}")

    def advice(self, collapsed: float) -> str:
        """What to change in the next sparse run, from what this one did."""
        budget, median = self.record["budget"], self.record["median_gamma_start"]
        if budget < median:
            return (f"the penalty could move a gamma by only {budget:.3g} against a median |gamma| of {median:.3g}: "
                    f"give --shrink {1.5 * median:.2g} (or raise --sr, --epochs, --gamma-lr)")
        if not self.polarize:
            return ("the penalty was strong enough but the gammas shrank together instead of splitting: add "
                    "--polarize 1.2 (and --gamma-lr 10 on small data)")
        return (f"{collapsed:.1%} collapsed with polarization: train longer (--epochs), raise --shrink, or cut only "
                "what collapsed (--percent auto)")

    def _save_history(self, state: TrainState) -> None:
        """The histogram rows so far, written every epoch so that a resumed run's bn_gamma.png and sparsity.json
        cover the whole run, not just its last leg."""
        rec = {"edges": self.edges.tolist(), "epochs": self.epochs, "counts": [r.tolist() for r in self.history],
               "start": self.start}
        atomic_write(state.save_dir / HISTORY, lambda f: json.dump(rec, f), mode="w")

    def _load_history(self, state: TrainState) -> bool:
        """Restores the rows of the epochs before `state.epoch` (a row written after the last checkpoint is
        dropped: that epoch runs again). False, changing nothing, if the file is missing, unreadable or from other
        BN layers."""
        try:
            rec = json.loads((state.save_dir / HISTORY).read_text())
            edges, epochs, counts = np.array(rec["edges"], dtype=float), list(rec["epochs"]), rec["counts"]
            start = dict(rec["start"])
            keep = [i for i, e in enumerate(epochs) if e < state.epoch]
            if len(edges) != HIST_BINS + 1 or not keep or epochs[keep[0]] != -1 or \
                    any(sum(counts[i]) != sum(self.history[0]) for i in keep):
                return False
        except (OSError, ValueError, KeyError, TypeError):
            return False
        self.edges, self.epochs, self.start = edges, [epochs[i] for i in keep], start
        self.history = [np.array(counts[i]) for i in keep]
        return True

    def _ema_bns(self, state: TrainState) -> dict[str, nn.BatchNorm2d]:
        """The same BNs in the EMA model, which is what gets saved and pruned."""
        if state.ema is None:
            return self.bns
        modules = dict(state.ema.ema.named_modules())
        return {k: modules[k] for k in self.bns}


def plot_gamma_history(counts: np.ndarray, edges: np.ndarray, save_path, epochs: list[int] | None = None) -> None:
    """The classic slimming figure: the |gamma| distribution of every epoch, as a heat map and as curves.
    epochs: the epoch each row follows (-1: before training); by default rows 0, 1, ... are -1, 0, ..."""
    from utils.plots import plt

    epochs = list(range(-1, len(counts) - 1)) if epochs is None else epochs
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(12, 4.5), tight_layout=True)
    centres = (edges[:-1] + edges[1:]) / 2
    a0.imshow(np.log1p(counts), aspect="auto", origin="lower", cmap="viridis",
              extent=(edges[0], edges[-1], epochs[0] + 0.5, epochs[-1] + 1.5))
    a0.set_xlabel("|gamma| (the last bin holds everything above it)")
    a0.set_ylabel("epochs done (0: before training)")
    a0.set_title("BN |gamma| per epoch (log count)")
    step = max(1, (len(counts) - 1) // 6)
    for i in list(range(0, len(counts), step)) + ([len(counts) - 1] if (len(counts) - 1) % step else []):
        a1.plot(centres, counts[i], label="start" if epochs[i] == -1 else f"epoch {epochs[i]}")
    a1.set_yscale("symlog")
    a1.set_xlabel("|gamma|")
    a1.set_ylabel("channels")
    a1.legend()
    fig.savefig(save_path, dpi=150)
    plt.close(fig)
