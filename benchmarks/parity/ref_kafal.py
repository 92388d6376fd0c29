"""ycao5602/KAFAL (f4f1875): KSAS = ``main.get_discrepancy`` on the fixture.

``main.py`` runs its data loading at import (``CIFAR10(..., download=True)``)
and calls ``.cuda()``: the harness replaces ``torchvision.datasets.CIFAR10`` by
an empty stand-in (their CIFAR data is unrelated to this selection) and makes
``Tensor.cuda`` a no-op (no GPU here). ``get_discrepancy`` reads the module
global ``loss_weight_list`` (labeled class counts per client), which is set to
the fixture client's counts as ``main.py`` builds them
(``torch.tensor(ratio).float()``). The top-B by discrepancy is taken as their
main loop does (``np.argsort(discrepancy)``, the last ``add[c]``). The
network is ours; their ``get_discrepancy`` unpacks ``(scores, features)``,
which our models return. Writes ``kafal.npz``.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.datasets
from torch.utils.data import DataLoader

import harness as h

args = h.parse_args(__doc__)
h.use_reference(args.reference_root, "KAFAL")


class _NoCifar(list):
    def __init__(self, *a, **kw):
        super().__init__()


torchvision.datasets.CIFAR10 = _NoCifar
torch.Tensor.cuda = lambda self, *a, **kw: self

import main as kafal_main  # noqa: E402
from data.sampler import SubsetSequentialSampler  # noqa: E402

inputs = h.pf.load_inputs()
ds = h.pf.train_set(args.data_root)
dataset = h.FixtureImages(ds, inputs.pool_ids)
nets = h.models(inputs)
pool = [int(i) for i in inputs.pool_ids]
B = inputs.budget

out = {}
for variant in ("full", "missing"):
    kafal_main.loss_weight_list = [torch.tensor(inputs.client_histogram(variant)).float()]
    loader = DataLoader(dataset, batch_size=kafal_main.BATCH, sampler=SubsetSequentialSampler(pool))
    discrepancy = kafal_main.get_discrepancy(nets["local"], nets["global"], loader, 0)
    arg = np.argsort(discrepancy)
    out[f"{variant}_scores"] = discrepancy.numpy()
    out[f"{variant}_selected"] = h.ids_array(torch.tensor(pool)[arg][-B:].numpy())
h.save(args.out, "kafal", **out)
