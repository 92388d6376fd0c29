"""Write the selection-parity fixtures (tests/fixtures/parity): our inputs, then the authors' selections.

Two steps, both deterministic::

    # 1. the inputs: one Fashion-MNIST client and two small trained resnet8 models (our code only)
    python benchmarks/parity/make_fixtures.py inputs --data-root ../shared/datasets

    # 2. the authors' selection functions on those inputs, one process per repository
    python benchmarks/parity/make_fixtures.py reference --reference-root /work/scratch/18a

    # 3. check a regeneration (into --out <folder>) against the committed fixtures:
    #    integer arrays (picks, labels, quotas) must be equal; float scores print their largest difference
    python benchmarks/parity/make_fixtures.py compare <folder>

``--reference-root`` holds the authors' repositories extracted at the commits of
tests/fixtures/parity/README.md (``FAL``, ``FAL-data``, ``FairFAL``, ``LoGo``,
``FEAL``, ``KAFAL``; e.g. ``git --git-dir=<mirror> archive 55f1665 | tar -x -C FAL``)
and ``pydeps`` (torchmetrics, which the FEAL code imports; ``pip install --target``).
Nothing of theirs is copied here: each ``ref_*.py`` imports their modules from
that folder and calls their selection functions. Step 2 needs no data download:
the authors' loaders are fed the very tensors our client normalises
(``tests.parity_fixture.input_tensor``).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fal_shared.training import TrainSettings, evaluate, train_model  # noqa: E402
from tests import parity_fixture as pf  # noqa: E402

REFERENCES = ("dgitj_fal", "fairfal", "logo", "feal", "kafal")

# The client: class shares of its data (skewed, every class present) and sizes.
CLIENT_SHARES = np.array([0.28, 0.20, 0.14, 0.10, 0.08, 0.06, 0.05, 0.04, 0.03, 0.02])
CLIENT_SIZE = 2640
LABELED = 240  # 10 % labeled, as the AHFAL setup starts
BUDGET = 100
MISSING = np.array([8, 9])  # the "missing" variant: a client that never labeled these
# Labeled-class histograms of four other clients (a label-skewed federation): some classes
# vary little across clients (AHFAL's C_low at tau = 12 percentage points), others a lot.
OTHER_HISTOGRAMS = np.array([
    [120, 10, 10, 10, 10, 10, 10, 10, 10, 0],
    [5, 20, 20, 20, 20, 20, 90, 20, 20, 5],
    [10, 20, 20, 20, 20, 20, 10, 20, 20, 100],
    [30, 30, 25, 25, 20, 20, 20, 15, 10, 5],
])
GLOBAL_TRAIN = 3000


def make_inputs(data_root: Path, out: Path, seed: int = 2024) -> None:
    ds = pf.train_set(data_root)
    rng = np.random.default_rng(seed)
    per_class = np.floor(CLIENT_SHARES * CLIENT_SIZE).astype(int)
    per_class[0] += CLIENT_SIZE - per_class.sum()
    client = np.concatenate([rng.choice(np.flatnonzero(ds.y == c), n, replace=False) for c, n in enumerate(per_class)])
    lab_per_class = np.maximum(1, np.round(CLIENT_SHARES * LABELED)).astype(int)
    lab_per_class[0] += LABELED - lab_per_class.sum()
    labeled = np.concatenate([rng.choice(client[ds.y[client] == c], n, replace=False) for c, n in enumerate(lab_per_class)])
    labeled = rng.permutation(labeled)
    pool = rng.permutation(np.setdiff1d(client, labeled))  # the order both sides iterate the pool
    rest = np.setdiff1d(np.arange(len(ds)), client)
    global_ids = rng.choice(rest, GLOBAL_TRAIN, replace=False)

    device = torch.device("cpu")
    norm = pf.normalize_of(ds)
    glob = pf.build(seed=seed)
    train_model(glob, ds.x[global_ids], ds.y[global_ids],
                TrainSettings(epochs=3, batch_size=64, lr=0.05, weight_decay=5e-4), seed=seed, device=device, normalize=norm)
    glob = pf.build(pf.fp16_state(glob))  # the fp16-rounded network is the one both sides run
    local = pf.build(pf.fp16_state(glob))
    train_model(local, ds.x[labeled], ds.y[labeled],
                TrainSettings(epochs=4, batch_size=32, lr=0.05, weight_decay=5e-4), seed=seed + 1, device=device, normalize=norm)
    inputs = pf.ParityInputs(
        pool_ids=pool, labeled_ids=labeled, labeled_y=ds.y[labeled], budget=BUDGET, missing_classes=MISSING,
        histograms=OTHER_HISTOGRAMS, weights={"global": pf.fp16_state(glob), "local": pf.fp16_state(pf.build(pf.fp16_state(local)))},
    )
    out.mkdir(parents=True, exist_ok=True)
    pf.save_inputs(out / "inputs.npz", inputs)
    test = pf.load_classification(pf.DATASET, "test", Path(data_root) / pf.DATASET)
    for kind in ("global", "local"):
        model = pf.build(inputs.weights[kind])
        acc = evaluate(model, test.x, test.y, num_classes=10, batch_size=512, device=device, normalize=norm)["accuracy"]
        print(f"{kind}: test accuracy {acc:.3f}")
    print(f"pool {len(pool)}, labeled {len(labeled)} {np.bincount(ds.y[labeled], minlength=10).tolist()}, "
          f"wrote {out / 'inputs.npz'} ({(out / 'inputs.npz').stat().st_size / 1024:.0f} KiB)")


def run_references(reference_root: Path, data_root: Path, out: Path, only: list[str]) -> None:
    for name in only:
        start, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
        cmd = [sys.executable, str(Path(__file__).with_name(f"ref_{name}.py")),
               "--reference-root", str(reference_root), "--data-root", str(data_root), "--out", str(out)]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - cpu0
        print(f"{name}: done in {time.perf_counter() - start:.1f} s wall, {cpu:.1f} s CPU", flush=True)


def compare(folder: Path, committed: Path) -> int:
    """Compare regenerated fixtures with the committed ones: integers exactly, floats by their largest difference."""
    differing = 0
    for path in sorted(Path(folder).glob("*.npz")):
        new, old = np.load(path), np.load(committed / path.name)
        notes = [f"keys differ: {sorted(set(new.files) ^ set(old.files))}"] if set(new.files) != set(old.files) else []
        for key in sorted(set(new.files) & set(old.files)):
            a, b = new[key], old[key]
            if a.dtype.kind == "f" and a.shape == b.shape and np.array_equal(np.isnan(a), np.isnan(b)):
                finite = ~np.isnan(a)
                diff = float(np.abs(a[finite].astype(np.float64) - b[finite]).max()) if finite.any() else 0.0
                if diff > 0:
                    notes.append(f"{key}: floats, max |diff| {diff:.2g}")
            elif not np.array_equal(a, b):
                notes.append(f"{key}: DIFFERENT")
                differing += 1
        print(f"{path.name}: {'; '.join(notes) if notes else 'identical'}")
    return differing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    p_in = sub.add_parser("inputs", help="train the two models, pick the client, write inputs.npz")
    p_ref = sub.add_parser("reference", help="run the authors' selection functions, write <method>.npz")
    for p in (p_in, p_ref):
        p.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "datasets")
        p.add_argument("--out", type=Path, default=pf.FIXTURES)
    p_ref.add_argument("--reference-root", type=Path, required=True)
    p_ref.add_argument("--only", default=",".join(REFERENCES), help=f"comma-separated subset of {','.join(REFERENCES)}")
    p_cmp = sub.add_parser("compare", help="compare regenerated fixtures in FOLDER with --committed (exit 1 if not equal)")
    p_cmp.add_argument("folder", type=Path)
    p_cmp.add_argument("--committed", type=Path, default=pf.FIXTURES)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.step == "compare":
        raise SystemExit(1 if compare(args.folder, args.committed) else 0)
    if args.step == "inputs":
        make_inputs(args.data_root, args.out)
    else:
        run_references(args.reference_root, args.data_root, args.out, [s for s in args.only.split(",") if s])


if __name__ == "__main__":
    main()
