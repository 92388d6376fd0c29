"""Training and scoring throughput of the project's code vs a bare PyTorch loop.

Prints, on the machine it runs on, samples/s of

* ``train``: :func:`fal_shared.training.train_model` (what a ClientApp runs for
  one FedAvg round) against a bare loop on the same model, data, batch size
  and optimiser (data already on the device as normalised float32, a
  ``torch.randperm`` per epoch, no host synchronisation at all);
* ``score``: :func:`fal_shared.training.predict` (what selectors and
  evaluation run) against a bare ``no_grad`` loop;
* ``K concurrent``: K processes each running ``train_model`` on one device at
  the same time (aggregate samples/s), i.e. several runs sharing one GPU.

The ratio project / bare is the figure of merit (target: >= 0.8 on a GPU).
Inputs are MNIST-shaped uint8 images (real MNIST from ``--data-root`` if
given, else seeded random pixels: throughput does not depend on the values).

    python benchmarks/throughput.py                       # CPU or the GPU if present
    python benchmarks/throughput.py --device cuda --models resnet8,cnn4conv \
        --precision fp32,bf16 --concurrent 1,4,8 --json throughput.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fal_shared.models import build_model  # noqa: E402
from fal_shared.training import TrainSettings, pick_device, predict, train_model  # noqa: E402

NORMALIZE = (1 / 255, (0.1307,), (0.3081,))


def make_data(n: int, data_root: str | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple]:
    if data_root:
        from fal_shared.data.classification import load_classification

        train = load_classification("mnist", "train", data_root)
        idx = np.random.default_rng(seed).choice(len(train.y), size=n, replace=False)
        return train.x[idx], train.y[idx], (train.scale, train.mean, train.std)
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=n), NORMALIZE


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK = time.perf_counter  # --clock process: CPU seconds of this process (robust on a shared CPU, 1 thread)


def _settings(args, precision: str, epochs: int) -> TrainSettings:
    kw = dict(epochs=epochs, batch_size=args.batch_size, lr=0.1, momentum=0.9, weight_decay=5e-4)
    if precision != "fp32":
        kw["precision"] = precision  # only the new training code knows this field
    return TrainSettings(**kw)


def project_train(model_name: str, x, y, normalize, args, device, precision: str) -> float:
    model = build_model(model_name, input_shape=x.shape[1:], num_outputs=10, seed=0)
    train_model(model, x, y, _settings(args, precision, 1), seed=0, device=device, normalize=normalize)  # warm-up
    best = 0.0
    for r in range(args.repeats):
        _sync(device)
        t0 = CLOCK()
        train_model(model, x, y, _settings(args, precision, args.epochs), seed=r + 1, device=device, normalize=normalize)
        _sync(device)
        best = max(best, args.epochs * len(x) / (CLOCK() - t0))
    return best


def bare_train(model_name: str, x, y, normalize, args, device, precision: str) -> float:
    model = build_model(model_name, input_shape=x.shape[1:], num_outputs=10, seed=0).to(device).train()
    scale, mean, std = normalize
    xt = (torch.as_tensor(x, device=device).float() * scale - mean[0]) / std[0]
    yt = torch.as_tensor(y, device=device).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    n, b = len(xt), args.batch_size
    amp = precision == "bf16"

    def epoch() -> None:
        perm = torch.randperm(n, device=device)
        for s in range(0, n, b):
            idx = perm[s : s + b]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits, _ = model(xt[idx])
                loss = loss_fn(logits.float(), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    epoch()  # warm-up
    best = 0.0
    for _ in range(args.repeats):
        _sync(device)
        t0 = CLOCK()
        for _ in range(args.epochs):
            epoch()
        _sync(device)
        best = max(best, args.epochs * n / (CLOCK() - t0))
    return best


def project_score(model_name: str, x, normalize, args, device) -> float:
    model = build_model(model_name, input_shape=x.shape[1:], num_outputs=10, seed=0)
    predict(model, x[: args.score_batch_size], batch_size=args.score_batch_size, device=device, normalize=normalize)
    best = 0.0
    for _ in range(args.repeats):
        _sync(device)
        t0 = CLOCK()
        predict(model, x, batch_size=args.score_batch_size, device=device, normalize=normalize)
        _sync(device)
        best = max(best, len(x) / (CLOCK() - t0))
    return best


@torch.no_grad()
def bare_score(model_name: str, x, normalize, args, device) -> float:
    model = build_model(model_name, input_shape=x.shape[1:], num_outputs=10, seed=0).to(device).eval()
    scale, mean, std = normalize
    xt = (torch.as_tensor(x, device=device).float() * scale - mean[0]) / std[0]
    model(xt[: args.score_batch_size])
    best = 0.0
    for _ in range(args.repeats):
        _sync(device)
        t0 = CLOCK()
        outs = [torch.softmax(model(xt[s : s + args.score_batch_size])[0], 1) for s in range(0, len(xt), args.score_batch_size)]
        torch.cat(outs).cpu()
        _sync(device)
        best = max(best, len(x) / (CLOCK() - t0))
    return best


def _worker(model_name, n, data_root, args_dict, device_name, precision, start_evt, out_q) -> None:
    torch.set_num_threads(max(1, args_dict["threads"]))
    args = argparse.Namespace(**args_dict)
    device = torch.device(device_name)
    x, y, normalize = make_data(n, data_root)
    model = build_model(model_name, input_shape=x.shape[1:], num_outputs=10, seed=0)
    train_model(model, x, y, _settings(args, precision, 1), seed=0, device=device, normalize=normalize)
    _sync(device)
    start_evt.wait()
    t0 = time.perf_counter()
    train_model(model, x, y, _settings(args, precision, args.epochs), seed=1, device=device, normalize=normalize)
    _sync(device)
    out_q.put((t0, time.perf_counter(), args.epochs * n))


def concurrent_train(model_name: str, k: int, args, device, precision: str) -> float:
    """Aggregate samples/s of k processes training at the same time on ``device``."""
    ctx = mp.get_context("spawn")
    start_evt, out_q = ctx.Event(), ctx.Queue()
    args_dict = {**vars(args), "threads": max(1, args.threads // k)}
    procs = [
        ctx.Process(target=_worker, args=(model_name, args.n, args.data_root, args_dict, str(device), precision, start_evt, out_q))
        for _ in range(k)
    ]
    for p in procs:
        p.start()
    time.sleep(args.spawn_wait)  # every worker has loaded torch and warmed up before the start signal
    start_evt.set()
    results = [out_q.get() for _ in procs]
    for p in procs:
        p.join()
    begin, end = min(r[0] for r in results), max(r[1] for r in results)
    return sum(r[2] for r in results) / (end - begin)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet8,cnn4conv")
    p.add_argument("--n", type=int, default=900, help="labeled samples per client (training set size)")
    p.add_argument("--pool", type=int, default=6000, help="samples scored")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--score-batch-size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", help="comma list of fp32, bf16")
    p.add_argument("--concurrent", default="", help="comma list of K for K concurrent training processes, e.g. 1,4,8")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads (split over K processes)")
    p.add_argument("--spawn-wait", type=float, default=20.0, help="seconds for concurrent workers to start and warm up")
    p.add_argument("--data-root", default=None, help="MNIST folder; default: random MNIST-shaped pixels")
    p.add_argument("--json", default=None, help="write the rows to this file too")
    p.add_argument("--clock", choices=["wall", "process"], default="wall",
                   help="process: time by this process's CPU seconds (a CPU shared with other jobs; use --threads 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "process" else time.perf_counter
    device = pick_device(args.device)
    desc = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {args.threads} threads)"
    print(f"# throughput on {desc}; torch {torch.__version__}; n={args.n} train, {args.pool} scored, "
          f"batch {args.batch_size}, {args.epochs} epochs, best of {args.repeats}, {args.clock} clock")
    x, y, normalize = make_data(max(args.n, args.pool), args.data_root)
    xtr, ytr = x[: args.n], y[: args.n]
    rows = []
    print("| model | precision | train project | train bare | ratio | score project | score bare | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for model_name in args.models.split(","):
        for precision in args.precision.split(","):
            tp = project_train(model_name, xtr, ytr, normalize, args, device, precision)
            tb = bare_train(model_name, xtr, ytr, normalize, args, device, precision)
            sp = project_score(model_name, x[: args.pool], normalize, args, device)
            sb = bare_score(model_name, x[: args.pool], normalize, args, device)
            row = {"model": model_name, "precision": precision, "device": desc, "train_project": tp, "train_bare": tb,
                   "score_project": sp, "score_bare": sb}
            rows.append(row)
            print(f"| {model_name} | {precision} | {tp:,.0f} | {tb:,.0f} | {tp / tb:.2f} | {sp:,.0f} | {sb:,.0f} | {sp / sb:.2f} |", flush=True)
    if args.concurrent:
        print("\n| model | precision | K processes | aggregate train samples/s | per process |")
        print("|---|---|---:|---:|---:|")
        for model_name in args.models.split(","):
            for precision in args.precision.split(","):
                for k in [int(v) for v in args.concurrent.split(",")]:
                    agg = concurrent_train(model_name, k, args, device, precision)
                    rows.append({"model": model_name, "precision": precision, "device": desc, "concurrent": k, "train_aggregate": agg})
                    print(f"| {model_name} | {precision} | {k} | {agg:,.0f} | {agg / k:,.0f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
