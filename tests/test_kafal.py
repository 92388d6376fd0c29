"""KAFAL on hand-built inputs: KSAS scores (spec 4.2) and the KCFU objective (spec 4.3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fal_shared.config import RunConfig
from fal_shared.objectives import KCFU, ObjectiveInputs, build_objective, compensation_weights, kcfu_compensation
from fal_shared.training import Prediction, TrainSettings, train_model
from query import PoolContext, get_selector, run_selection
from query.kafal import ksas_scores


def _softmax(a):
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sym_kl(p, q):
    return 0.5 * ((p * np.log(p / q)).sum(1) + (q * np.log(q / p)).sum(1))


# ---------------------------------------------------------------------- KSAS
LOCAL = np.array([[2.0, 5.0, 0.0], [0.0, -1.0, 1.0], [1.0, 3.0, 1.0], [0.5, 0.0, 0.4]])
GLOBAL = np.array([[0.0, -4.0, 2.0], [0.0, 2.0, 1.0], [1.0, 0.0, 1.0], [3.0, 1.0, -2.0]])
COUNTS = np.array([5, 0, 3])  # class 1 never labeled by this client


def _log_softmax(a):
    return torch.log_softmax(torch.as_tensor(a, dtype=torch.float64), dim=1).numpy()


def test_ksas_scores_leave_out_a_class_the_client_never_labeled():
    d = ksas_scores(_log_softmax(LOCAL), _log_softmax(GLOBAL), COUNTS, tau=1.0)
    seen = [0, 2]
    adjust = np.log(COUNTS[seen])
    expected = _sym_kl(_softmax(GLOBAL[:, seen] + adjust), _softmax(LOCAL[:, seen] + adjust))
    np.testing.assert_allclose(d, expected, rtol=1e-12, atol=1e-14)
    assert np.isfinite(d).all() and (d >= 0).all()
    # the unseen class's logits do not matter (its adjusted probability is exactly 0 in both models)
    moved = LOCAL.copy()
    moved[:, 1] += 7.0
    np.testing.assert_allclose(ksas_scores(_log_softmax(moved), _log_softmax(GLOBAL), COUNTS), d, rtol=1e-12, atol=1e-14)


def test_the_reference_formula_is_nan_with_an_unlabeled_class():
    # what KAFAL main.py get_discrepancy computes in today's PyTorch (spec 4.2 pitfall)
    spc = torch.as_tensor(COUNTS, dtype=torch.float32).log()
    a_l, a_g = torch.as_tensor(LOCAL, dtype=torch.float32) + spc, torch.as_tensor(GLOBAL, dtype=torch.float32) + spc
    ref = F.kl_div(F.log_softmax(a_l, -1), F.softmax(a_g, -1), reduction="none").sum(1)
    assert torch.isnan(ref).all()


def test_ksas_logit_adjustment_multiplier():
    # tau = 0: plain symmetric KL of the two models restricted to the labeled classes
    d = ksas_scores(_log_softmax(LOCAL), _log_softmax(GLOBAL), COUNTS, tau=0.0)
    np.testing.assert_allclose(d, _sym_kl(_softmax(GLOBAL[:, [0, 2]]), _softmax(LOCAL[:, [0, 2]])), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="no labels"):
        ksas_scores(_log_softmax(LOCAL), _log_softmax(GLOBAL), np.zeros(3, dtype=int))


class _Bank:
    """Fixed logits for the local and global models (what ModelBank.pool returns)."""

    def __init__(self, local, global_, head="softmax"):
        self.preds = {
            kind: Prediction(outputs=_softmax(v), logits=v.astype(np.float32), features=np.zeros((len(v), 2)), head=head)
            for kind, v in (("local", local), ("global", global_))
        }

    def pool(self, kind):
        return self.preds[kind]


def _ctx(local, global_, labeled_y, budget, seed=0, head="softmax"):
    n = len(local)
    return PoolContext(
        pool_ids=100 + np.arange(n), labeled_ids=np.arange(len(labeled_y)), labeled_y=np.asarray(labeled_y),
        budget=budget, num_classes=local.shape[1], rng=np.random.default_rng(seed),
        models=_Bank(local, global_, head), params={"kafal-logit-adjustment": 1.0},
    )


def test_ksas_selector_takes_the_largest_discrepancies():
    labeled_y = [0] * 5 + [2] * 3
    out = run_selection(get_selector("kafal"), _ctx(LOCAL, GLOBAL, labeled_y, budget=2))
    d = ksas_scores(_log_softmax(LOCAL), _log_softmax(GLOBAL), COUNTS)
    assert set(out.positions) == set(np.argsort(-d)[:2])
    assert out.diagnostics["kafal-labeled-classes"] == 2


def test_ksas_ties_are_broken_at_random_but_seeded():
    # one labeled class: every adjusted distribution is a point mass, every score 0
    local = np.random.default_rng(0).normal(size=(30, 3))
    picks = [tuple(run_selection(get_selector("kafal"), _ctx(local, -local, [1, 1], 5, seed=s)).positions) for s in (0, 0, 1)]
    assert picks[0] == picks[1] and picks[0] != picks[2]


def test_ksas_reads_an_evidential_model_as_alpha_over_s():
    labeled_y = [0] * 5 + [2] * 3
    ctx = _ctx(LOCAL, GLOBAL, labeled_y, budget=4, head="evidential")
    get_selector("kafal").select(ctx)
    log_p = {k: np.log((np.maximum(v, 0) + 1) / (np.maximum(v, 0) + 1).sum(1, keepdims=True)) for k, v in (("l", LOCAL), ("g", GLOBAL))}
    expected = ksas_scores(log_p["l"], log_p["g"], COUNTS)
    assert ctx.diagnostics["kafal-mean-discrepancy"] == pytest.approx(expected.mean(), rel=1e-6)


# ---------------------------------------------------------------------- KCFU
def test_kcfu_class_weights_are_normalised_inverse_frequencies_and_zero_for_unlabeled_classes():
    gamma = compensation_weights(np.array([10, 0, 2, 4]))
    inv = np.array([1 / 10, 0, 1 / 2, 1 / 4])
    np.testing.assert_allclose(gamma.numpy(), inv / inv.sum(), rtol=1e-5)
    assert compensation_weights(np.zeros(3)).sum() == 0  # no labels: no weights, no NaN


def test_kcfu_compensation_on_a_hand_built_batch():
    student = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.5, 0.5, 1.0]])
    teacher = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 4.0, 0.0]])  # teacher labels 0, 2, 1
    beta = torch.tensor([0.25, 0.5, 1.0])
    partner = torch.tensor([1, 2, 0])
    gamma = torch.tensor([0.5, 0.3, 0.2])
    loss = kcfu_compensation(student, teacher, beta, partner, gamma)
    t_lab = np.array([0, 2, 1])
    # quirk (ii): the partner's weight uses the teacher's label of the *mixed* partner sample
    omega = beta.numpy() * gamma.numpy()[t_lab] + (1 - beta.numpy()) * gamma.numpy()[t_lab[partner.numpy()]]
    p_t, p_s = _softmax(teacher.numpy()), _softmax(student.numpy())
    kl_class_mean = (p_t * np.log(p_t / p_s)).mean(1)  # per-class mean, not sum (nn.KLDivLoss(reduce=False).mean(1))
    assert float(loss) == pytest.approx(float((omega * kl_class_mean).mean()), rel=1e-6)


class _Net(nn.Module):
    def __init__(self, seed=0, classes=3):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.ReLU())
            self.head = nn.Linear(6, classes)

    def forward(self, x):
        h = self.body(x)
        return self.head(h), h


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1, 2, 2)).astype(np.float32)
    y = rng.integers(0, 2, size=n)  # class 2 never labeled
    return x, y


def test_kcfu_supervised_term_is_the_balanced_softmax_and_stays_finite_with_an_unlabeled_class():
    x, y = _data()
    model = _Net()
    obj = build_objective("kcfu", RunConfig(), num_classes=3, y=y, model=model, server_round=1)
    assert not obj.uses_unlabeled  # round 1 < kafal-compensation-start-round = 2: no distillation
    obj.prepare(1, 0, np.random.default_rng(0), torch.device("cpu"))
    xb, yb = torch.as_tensor(x), torch.as_tensor(y)
    loss, logits = obj.loss(model, xb, yb, None, 0)
    counts = np.bincount(y, minlength=3)
    expected = F.cross_entropy(logits[:, :2] + torch.log(torch.as_tensor(counts[:2], dtype=torch.float32)), yb)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_kcfu_distils_from_a_frozen_copy_of_the_received_model_from_the_start_round():
    x, y = _data()
    u = np.random.default_rng(5).normal(size=(40, 1, 2, 2)).astype(np.float32)
    settings = TrainSettings(epochs=2, batch_size=8, lr=0.1)
    results = {}
    for name, rnd in (("ce", 2), ("kcfu-round-1", 1), ("kcfu-round-2", 2), ("kcfu-round-2-again", 2)):
        model = _Net(seed=3)
        received = {k: v.clone() for k, v in model.state_dict().items()}
        obj = build_objective("cross-entropy" if name == "ce" else "kcfu", RunConfig(), num_classes=3, y=y, model=model, server_round=rnd)
        report = train_model(model, x, y, settings, seed=9, device=torch.device("cpu"), objective=obj, unlabeled=u)
        if name != "ce":
            assert all(torch.equal(v, received[k]) for k, v in obj.teacher.state_dict().items())  # teacher untouched
            assert not any(p.requires_grad for p in obj.teacher.parameters())
        results[name] = (model.head.weight.detach().clone(), report.losses)
    assert torch.equal(results["kcfu-round-2"][0], results["kcfu-round-2-again"][0])  # seeded
    assert not torch.allclose(results["kcfu-round-1"][0], results["kcfu-round-2"][0])  # compensation from round 2
    assert not torch.allclose(results["ce"][0], results["kcfu-round-1"][0])  # the balanced softmax differs from CE


def test_kcfu_with_uniform_counts_and_no_compensation_trains_like_cross_entropy():
    # log n is a constant shift when every class has the same count: the same batches, the same model
    x, y = _data()
    y = np.arange(len(y)) % 3
    settings = TrainSettings(epochs=2, batch_size=8, lr=0.1)
    a, b = _Net(seed=1), _Net(seed=1)
    train_model(a, x, y, settings, seed=4, device=torch.device("cpu"))
    kcfu = build_objective("kcfu", RunConfig(), num_classes=3, y=y, model=b, server_round=1)
    train_model(b, x, y, settings, seed=4, device=torch.device("cpu"), objective=kcfu, unlabeled=x)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_kcfu_partner_modes():
    counts = np.array([3, 3, 3])
    for mode, check in (("permutation", lambda p: all(sorted(r) == list(range(8)) for r in p)),
                        ("single", lambda p: all(len(set(r)) == 1 for r in p))):
        cfg = RunConfig.model_validate({"kafal-mixup-partner": mode})
        obj = KCFU(ObjectiveInputs(num_classes=3, class_counts=counts, teacher=_Net(), round_index=3), cfg)
        obj.prepare(5, 8, np.random.default_rng(0), torch.device("cpu"))
        assert obj.betas.shape == (5, 8) and ((obj.betas > 0) & (obj.betas < 1)).all()
        assert check(obj.partners.tolist())


def test_kcfu_teacher_batchnorm_mode():
    class BNNet(_Net):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU())

    for mode, training in (("batch", True), ("running", False)):
        cfg = RunConfig.model_validate({"kafal-teacher-batchnorm": mode})
        obj = build_objective("kcfu", cfg, num_classes=3, y=[0, 1], model=BNNet(), server_round=2)
        assert obj.teacher.training is training


def test_kcfu_needs_what_it_declares():
    with pytest.raises(ValueError, match="teacher"):
        KCFU(ObjectiveInputs(num_classes=3, class_counts=np.ones(3)))
    with pytest.raises(ValueError, match="classification"):
        build_objective("kcfu", None, num_classes=1, task="regression")
