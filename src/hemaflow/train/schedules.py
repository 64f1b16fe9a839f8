"""Learning-rate policies, as callables for keras.callbacks.LearningRateScheduler."""

from __future__ import annotations

import math
from collections.abc import Callable


def triangular(mean_lr: float, step_size: int, scale: float, start_at: str) -> Callable[[int], float]:
    """Smith's (2015) triangular cyclical policy around `mean_lr`: epoch -> lr in [lo, lo*scale].

    lo = 2 * mean_lr / (1 + scale), so a whole cycle averages `mean_lr`: a triangular
    combination is compared with the constant one of the same `lr` at the same mean rate.
    That is seed 000's own pairing (constant 1e-4 against a cycle from 4e-5 to 1.6e-4, "min LR
    of 4e-5 ... corresponding to average of 1e-4"). Starting the cycle at `lr` instead would
    give it (1 + scale) / 2 = 2.5 times the constant twin's mean rate.

    Linear half-cycles of `step_size` epochs. With start_at='max' (seed 000's choice) epoch 0
    is at the maximum, epoch step_size at the minimum, epoch 2*step_size at the maximum again.
    Seed 000's Appendix B code meant this but cannot run as printed: it passes the first
    learning rate between epochs through a file `lr0.csv` (a race between parallel jobs) and
    uses an undefined `stepsize`; here the policy is a pure function of the epoch. The seed
    also rounded the rate to 5 significant digits, which is not reproduced.
    """
    if start_at not in ("max", "min"):
        raise ValueError(f"train.cyclic.start_at must be 'max' or 'min', got {start_at!r}")
    if step_size < 1 or scale < 1:
        raise ValueError(f"train.cyclic needs step_size >= 1 and scale >= 1, got {step_size} and {scale}")
    lo = 2 * mean_lr / (1 + scale)

    def lr_at(epoch: int) -> float:
        # Distance from the cycle's middle: 1 at epochs 0, 2k, 4k..., 0 at k, 3k...
        height = abs(epoch % (2 * step_size) - step_size) / step_size
        if start_at == "min":
            height = 1 - height
        return float(lo * (1 + (scale - 1) * height))

    return lr_at


def warmup_cosine(lr: float, epochs: int, warmup_epochs: int, floor: float) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay (Loshchilov & Hutter 2017, without restarts; Goyal et
    al. 2017's warm-up): epoch -> lr, per epoch as timm's schedulers step by default.

    Epochs 0..warmup_epochs-1 rise linearly, lr * (e + 1) / (warmup_epochs + 1), to reach `lr`
    at epoch `warmup_epochs`; from there a half cosine falls to lr * floor at the last epoch
    (`epochs` - 1, i.e. train.max_epochs: early stopping may end sooner, on a higher rate).
    """
    if epochs < 1 or not 0 <= warmup_epochs < epochs:
        raise ValueError(f"train.cosine.warmup_epochs must be at least 0 and below train.max_epochs ({epochs}), "
                         f"got {warmup_epochs}")  # fmt: skip
    if not 0 <= floor <= 1:
        raise ValueError(f"train.cosine.floor must be in [0, 1] (a fraction of lr), got {floor}")
    decay = epochs - 1 - warmup_epochs

    def lr_at(epoch: int) -> float:
        if epoch < warmup_epochs:
            return float(lr * (epoch + 1) / (warmup_epochs + 1))
        done = min(epoch - warmup_epochs, decay) / decay if decay else 0.0
        return float(lr * (floor + (1 - floor) * (1 + math.cos(math.pi * done)) / 2))

    return lr_at


def one_cycle(lr: float, epochs: int, peak_at: float, div: float, final_div: float) -> Callable[[int], float]:
    """Smith & Topor's (2018) one-cycle policy as PyTorch's OneCycleLR draws it (cosine both ways),
    per epoch: from lr / div at epoch 0 up to `lr` (the peak) at epoch round(peak_at * (epochs - 1)),
    then down to lr / (div * final_div) at the last epoch (`epochs` - 1, train.max_epochs).
    Defaults (schema) are PyTorch's: peak_at 0.3, div 25, final_div 1e4. Momentum is not cycled.
    """
    if epochs < 1 or not 0 <= peak_at <= 1:
        raise ValueError(f"train.onecycle.peak_at must be in [0, 1], got {peak_at}")
    if div < 1 or final_div < 1:
        raise ValueError(f"train.onecycle.div and final_div must be at least 1, got {div} and {final_div}")
    peak = round(peak_at * (epochs - 1))
    start, end = lr / div, lr / (div * final_div)

    def cosine(a: float, b: float, fraction: float) -> float:
        return b + (a - b) * (1 + math.cos(math.pi * fraction)) / 2

    def lr_at(epoch: int) -> float:
        if epoch <= peak:
            return float(cosine(start, lr, epoch / peak) if peak else lr)
        last = epochs - 1
        return float(cosine(lr, end, min(1.0, (epoch - peak) / max(last - peak, 1))))

    return lr_at
