"""Learning-rate schedules by name: the one table that both config validation and the training loop read."""
from __future__ import annotations

from typing import Literal


def _linear(optimizer, total_steps: int, warmup_ratio: float, decay_ratio: float):
    from transformers import get_linear_schedule_with_warmup
    return get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), total_steps)


def _constant(optimizer, total_steps: int, warmup_ratio: float, decay_ratio: float):
    from transformers import get_constant_schedule
    return get_constant_schedule(optimizer)


def _constant_then_linear(optimizer, total_steps: int, warmup_ratio: float, decay_ratio: float):
    # Held long enough for GA's shift to show, then decayed so that RGA's last epoch does not land on a swing
    # of clean accuracy (experiments/demo-robustness).
    from transformers import get_wsd_schedule
    decay = max(1, round(decay_ratio * total_steps))
    return get_wsd_schedule(optimizer, 0, decay, num_stable_steps=total_steps - decay, decay_type="linear")


SCHEDULES = {"linear": _linear, "constant": _constant, "constant_then_linear": _constant_then_linear}
# pydantic validates against this, so a schedule added to the table is accepted by the config at once.
ScheduleName = Literal[tuple(SCHEDULES)]  # type: ignore[valid-type]
