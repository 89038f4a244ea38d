"""β schedules: every shape at its ends and middle; Q in epochs or steps; bad Q values."""
import math

import pytest
from omegaconf import OmegaConf

from vcon.errors import ConfigError
from vcon.schedule import SHAPES, Schedule, from_config

MIDDLE = {"linear": 0.5, "cosine": 0.5, "cubic": 0.125, "exp": (math.exp(-2.5) - math.exp(-5)) / (1 - math.exp(-5)),
          "step": 0.5}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_shape_is_one_at_start_zero_at_q_and_after(shape):
    s = Schedule(shape, 100)
    assert s.beta(0) == 1.0
    assert s.beta(50) == pytest.approx(MIDDLE[shape])
    assert s.beta(100) == 0.0
    assert s.beta(1000) == 0.0
    values = [s.beta(t) for t in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False)), "beta never rises"


def test_linear_is_the_papers_formula():
    s = Schedule("linear", 37)
    assert all(s.beta(t) == pytest.approx(max(1 - t / 37, 0)) for t in range(60))


def test_step_shape_has_stages():
    s = Schedule("step", 100, {"stages": 4})
    assert [s.beta(t) for t in (0, 24, 25, 49, 50, 75, 99)] == [1, 1, 0.75, 0.75, 0.5, 0.25, 0.25]


def test_q_zero_is_one_shot():
    assert Schedule("linear", 0).beta(0) == 0.0


def vcon(**kw):
    return OmegaConf.create({"shape": "linear", "epochs": 12, "steps": None, **kw})


def test_q_in_epochs_becomes_optimizer_steps():
    # 390 optimizer steps an epoch (already divided by gradient accumulation by the trainer).
    assert from_config(vcon(epochs=12), steps_per_epoch=390, total_steps=60 * 390).q_steps == 12 * 390
    assert from_config(vcon(epochs=0.5), steps_per_epoch=390, total_steps=390).q_steps == 195


def test_vcon_epochs_zero_stays_one_shot_and_the_smallest_q_the_refusal_names_is_one_step():
    assert from_config(vcon(epochs=0), steps_per_epoch=10, total_steps=100).q_steps == 0
    assert from_config(vcon(epochs=0.1), steps_per_epoch=10, total_steps=100).q_steps == 1
    assert from_config(vcon(epochs=1 / 390), steps_per_epoch=390, total_steps=390).q_steps == 1  # shown as 0.00256
    with pytest.raises(ConfigError, match=r"at least 0.00256 \(one step\)"):
        from_config(vcon(epochs=0.001), steps_per_epoch=390, total_steps=390)


def test_q_in_steps_overrides_epochs():
    assert from_config(vcon(steps=77), steps_per_epoch=10, total_steps=100).q_steps == 77


@pytest.mark.parametrize("kw, message", [
    ({"epochs": -1}, "vcon.epochs=-1"),
    ({"steps": -5}, "vcon.steps=-5"),
    ({"epochs": 12}, "vcon.epochs=12 is 120 optimizer steps, longer than the run's 100"),
    ({"shape": "sigmoid"}, "vcon.shape='sigmoid'"),
    ({"epochs": 0.04}, "vcon.epochs=0.04 is 0.4 of the 10 optimizer steps an epoch, which rounds to no step; allowed: "
                       r"vcon.epochs=0 for one-shot compression, or at least 0.1 \(one step\) for VCON"),
])
def test_bad_q_or_shape_is_refused(kw, message):
    with pytest.raises(ConfigError, match=message):
        from_config(vcon(**kw), steps_per_epoch=10, total_steps=100)
