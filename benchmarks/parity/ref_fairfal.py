"""chenchenzong/FairFAL (ca14e07): ``FairFALSampling.query_model_selection`` then ``query`` on the fixture.

As ``query_strategies/__init__.py:algo_query_samples`` calls them: phase A
gives the client's g_i and stores d_i; phase B selects with the server's
g-bar. g-bar is set to values that put the client in each branch of the
query-model choice (global/local for uncertainty and for the embedding).

Interface adaptations (their selection code is unchanged):
* the network is ours behind ``WithEmbeddingDim`` (``(logits, features)`` and
  ``get_embedding_dim()``, as their CNN4Conv);
* the datasets are ``FixtureImages`` (our normalised tensors by global id);
* ``training_local_only`` (50 epochs of SGD from a fresh init, a training step,
  not selection) is replaced by returning the fixture's local model, which our
  side serves as its ``local-only`` model too;
* recorders around ``predict_balanced_prob_mean``, ``predict_prob``,
  ``get_grad_embedding`` and ``balanced_sample_by_pred_kmeans_maxscore`` keep
  their inputs/outputs (which model was used, scores, quotas) and return what
  the originals return.
Writes ``fairfal.npz``.
"""

from __future__ import annotations

import argparse as ap
from collections import Counter

import numpy as np

import harness as h

args = h.parse_args(__doc__)
h.use_reference(args.reference_root, "FairFAL")

import query_strategies.fairfal_sampling as ff  # noqa: E402

inputs = h.pf.load_inputs()
ds = h.pf.train_set(args.data_root)
TEST_IDS = inputs.pool_ids[:20]  # their query() also reports accuracies on a test split (logging only)
dataset = h.FixtureImages(ds, np.concatenate([inputs.pool_ids, inputs.labeled_ids]))
nets = h.models(inputs, h.WithEmbeddingDim)
B = inputs.budget
run_args = ap.Namespace(num_classes=10, device="cpu", gpu=-1, dataset="fmnist")

recorded: dict = {}
_balanced = ff.balanced_sample_by_pred_kmeans_maxscore


def balanced_recorder(**kw):
    result = _balanced(**kw)
    recorded["scores"] = kw["scores"].numpy()
    recorded["pseudo"] = kw["probs"].argmax(dim=1).numpy()
    recorded["quota"] = np.array([result[2][c] for c in range(10)])
    return result


ff.balanced_sample_by_pred_kmeans_maxscore = balanced_recorder


def strategy_for() -> ff.FairFALSampling:
    s = ff.FairFALSampling(dataset, dataset, dataset, nets["global"], run_args)
    s.training_local_only = lambda label_idxs, finetune=False: nets["local"]
    means = []
    orig_mean, orig_prob, orig_grad = s.predict_balanced_prob_mean, s.predict_prob, s.get_grad_embedding

    def mean_rec(label_idxs, net=None):
        result = orig_mean(label_idxs, net)
        means.append(result.numpy().copy())
        return result

    def prob_rec(unlabel_idxs, net=None):
        recorded["uncertainty_model"] = "global" if net is s.net else "local"
        return orig_prob(unlabel_idxs, net)

    def grad_rec(data_idxs, net1, net2):
        recorded["embedding_model"] = "global" if net2 is s.net else "local"
        return orig_grad(data_idxs, net1, net2)

    s.predict_balanced_prob_mean, s.predict_prob, s.get_grad_embedding = mean_rec, prob_rec, grad_rec
    s._means = means
    return s


out = {}
for variant in ("full", "missing"):
    lab_ids, lab_y = inputs.labeled(variant)
    label_idxs = [int(i) for i in lab_ids]
    unlabel_idxs = [int(i) for i in inputs.pool_ids]
    count_label = Counter(int(v) for v in lab_y)  # get_label_count: Counter of the labels in label_idxs order
    s = strategy_for()
    g_i = s.query_model_selection(0, label_idxs, unlabel_idxs, count_label)
    d_i = float(s.ratio_dict[0])
    # g-bar for each branch: ratio = 1 - (d + g)/2 > 0.75 <=> d + g < 0.5; embedding global <=> g < 0.5
    g_bars = [float(g_i), 0.7]
    if d_i < 0.5:
        g_bars += [(0.5 - d_i) / 2, (0.5 - d_i + 0.5) / 2]
    out[f"{variant}_g"] = g_i
    out[f"{variant}_d"] = d_i
    out[f"{variant}_pbar_global"], out[f"{variant}_pbar_local"] = s._means[0], s._means[1]
    out[f"{variant}_g_bars"] = np.array(g_bars)
    sel_all, models, pseudo, quotas = [], [], [], []
    for g_bar in g_bars:
        recorded.clear()
        selected, _, _ = s.query(0, label_idxs, unlabel_idxs, [int(i) for i in TEST_IDS], count_label, g_bar, B)
        sel_all.append(h.ids_array(selected))
        models.append([recorded["uncertainty_model"], recorded["embedding_model"]])
        out.setdefault(f"scores_{recorded['uncertainty_model']}", recorded["scores"])  # H/log C of that model
        pseudo.append(recorded["pseudo"])
        quotas.append(recorded["quota"])
    out[f"{variant}_selected"] = np.stack(sel_all)
    out[f"{variant}_models"] = np.array(models)
    out[f"{variant}_pseudo"] = pseudo[0]  # prototype pseudo-labels do not depend on g-bar
    assert all(np.array_equal(p, pseudo[0]) for p in pseudo)
    out[f"{variant}_quota"] = np.stack(quotas)
    print(variant, "g_i", g_i, "d_i", d_i, "g_bars", g_bars, "models", models)
h.save(args.out, "fairfal", **out)
