"""Learning-rate policies, as callables for keras.callbacks.LearningRateScheduler."""

from __future__ import annotations

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
