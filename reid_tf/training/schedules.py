"""Per-epoch learning-rate schedules.

FlipReID's modes (``constant``, ``linear``, ``cosine``, ``warmup``, ``default``; flipreid.md
§6.6) and the warm-up + multi-step schedule of MSINet and CM-NAS (``warmup_multistep``;
msinet.md §9.4, cmnas.md §8.2). The rate is constant within an epoch and floored at
``lower_bound``. ``epoch`` is the 0-based epoch index of the current training phase and
``epoch_num`` the flag of the same name.
"""
import dataclasses
import math

from reid_tf.runtime.choices import LEARNING_RATE_MODES as MODES


@dataclasses.dataclass(frozen=True)
class LearningRateSchedule:
    mode: str = "default"
    start: float = 2e-4
    end: float = 2e-4
    base: float = 2e-4
    warmup_epochs: int = 10
    steady_epochs: int = 30
    drop_factor: float = 10.0
    lower_bound: float = 2e-6
    epoch_num: int = 1000000
    milestones: tuple = ()
    warmup_factor: float = 0.01
    gamma: float = 0.1

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"Unknown learning_rate_mode {self.mode!r} (flag "
                             f"--learning_rate_mode); expected one of {', '.join(MODES)}.")
        if self.mode == "constant" and self.start != self.end:
            raise ValueError("learning_rate_mode 'constant' needs learning_rate_start == "
                             f"learning_rate_end (got {self.start} and {self.end}).")
        if self.mode == "cosine" and not self.start > self.end:
            raise ValueError("learning_rate_mode 'cosine' needs learning_rate_start > "
                             f"learning_rate_end (got {self.start} and {self.end}).")
        if self.mode in ("linear", "cosine") and self.epoch_num < 2:
            raise ValueError(f"learning_rate_mode {self.mode!r} needs --epoch_num >= 2.")
        if self.mode in ("warmup", "default") and self.warmup_epochs < 2:
            raise ValueError(f"learning_rate_mode {self.mode!r} needs "
                             "--learning_rate_warmup_epochs >= 2 (the reference divides by "
                             "warmup_epochs - 1).")
        if self.mode == "default" and self.drop_factor == 0 and self.epoch_num <= 2 * self.warmup_epochs:
            raise ValueError("learning_rate_drop_factor 0 derives the drop from --epoch_num, "
                             "which must then exceed 2 * --learning_rate_warmup_epochs.")
        if self.mode == "default" and self.steady_epochs < 1:
            raise ValueError("--learning_rate_steady_epochs must be >= 1.")
        if any(later < earlier for earlier, later in zip(self.milestones, self.milestones[1:])):
            raise ValueError(f"--learning_rate_milestones must be ascending, got {self.milestones}.")

    def drop(self):
        """The default mode's drop factor, derived from the schedule when the flag is 0."""
        if self.drop_factor != 0:
            return self.drop_factor
        return math.exp(self.steady_epochs / (self.epoch_num - 2 * self.warmup_epochs)
                        * math.log(self.base / self.lower_bound))

    def __call__(self, epoch):
        e = epoch
        if self.mode == "constant":
            rate = self.start
        elif self.mode == "linear":
            rate = self.start + (self.end - self.start) * e / (self.epoch_num - 1)
        elif self.mode == "cosine":
            rate = (self.start + self.end) / 2 + (self.start - self.end) / 2 * math.cos(
                math.pi * e / (self.epoch_num - 1))
        elif self.mode == "warmup":
            rate = min(self.start + (self.end - self.start) * e / (self.warmup_epochs - 1),
                       self.end)
        elif self.mode == "default":
            if e < self.warmup_epochs:
                rate = self.lower_bound + (self.base - self.lower_bound) * e / (
                    self.warmup_epochs - 1)
            else:
                rate = self.base / self.drop() ** math.floor(
                    (e - self.warmup_epochs) / self.steady_epochs)
        else:  # warmup_multistep
            if e < self.warmup_epochs:
                alpha = e / self.warmup_epochs
                warm = self.warmup_factor * (1 - alpha) + alpha
            else:
                warm = 1.0
            drops = sum(1 for milestone in self.milestones if milestone <= e)
            rate = self.base * warm * self.gamma ** drops
        return max(rate, self.lower_bound)


def parse_milestones(text):
    """``"150,225,300"`` -> ``(150, 225, 300)``; empty -> ``()``."""
    text = str(text).strip()
    if not text:
        return ()
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise ValueError(f"--learning_rate_milestones must be comma-separated integers, "
                         f"got {text!r}.") from None
