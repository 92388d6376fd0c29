"""JiayiChen815/FEAL (350e52a): ``utils.cls.selection_methods.query_samples('FEAL', ...)`` (fl_duc + relaxation).

Interface adaptations (their selection code is unchanged):
* their EfficientNet returns ``(logit, _, _, block_features)`` and FEAL pools
  ``block_features[-1]`` to 3x3; our network returns its penultimate features,
  given as a 1x1 map (``adaptive_avg_pool2d`` to 3x3 repeats each feature 9
  times, which leaves every cosine similarity unchanged);
* their loader yields ``(index, {"image": x})`` (Fed-ISIC's dataset): the
  dataset here yields our normalised tensors that way;
* ``Tensor.cuda`` is made a no-op (no GPU here).
The selection is the last ``query_num`` of the returned ranking, as
``main_cls_al.py`` takes it. Writes ``feal.npz``.
"""

from __future__ import annotations

import argparse as ap

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

import harness as h

args = h.parse_args(__doc__)
h.use_reference(args.reference_root, "FEAL")
torch.Tensor.cuda = lambda self, *a, **kw: self

from utils.cls.selection_methods import fl_duc, query_samples  # noqa: E402


class BlockFeatures(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        logits, features = self.model(x)
        return logits, None, None, [features[:, :, None, None]]


class IsicLike(Dataset):
    def __init__(self, images: h.FixtureImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return i, {"image": self.images[i][0]}


inputs = h.pf.load_inputs()
ds = h.pf.train_set(args.data_root)
data = IsicLike(h.FixtureImages(ds, inputs.pool_ids))
nets = h.models(inputs, BlockFeatures)
subset = [int(i) for i in inputs.pool_ids]  # the pool is smaller than SUBSET = 10000: all of it
B = inputs.budget
run_args = ap.Namespace(query_model="both", dataset="FedISIC", batch_size=32, n_neighbor=5, cosine=0.85)

rank_arg = query_samples("FEAL", nets["global"], nets["local"], None, data, subset, [], B, None, 0, 0, run_args)
selected = list(torch.tensor(subset)[rank_arg][-B:].numpy())  # main_cls_al.py: query_set
from data.sampler import SubsetSequentialSampler  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

loader = DataLoader(data, batch_size=32, sampler=SubsetSequentialSampler(subset))
g_data, l_data, g_dis, _ = fl_duc(nets["global"], nets["local"], loader)
h.save(args.out, "feal", selected=h.ids_array(selected), aleatoric_global=g_data.numpy(),
       aleatoric_local=l_data.numpy(), epistemic_global=g_dis.numpy())
