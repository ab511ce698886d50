import math

import pytest
import torch

from ffpipe.errors import FFPipeError
from ffpipe.ff.optim import OPTIMIZERS, SCHEDULES, lr_at, make_optimizer, set_lr


def test_constant_schedule():
    assert [lr_at("constant", 0.01, e, 5) for e in range(1, 6)] == [0.01] * 5


def loewex_cooldown(lr: float, epoch0: int, epochs: int) -> float:
    """loeweX's `get_linear_cooldown_lr`, written out here as the reference: epoch0 counts from 0."""
    return lr * 2 * (1 + epochs - epoch0) / epochs if epoch0 > epochs // 2 else lr


def test_cooldown_matches_seed000_eq3_by_hand():
    # E = 10, 0-indexed e = epoch - 1: flat through e = 6, then lr_e = (2/10) * lr * (11 - e).
    assert lr_at("cooldown", 1.0, 1, 10) == 1.0
    assert lr_at("cooldown", 1.0, 6, 10) == 1.0
    assert lr_at("cooldown", 1.0, 7, 10) == pytest.approx(1.0)
    assert lr_at("cooldown", 1.0, 8, 10) == pytest.approx(0.8)
    assert lr_at("cooldown", 1.0, 10, 10) == pytest.approx(0.4)
    assert lr_at("cooldown", 5e-5, 101, 200) == 5e-5
    assert lr_at("cooldown", 5e-5, 191, 200) == pytest.approx(5e-5 * 2 / 200 * 11)


def test_one_epoch_runs_at_the_base_rate():
    assert lr_at("cooldown", 2e-3, 1, 1) == 2e-3


@pytest.mark.parametrize("epochs", range(1, 31))
def test_cooldown_equals_loewex_and_never_exceeds_the_base(epochs):
    ours = [lr_at("cooldown", 1.0, e, epochs) for e in range(1, epochs + 1)]
    theirs = [loewex_cooldown(1.0, e0, epochs) for e0 in range(epochs)]
    assert max(ours) == 1.0
    assert ours == pytest.approx([min(1.0, t) for t in theirs])
    if epochs % 2 == 0 or epochs == 1:  # loeweX's own schedule never exceeds the base for these E
        assert ours == pytest.approx(theirs)


def test_multistep_by_hand():
    got = [lr_at("multistep", 1.0, e, 6, milestones=(2, 4), gamma=0.5) for e in range(1, 7)]
    assert got == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25, 0.25])


def test_multistep_equals_torch_multisteplr_over_10_epochs():
    milestones, gamma, base = (3, 7), 0.1, 0.05
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=gamma)
    for epoch in range(1, 11):
        ours = lr_at("multistep", base, epoch, 10, milestones=milestones, gamma=gamma)
        assert ours == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()


def test_cosine_by_hand_and_against_torch():
    assert lr_at("cosine", 2.0, 1, 4) == pytest.approx(2.0)
    assert lr_at("cosine", 2.0, 3, 4) == pytest.approx(1.0)
    assert lr_at("cosine", 2.0, 4, 4) == pytest.approx(1.0 + math.cos(math.pi * 3 / 4))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8)
    for epoch in range(1, 9):
        assert lr_at("cosine", 2.0, epoch, 8) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()


def test_unknown_schedule_and_optimizer_raise_one_line_error():
    with pytest.raises(FFPipeError, match="unknown lr schedule 'step'.*cooldown"):
        lr_at("step", 0.1, 1, 10)
    with pytest.raises(FFPipeError, match="unknown optimizer 'rmsprop'.*adamw"):
        make_optimizer([torch.nn.Parameter(torch.zeros(1))], "rmsprop", 0.1)


@pytest.mark.parametrize("epoch", [0, 11])
def test_epoch_out_of_range_raises(epoch):
    with pytest.raises(FFPipeError, match="outside 1..10"):
        lr_at("constant", 0.1, epoch, 10)


@pytest.mark.parametrize("lr", [-1e-3, float("nan"), float("inf")])
def test_bad_learning_rate_raises(lr):
    with pytest.raises(FFPipeError, match="learning rate"):
        make_optimizer([torch.nn.Parameter(torch.zeros(1))], "adam", lr)


def test_zero_learning_rate_freezes_exactly():
    """lr = 0 is a real setting (FGFF's plain-FF twin, seed 004 §III-D): the parameter must not move."""
    w = torch.nn.Parameter(torch.ones(4))
    opt = make_optimizer([w], "adam", 0.0)
    (w * torch.arange(4.0)).sum().backward()
    opt.step()
    assert torch.equal(w.detach(), torch.ones(4))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_steps_and_lowers_a_quadratic(name):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8))
    opt = make_optimizer([w], name, 0.05, weight_decay=1e-4)
    start = float((w.detach() ** 2).sum())
    for _ in range(20):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    assert float((w.detach() ** 2).sum()) < start


def test_optimizer_kinds_and_hyperparameters():
    p = [torch.nn.Parameter(torch.zeros(2))]
    sgd = make_optimizer(p, "sgd", 0.1, momentum=0.5, weight_decay=0.01)
    assert type(sgd) is torch.optim.SGD
    assert sgd.param_groups[0]["momentum"] == 0.5 and sgd.param_groups[0]["weight_decay"] == 0.01
    adam = make_optimizer(p, "adam", 0.1, betas=(0.8, 0.99))
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["betas"] == (0.8, 0.99)
    assert type(make_optimizer(p, "adamw", 0.1, weight_decay=0.01)) is torch.optim.AdamW


def test_set_lr_changes_every_group_and_the_step_size():
    w = torch.nn.Parameter(torch.ones(1))
    b = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([{"params": [w]}, {"params": [b]}], lr=1.0)
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]
    (w + b).sum().backward()
    opt.step()
    assert float(w.detach()) == pytest.approx(0.75) and float(b.detach()) == pytest.approx(0.75)


def test_every_schedule_is_positive_and_starts_at_base():
    for schedule in SCHEDULES:
        lrs = [lr_at(schedule, 0.1, e, 7, milestones=(3,)) for e in range(1, 8)]
        assert lrs[0] == pytest.approx(0.1)
        assert all(lr > 0 for lr in lrs)
