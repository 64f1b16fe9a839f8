"""Learning-rate policies, as callables for keras.callbacks.LearningRateScheduler."""

from __future__ import annotations

from collections.abc import Callable


def triangular(base_lr: float, step_size: int, scale: float, start_at: str) -> Callable[[int], float]:
    """Smith's (2015) triangular cyclical policy: epoch -> lr between base_lr and base_lr*scale.

    Linear half-cycles of `step_size` epochs. With start_at='max' (seed 000's choice) epoch 0
    is at the maximum, epoch step_size at base_lr, epoch 2*step_size at the maximum again.
    Seed 000's Appendix B code meant this but cannot run as printed: it passes the first
    learning rate between epochs through a file `lr0.csv` (a race between parallel jobs) and
    uses an undefined `stepsize`; here the policy is a pure function of the epoch. The seed
    also rounded the rate to 5 significant digits, which is not reproduced.
    """
    if start_at not in ("max", "min"):
        raise ValueError(f"train.cyclic.start_at must be 'max' or 'min', got {start_at!r}")
    if step_size < 1 or scale < 1:
        raise ValueError(f"train.cyclic needs step_size >= 1 and scale >= 1, got {step_size} and {scale}")

    def lr_at(epoch: int) -> float:
        # Distance from the cycle's middle: 1 at epochs 0, 2k, 4k..., 0 at k, 3k...
        height = abs(epoch % (2 * step_size) - step_size) / step_size
        if start_at == "min":
            height = 1 - height
        return float(base_lr * (1 + (scale - 1) * height))

    return lr_at
