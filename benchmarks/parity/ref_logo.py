"""raymin0223/LoGo (536e8cb): ``query_strategies.fal.logo.LoGo.query`` on the fixture, 20 seeds.

Interface and environment adaptations (their selection code is unchanged):
* the network is ours behind ``WithEmbeddingDim`` (their CNN4Conv's interface);
* ``training_local_only`` (50 epochs from a fresh init: a training step, not
  selection) returns the fixture's local model, our side's ``local-only`` model;
* their requirements pin scikit-learn 1.0.1, whose ``KMeans`` defaults to
  ``n_init=10``; today's default is ``'auto'`` (1 restart), so the harness gives
  their ``KMeans(n_clusters=n_query)`` the 1.0.1 default back (and records the
  labels it finds);
* the random stream: their KMeans draws from numpy's global RandomState
  (``random_state=None``); it is seeded with the seed our selector draws first
  from ``np.random.default_rng(t)``, so for the same t both run the very same
  k-means restarts.
Writes ``logo.npz``.
"""

from __future__ import annotations

import argparse as ap

import numpy as np
import sklearn

import harness as h

args = h.parse_args(__doc__)
h.use_reference(args.reference_root, "LoGo")

import query_strategies.fal.logo as logo_module  # noqa: E402

SEEDS = 20
inputs = h.pf.load_inputs()
ds = h.pf.train_set(args.data_root)
dataset = h.FixtureImages(ds, np.concatenate([inputs.pool_ids, inputs.labeled_ids]))
nets = h.models(inputs, h.WithEmbeddingDim)
B = inputs.budget
labels_seen = []


class KMeans101(logo_module.KMeans):
    """sklearn's KMeans with scikit-learn 1.0.1's default n_init=10; records the labels."""

    def __init__(self, n_clusters=8, *, n_init=10, **kw):
        super().__init__(n_clusters=n_clusters, n_init=n_init, **kw)

    def fit(self, X, y=None, sample_weight=None):
        super().fit(X, y, sample_weight=sample_weight)
        labels_seen.append(np.asarray(self.labels_))
        return self


logo_module.KMeans = KMeans101
strategy = logo_module.LoGo(dataset, dataset, nets["global"], ap.Namespace(num_classes=10, device="cpu"))
strategy.training_local_only = lambda label_idxs, finetune=False: nets["local"]
label_idxs = [int(i) for i in inputs.labeled_ids]
unlabel_idxs = [int(i) for i in inputs.pool_ids]
embedding = strategy.get_grad_embedding_maxInd(unlabel_idxs, net=nets["local"]).numpy()

selected, seeds = [], []
for t in range(SEEDS):
    seed = int(np.random.default_rng(t).integers(2**31 - 1))
    np.random.seed(seed)
    selected.append(np.sort(h.ids_array(strategy.query(0, label_idxs, unlabel_idxs, n_query=B))))
    seeds.append(seed)
h.save(args.out, "logo", selected=np.stack(selected), seeds=np.array(seeds, dtype=np.int64),
       cluster_labels=np.stack(labels_seen).astype(np.uint8), embedding_norms=np.linalg.norm(embedding, axis=1),
       embedding_head=embedding[:4], sklearn_version=np.array(sklearn.__version__))
