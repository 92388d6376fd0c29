"""FEAL on hand-built inputs: the EDL loss and its gradient (spec 5.1), U(x) (5.2), the relaxation (5.3),
and every consumer reading an evidential model's outputs as p = alpha / S."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import digamma, gammaln
from scipy.stats import dirichlet
from torch import nn

from fal_shared.config import RunConfig
from fal_shared.heads import HEADS, set_head
from fal_shared.objectives import EvidentialLoss, ObjectiveInputs, build_objective, dirichlet_kl_to_uniform, edl_loss
from fal_shared.training import Prediction, evaluate, predict
from query import PoolContext, get_selector, run_selection
from query.feal import aleatoric_uncertainty, diversity_relaxation, epistemic_uncertainty, feal_uncertainty
from query.kernels import entropy

CPU = torch.device("cpu")
LOGITS = np.array([[2.0, -1.0, 0.5], [0.3, 1.7, -0.4], [-0.5, -2.0, 3.0], [1.1, 0.9, 0.2]])
Y = np.array([0, 2, 2, 1])
PRIOR = np.array([0.5, 0.2, 0.3])


# ---------------------------------------------------------------------- loss
def _edl_reference(logits, y, prior, annealing, kl_weight):
    """The EDL loss written out with scipy (spec 5.1)."""
    n, k = logits.shape
    alpha = np.maximum(logits, 0) + 1
    s = alpha.sum(1, keepdims=True)
    onehot = np.eye(k)[y]
    l_ce = ((2 - prior) * onehot * (digamma(s) - digamma(alpha))).sum() / n
    a = (alpha - 1) * (1 - onehot) + 1
    sa = a.sum(1)
    kl = gammaln(sa) - gammaln(a).sum(1) - gammaln(k) + ((a - 1) * (digamma(a) - digamma(sa)[:, None])).sum(1)
    l_cor = (-(k / s) * onehot * logits).sum() / n
    return l_ce + kl_weight * (annealing * kl.mean() + l_cor)


def _edl(logits, annealing=0.7, kl_weight=0.01):
    return edl_loss(torch.as_tensor(logits), torch.as_tensor(Y), torch.as_tensor(PRIOR), annealing, kl_weight)


def test_edl_loss_matches_the_formula():
    assert float(_edl(LOGITS)) == pytest.approx(_edl_reference(LOGITS, Y, PRIOR, 0.7, 0.01), rel=1e-12)
    assert float(_edl(LOGITS, kl_weight=1.0)) == pytest.approx(_edl_reference(LOGITS, Y, PRIOR, 0.7, 1.0), rel=1e-12)


def test_dirichlet_kl_to_uniform_matches_torch_distributions():
    alpha = torch.tensor([[1.0, 1.0, 1.0], [2.5, 1.0, 4.0], [1.0, 7.0, 1.5]], dtype=torch.float64)
    ref = torch.distributions.kl_divergence(torch.distributions.Dirichlet(alpha), torch.distributions.Dirichlet(torch.ones_like(alpha)))
    torch.testing.assert_close(dirichlet_kl_to_uniform(alpha), ref)
    assert float(dirichlet_kl_to_uniform(alpha)[0]) == pytest.approx(0.0, abs=1e-12)


def test_edl_gradient_matches_a_finite_difference():
    # the correction term holds S fixed (stop-gradient), so the gradient is that of the loss with
    # S frozen at the base point: compare with central differences of exactly that function
    base = torch.as_tensor(LOGITS, dtype=torch.float64)  # no logit at the ReLU kink
    logits = base.clone().requires_grad_(True)
    _edl(logits, annealing=0.7, kl_weight=0.5).backward()
    s_frozen = (np.maximum(LOGITS, 0) + 1).sum(1, keepdims=True)

    def frozen(z):
        value = _edl_reference(z, Y, PRIOR, 0.7, 0.5)
        k = z.shape[1]
        onehot = np.eye(k)[Y]
        s_now = (np.maximum(z, 0) + 1).sum(1, keepdims=True)
        # swap the correction term's S(z) for the frozen S
        return value - 0.5 * ((-(k / s_now) + (k / s_frozen)) * onehot * z).sum() / len(z)

    h = 1e-6
    numeric = np.zeros_like(LOGITS)
    for idx in np.ndindex(LOGITS.shape):
        up, down = LOGITS.copy(), LOGITS.copy()
        up[idx] += h
        down[idx] -= h
        numeric[idx] = (frozen(up) - frozen(down)) / (2 * h)
    np.testing.assert_allclose(logits.grad.numpy(), numeric, rtol=1e-6, atol=1e-8)


def test_edl_objective_anneals_by_round_and_uses_the_class_prior():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    cfg = RunConfig.model_validate({"feal-annealing-step": 4, "feal-kl-weight": 0.02})
    annealing = [build_objective("edl", cfg, num_classes=3, y=y, server_round=r).annealing for r in (1, 2, 3, 5, 9)]
    assert annealing == [0.0, 0.25, 0.5, 1.0, 1.0]  # min(1, t / step) with t = round - 1
    obj = build_objective("edl", cfg, num_classes=3, y=y, server_round=3)
    np.testing.assert_allclose(obj.prior.numpy(), [0.3, 0.2, 0.5])
    assert obj.head == "evidential" and obj.kl_weight == 0.02
    obj.prepare(1, 0, np.random.default_rng(0), CPU)
    model = nn.Linear(3, 3)
    x = torch.as_tensor(LOGITS, dtype=torch.float32)
    loss, logits = obj.loss(lambda xb: (model(xb), xb), x, torch.as_tensor(Y), None, 0)
    expected = _edl_reference(logits.detach().double().numpy(), Y, np.array([0.3, 0.2, 0.5]), 0.5, 0.02)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="class-counts"):
        EvidentialLoss(ObjectiveInputs(num_classes=3))


# ------------------------------------------------------------------ scoring
def test_feal_uncertainty_components_on_hand_built_logits():
    alpha = np.maximum(LOGITS, 0) + 1
    s = alpha.sum(1, keepdims=True)
    ale = ((alpha / s) * (digamma(s + 1) - digamma(alpha + 1))).sum(1)
    np.testing.assert_allclose(aleatoric_uncertainty(torch.as_tensor(alpha)).numpy(), ale, rtol=1e-12)
    epi = np.array([dirichlet(a).entropy() for a in alpha])
    np.testing.assert_allclose(epistemic_uncertainty(torch.as_tensor(alpha)).numpy(), epi, rtol=1e-10)
    local = LOGITS[::-1].copy()
    alpha_l = np.maximum(local, 0) + 1
    ale_l = ((alpha_l / alpha_l.sum(1, keepdims=True)) * (digamma(alpha_l.sum(1, keepdims=True) + 1) - digamma(alpha_l + 1))).sum(1)
    expected = (epi - epi.min()) / (epi.max() - epi.min()) * (ale + ale_l)
    np.testing.assert_allclose(feal_uncertainty(LOGITS, local), expected, rtol=1e-10)
    # the least epistemically uncertain sample scores 0; a constant epistemic term does not give NaN
    assert feal_uncertainty(LOGITS, local)[np.argmin(epi)] == 0
    flat = np.full((3, 3), -1.0)  # every alpha = 1
    assert np.isfinite(feal_uncertainty(flat, flat)).all()


# ---------------------------------------------------------------- relaxation
def _points():
    """Cluster A (3 points near 0 deg), cluster B (3 near 90 deg), C alone at 45 deg (cos 0.71 to both)."""
    deg = {"A1": 0, "A2": 3, "A3": -3, "B1": 90, "B2": 87, "B3": 93, "C": 45}
    names = list(deg)
    feats = np.array([[np.cos(np.radians(d)), np.sin(np.radians(d))] for d in deg.values()])
    return names, feats * np.arange(1, 8)[:, None]  # lengths differ: only directions matter


def test_relaxation_skips_candidates_whose_crowded_neighbourhood_already_has_a_pick():
    names, feats = _points()
    ranking = np.array([names.index(n) for n in ("A1", "A2", "B1", "A3", "C", "B2", "B3")])
    picks, skipped = diversity_relaxation(ranking, feats, 3, neighbors=2, threshold=0.9)
    assert [names[i] for i in picks] == ["A1", "B1", "C"] and skipped == 2  # A2 and A3 skipped
    # with fewer neighbours above the threshold than n_neighbor, a candidate is always taken
    picks, skipped = diversity_relaxation(ranking, feats, 7, neighbors=3, threshold=0.9)
    assert len(picks) == 7 and skipped == 0
    # a budget the relaxation cannot reach: it walks the whole ranking and returns what it took
    picks, skipped = diversity_relaxation(ranking, feats, 5, neighbors=2, threshold=0.9)
    assert [names[i] for i in picks] == ["A1", "B1", "C"] and skipped == 4


def test_relaxation_blocks_give_the_same_walk():
    feats = np.random.default_rng(3).normal(size=(300, 4))
    ranking = np.random.default_rng(4).permutation(300)
    one = diversity_relaxation(ranking, feats, 40, neighbors=5, threshold=0.6, block=1)
    many = diversity_relaxation(ranking, feats, 40, neighbors=5, threshold=0.6, block=256)
    np.testing.assert_array_equal(one[0], many[0])
    assert one[1] == many[1] > 0


class _Bank:
    def __init__(self, global_logits, local_logits, local_features):
        self.preds = {
            "global": Prediction(outputs=None, logits=global_logits, features=np.zeros((len(global_logits), 2)), head="evidential"),
            "local": Prediction(outputs=None, logits=local_logits, features=local_features, head="evidential"),
        }

    def pool(self, kind):
        return self.preds[kind]


def test_feal_selector_fills_the_budget_with_the_most_uncertain_skipped_samples():
    names, feats = _points()
    # evidence s for class 0 only: both uncertainties fall as s grows, so U ranks by increasing s
    order = ["A1", "A2", "B1", "A3", "C", "B2", "B3"]
    evidence = np.array([order.index(n) for n in names], dtype=np.float32)
    global_logits = np.stack([evidence, np.zeros(7), np.zeros(7)], axis=1).astype(np.float32)
    u = feal_uncertainty(global_logits, global_logits)
    assert [names[i] for i in np.argsort(-u)] == order
    ctx = PoolContext(
        pool_ids=np.arange(7) + 50, labeled_ids=np.zeros(0, int), labeled_y=np.zeros(0, int), budget=4, num_classes=3,
        rng=np.random.default_rng(0), models=_Bank(global_logits, global_logits, feats),
        params={"feal-subset-size": 0, "feal-neighbors": 2, "feal-cosine-threshold": 0.9},
    )
    out = run_selection(get_selector("feal"), ctx)
    assert [names[i] for i in out.positions] == ["A1", "B1", "C", "A2"]  # A2: the most uncertain skipped one
    assert out.diagnostics["feal-skipped"] == 4 and out.diagnostics["feal-filled"] == 1


# ----------------------------------------------------- evidential outputs
class _Fixed(nn.Module):
    """Outputs fixed logits whatever the input (rows of x select them)."""

    def __init__(self, logits):
        super().__init__()
        self.table = nn.Parameter(torch.as_tensor(logits, dtype=torch.float32), requires_grad=False)

    def forward(self, x):
        rows = self.table[x[:, 0].long()]
        return rows, rows


def test_predict_and_evaluate_read_an_evidential_model_as_alpha_over_s():
    logits = np.array([[2.0, -1.0, 0.5], [-0.5, -2.0, -0.1], [0.0, 3.0, 1.0]], dtype=np.float32)
    x = np.arange(3, dtype=np.float32)[:, None]
    model = set_head(_Fixed(logits), "evidential")
    pred = predict(model, x, batch_size=2, device=CPU)
    alpha = np.maximum(logits, 0) + 1
    np.testing.assert_allclose(pred.outputs, alpha / alpha.sum(1, keepdims=True), rtol=1e-6)
    assert pred.head == "evidential"
    # row 1: every alpha is 1 (p uniform); the class is the largest logit, as FEAL's evaluation (argmax logit)
    np.testing.assert_array_equal(pred.classes(), [0, 2, 1])
    y = np.array([0, 2, 2])
    result = evaluate(model, x, y, num_classes=3, batch_size=8, device=CPU)
    assert result["accuracy"] == pytest.approx(2 / 3)
    p = alpha / alpha.sum(1, keepdims=True)
    assert result["loss"] == pytest.approx(-np.log(p[np.arange(3), y]).mean(), rel=1e-6)
    # a softmax model (no head set) is read as before
    soft = predict(_Fixed(logits), x, batch_size=2, device=CPU)
    np.testing.assert_allclose(soft.outputs, torch.softmax(torch.as_tensor(logits), 1).numpy(), rtol=1e-6)
    assert HEADS.lookup("evidential").name == "evidential"


def test_entropy_of_a_feal_model_is_computed_from_alpha_over_s():
    logits = np.array([[4.0, -1.0, -1.0], [0.2, 0.1, 0.0], [-3.0, -3.0, -3.0]], dtype=np.float32)
    model = set_head(_Fixed(logits), "evidential")
    from query.models import ModelBank

    x = np.arange(3, dtype=np.float32)[:, None]
    bank = ModelBank({"global": lambda: model}, lambda m, xx: predict(m, xx, batch_size=4, device=CPU), x, x[:0])
    ctx = PoolContext(pool_ids=np.arange(3), labeled_ids=np.zeros(0, int), labeled_y=np.zeros(0, int), budget=1,
                      num_classes=3, rng=np.random.default_rng(0), models=bank, params={"query-model": "global"})
    alpha = np.maximum(logits, 0) + 1
    np.testing.assert_allclose(entropy(bank.pool("global").outputs), entropy(alpha / alpha.sum(1, keepdims=True)), rtol=1e-6)
    # the all-negative row has no evidence at all: p = alpha / S is uniform, the most uncertain
    assert list(run_selection(get_selector("entropy"), ctx).positions) == [2]


def test_relaxation_blocks_bounded_by_the_element_limit_give_the_same_picks(monkeypatch):
    """A large pool gets fewer candidates per block (never a 256 x n block); the picks do not change."""
    import query.feal as feal

    rng = np.random.default_rng(3)
    feats = rng.normal(size=(300, 6)).astype(np.float32)
    ranking = rng.permutation(300)
    unbounded = diversity_relaxation(ranking, feats, 60, neighbors=4, threshold=0.7)
    monkeypatch.setattr(feal, "DEFAULT_MAX_BLOCK_ELEMS", 3 * 300)  # 3 candidates per block at n = 300
    bounded = feal.diversity_relaxation(ranking, feats, 60, neighbors=4, threshold=0.7)
    np.testing.assert_array_equal(bounded[0], unbounded[0])
    assert bounded[1] == unbounded[1]
