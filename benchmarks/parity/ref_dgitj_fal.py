"""dgitj/FAL (the AHFAL paper's code, 55f1665; its ``data/`` package from 08a3a72): every sampler on the fixture.

Calls, unchanged, ``query_strategies.<method>.<Sampler>`` as ``main.py`` does:
the client model (``models['clients'][c]``, our ``local``), the server model
(our ``global``), an unlabeled ``DataLoader`` of batch 128 over
``SubsetSequentialSampler(pool)``. Writes ``dgitj-<method>.npz``.

The randomised samplers get the random stream our selector uses: for seed t,
the seed that ``np.random.default_rng(t)`` gives first seeds their KMeans
(LoGo's ``seed`` argument; BADGE's fixed ``random_state=42`` is replaced by a
subclass) or the global torch RNG (Noise Stability's noise), so both sides run
the very same random draws and the picks can be compared exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

import harness as h

args = h.parse_args(__doc__)
h.use_reference(args.reference_root, "FAL", "FAL-data")

import config  # noqa: E402  (dgitj/FAL config.py: NUM_CLASSES = 10)
import query_strategies.logo as logo_module  # noqa: E402
from data.sampler import SubsetSequentialSampler  # noqa: E402
from query_strategies import (  # noqa: E402
    AHFALSampler, BADGESampler, CoreSetSampler, EntropySampler, FEALSampler, KAFALSampler, LoGoSampler,
    NoiseStabilitySampler,
)
from training.trainer import FederatedTrainer  # noqa: E402

BATCH = 128  # config.BATCH
SEEDS = 20
# Noise Stability (50 noisy copies of the model, each scoring the whole unlabeled set) and BADGE (KMeans
# with n_init=10 on 784-dimensional input gradients) run on the first pool samples, with a smaller budget,
# so that our side's test of each seed takes about a second on one core
NS_POOL, NS_BUDGET = 240, 40
BADGE_POOL, BADGE_BUDGET, BADGE_SEEDS = 800, 50, 5

inputs = h.pf.load_inputs()
ds = h.pf.train_set(args.data_root)
dataset = h.FixtureImages(ds, np.concatenate([inputs.pool_ids, inputs.labeled_ids]))
nets = h.models(inputs, h.ListFeatures)
local, glob = nets["local"], nets["global"]
pool = [int(i) for i in inputs.pool_ids]
B = inputs.budget
assert config.NUM_CLASSES == 10


def loader(ids):
    # main.py gives the unlabeled loader its own generator (g_unlabeled_cycle), so iterating it does not
    # draw from the global torch RNG, which Noise Stability's noise comes from
    return DataLoader(dataset, batch_size=BATCH, sampler=SubsetSequentialSampler(list(ids)), num_workers=0,
                      generator=torch.Generator().manual_seed(0))


def seed_stream(t: int, bound: int) -> int:
    """The seed our selector draws first from ``np.random.default_rng(t)`` (so both sides can share a stream)."""
    return int(np.random.default_rng(t).integers(bound))


def entropy() -> None:
    """Entropy (client model)."""
    ent = EntropySampler("cpu")
    scores = ent.compute_entropy(local, loader(pool), pool)
    sel, _ = ent.select_samples(local, loader(pool), pool, B, seed=0)
    h.save(args.out, "dgitj-entropy", selected=h.ids_array(sel), scores=scores)


def coreset() -> None:
    """Core-Set (client model, labeled = initial centres)."""
    sel, _ = CoreSetSampler("cpu").select_samples(local, None, loader(pool), 0, pool, B,
                                                   labeled_set=[int(i) for i in inputs.labeled_ids], seed=0)
    h.save(args.out, "dgitj-coreset", selected=h.ids_array(sel))


def kafal() -> None:
    """KAFAL's KSAS (client vs server model)."""
    out = {}
    for variant in ("full", "missing"):
        counts = torch.tensor(inputs.client_histogram(variant)).float()  # main.py: torch.tensor(ratio).float()
        sampler = KAFALSampler([counts], "cpu")
        out[f"{variant}_scores"] = sampler.compute_discrepancy(local, glob, loader(pool), 0).numpy()
        sel, _ = sampler.select_samples(local, glob, loader(pool), 0, pool, B)
        out[f"{variant}_selected"] = h.ids_array(sel)
    # the missing classes' count as 1e-30 instead of 0: what the authors' torch 1.0 computed, in the limit
    counts = torch.tensor(inputs.client_histogram("missing")).float()
    counts[counts == 0] = 1e-30
    out["missing_eps_scores"] = KAFALSampler([counts], "cpu").compute_discrepancy(local, glob, loader(pool), 0).numpy()
    h.save(args.out, "dgitj-kafal", **out)


def ahfal() -> None:
    """AHFAL (reference allocation and hybrid rule)."""
    out = {}
    for variant in ("full", "missing"):
        lab_ids, _ = inputs.labeled(variant)
        trainer = FederatedTrainer("cpu", config)
        trainer.update_client_distribution(0, [int(i) for i in lab_ids], dataset)  # true labels of this client
        for k, hist in enumerate(inputs.histograms, start=1):  # the other clients' histograms
            trainer.client_class_distributions[k] = {c: int(v) for c, v in enumerate(hist)}
        target = trainer.aggregate_class_distributions()
        stats = trainer.analyze_class_distribution_variance()
        sampler = AHFALSampler("cpu")
        recorded = {}
        original = sampler.compute_target_counts

        def record(current_distribution, num_samples, labeled_set_size, available_classes, _orig=original, _rec=recorded):
            _rec["current"] = dict(current_distribution)
            _rec["targets"] = _orig(current_distribution, num_samples, labeled_set_size, available_classes)
            return _rec["targets"]  # the very dict select_samples goes on to cap (its steps 7-8)

        sampler.compute_target_counts = record
        sel, _, _ = sampler.select_samples(local, glob, loader(pool), 0, pool, B, labeled_set=[int(i) for i in lab_ids],
                                           seed=0, global_class_distribution=target, class_variance_stats=stats)
        std = {c: float(s["std_dev"]) * 100 for c, s in stats["class_stats"].items()}
        _, pseudo, _, ent_scores = AHFALSampler("cpu").pseudo_label_data(local, glob, loader(pool), class_std_devs=std)
        out.update({
            f"{variant}_selected": h.ids_array(sel),
            f"{variant}_target": np.array([target[c] for c in range(10)]),
            f"{variant}_sigma": np.array([std[c] for c in range(10)]),
            f"{variant}_scores": ent_scores, f"{variant}_pseudo": pseudo,
            f"{variant}_labeled_pseudo_share": np.array([recorded["current"][c] for c in range(10)]),
            f"{variant}_class_budgets": np.array([recorded["targets"].get(c, 0) for c in range(10)]),
        })
    h.save(args.out, "dgitj-ahfal", **out)


def feal() -> None:
    """FEAL (server = global, client = local)."""
    feal = FEALSampler("cpu", n_neighbor=5, cosine=0.85)  # strategy_manager.py's arguments
    g_data, l_data, g_dis, _, _ = feal.compute_discrepancy(glob, local, loader(pool))
    sel, _ = feal.select_samples(global_model=glob, local_model=local, unlabeled_loader=loader(pool),
                                 unlabeled_set=pool, num_samples=B)
    h.save(args.out, "dgitj-feal", selected=h.ids_array(sel), aleatoric_global=g_data.numpy(),
           aleatoric_local=l_data.numpy(), epistemic_global=g_dis.numpy())


def badge() -> None:
    """BADGE (input-gradient embeddings + KMeans + nearest point per centre).

    Their KMeans has random_state=42 fixed; a subclass replaces it by the seed our selector draws
    first from default_rng(t) (so both sides share the stream), and records nothing else.
    """
    import query_strategies.badge as badge_module
    import sklearn

    current = {}

    class SeededKMeans(badge_module.KMeans):
        def __init__(self, n_clusters=8, *, random_state=None, **kw):
            super().__init__(n_clusters=n_clusters, random_state=current["seed"], **kw)

    badge_module.KMeans = SeededKMeans
    sampler = BADGESampler("cpu")
    subset = pool[:BADGE_POOL]
    grads, _ = sampler.compute_gradient_embeddings(local, loader(subset))
    selected, seeds = [], []
    for t in range(BADGE_SEEDS):
        current["seed"] = seed_stream(t, 2**31 - 1)
        selected.append(h.ids_array(sampler.select_samples(local, loader(subset), subset, BADGE_BUDGET)[0]))
        seeds.append(current["seed"])
    h.save(args.out, "dgitj-badge", selected=np.stack(selected), seeds=np.array(seeds, dtype=np.int64),
           subset=h.ids_array(subset), budget=np.int64(BADGE_BUDGET), sklearn_version=np.array(sklearn.__version__),
           embedding_norms=grads.norm(dim=1).numpy(), embedding_head=grads[:2].numpy())


def noise_stability() -> None:
    """Noise Stability (global torch RNG, seeded with the seed our selector draws first)."""
    subset = pool[:NS_POOL]
    ns = NoiseStabilitySampler(device="cpu", noise_scale=0.001, num_sampling=50)  # strategy_manager.py's arguments
    selected, torch_seeds = [], []
    for t in range(SEEDS):
        seed = seed_stream(t, 2**62)
        torch.manual_seed(seed)
        if t == 0:
            uncertainty = ns.compute_uncertainty(local, loader(subset)).numpy()
            torch.manual_seed(seed)
        selected.append(h.ids_array(ns.select_samples(local, loader(subset), subset, NS_BUDGET)[0]))
        torch_seeds.append(seed)
    h.save(args.out, "dgitj-noise-stability", selected=np.stack(selected), torch_seeds=np.array(torch_seeds, dtype=np.int64),
           subset=h.ids_array(subset), budget=np.int64(NS_BUDGET), uncertainty=uncertainty)


def logo() -> None:
    """LoGo (client-model features, KMeans(random_state=seed))."""
    import sklearn

    labels_seen = []

    class RecordingKMeans(logo_module.KMeans):
        def fit_predict(self, X, y=None, sample_weight=None):
            labels = super().fit_predict(X, y, sample_weight=sample_weight)
            labels_seen.append(np.asarray(labels))
            return labels

    logo_module.KMeans = RecordingKMeans  # records the cluster labels; the clustering itself is sklearn's
    selected, seeds = [], []
    for t in range(SEEDS):
        seed = seed_stream(t, 2**31 - 1)
        selected.append(h.ids_array(LoGoSampler("cpu").select_samples(local, glob, loader(pool), 0, pool, B, seed=seed)[0]))
        seeds.append(seed)
    h.save(args.out, "dgitj-logo", selected=np.stack(selected), seeds=np.array(seeds, dtype=np.int64),
           cluster_labels=np.stack(labels_seen).astype(np.uint8), sklearn_version=np.array(sklearn.__version__))


h.run_methods({
    "entropy": entropy, "coreset": coreset, "kafal": kafal, "ahfal": ahfal, "feal": feal,
    "badge": badge, "noise-stability": noise_stability, "logo": logo,
}, args.methods)
