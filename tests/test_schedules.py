import pytest

from crossover.specs import parse_study
from crossover.trainers.schedules import eval_steps, lr_at, total_steps

SPEC = {
    "name": "sched",
    "objective": "ar",
    "data": {"seq_len": 128, "unique_tokens": "100k"},
    "train": {
        "total_tokens": "1M",
        "global_batch_tokens": 4096,
        "micro_batch": 8,
        "warmup_tokens": "100k",
        "lr": 1e-3,
        "min_lr": 1e-4,
        "decay_fraction": 0.2,
    },
}


def trial(**overrides):
    spec = {**SPEC, **{k: {**SPEC.get(k, {}), **v} for k, v in overrides.items()}}
    return parse_study(spec).expand()[0]


def test_wsd_warms_up_holds_and_decays_exponentially():
    t = trial().train
    assert lr_at(0, t) == pytest.approx(1e-3 / 100_000)
    assert lr_at(50_000, t) == pytest.approx(0.5e-3, rel=1e-4)
    assert lr_at(100_000, t) == lr_at(700_000, t) == 1e-3
    assert lr_at(900_000, t) == pytest.approx(1e-3 * 0.1**0.5)  # halfway through the decay: geometric mean
    assert lr_at(1_000_000, t) == pytest.approx(1e-4)


def test_cosine_and_constant():
    cosine = trial(train={"schedule": "cosine"}).train
    assert lr_at(100_000, cosine) == pytest.approx(1e-3)
    assert lr_at(550_000, cosine) == pytest.approx((1e-3 + 1e-4) / 2)
    assert lr_at(1_000_000, cosine) == pytest.approx(1e-4)
    constant = trial(train={"schedule": "constant"}).train
    assert lr_at(999_999, constant) == 1e-3


def test_eval_every_epoch_every_tokens_and_log_spaced():
    t = trial()
    assert total_steps(t) == 244  # 1M // 4096
    epochs = eval_steps(t)  # one epoch = 100k tokens = 24.4 steps
    assert epochs[0] == 25 and epochs[-1] == 244 and len(epochs) == 10
    assert eval_steps(trial(eval={"every": "250k"})) == [62, 123, 184, 244]
    log = eval_steps(trial(eval={"every": "log:5"}))
    assert log[0] == 1 and log[-1] == 244 and len(log) == 5
    assert all(b / a == pytest.approx(log[1] / log[0], rel=0.5) for a, b in zip(log, log[1:], strict=False))
