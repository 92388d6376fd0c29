"""Local training and inference: the device-resident path against a plain loop, augmentation, optimiser state."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from torch import nn

from fal_shared.models import build_model
from fal_shared.training import (
    DeviceCache,
    TrainSettings,
    augment,
    predict,
    to_tensor,
    train_model,
)

CPU = torch.device("cpu")
NORMALIZE = (1 / 255, (0.5,), (0.25,))


def _data(n=70, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 1, 16, 16), dtype=np.uint8), rng.integers(0, 4, size=n)


def _plain_loop(model, x, y, settings, seed):
    """The loop as it was before inputs were kept on the device: numpy batches, a host read per step."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(settings.epochs):
        order = rng.permutation(len(x))
        loss_sum, total = 0.0, 0
        for s in range(0, len(x), settings.batch_size):
            idx = order[s : s + settings.batch_size]
            if len(idx) == 1:
                continue
            xb = to_tensor(x[idx], CPU, NORMALIZE)
            logits, _ = model(xb)
            loss = nn.functional.cross_entropy(logits, torch.as_tensor(y[idx]).long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
            total += len(idx)
        losses.append(loss_sum / total)
    return losses


@pytest.mark.parametrize("model_name", ["cnn4conv", "mlp"])
def test_cpu_training_is_bit_identical_to_a_plain_numpy_batch_loop(model_name):
    x, y = _data()
    settings = TrainSettings(epochs=3, batch_size=16, lr=0.05, momentum=0.9, weight_decay=1e-4)
    a = build_model(model_name, input_shape=(1, 16, 16), num_outputs=4, seed=3)
    b = build_model(model_name, input_shape=(1, 16, 16), num_outputs=4, seed=3)
    report = train_model(a, x, y, settings, seed=11, device=CPU, normalize=NORMALIZE)
    losses = _plain_loop(b, x, y, settings, seed=11)
    assert report.losses == losses  # exact: same batches, same arithmetic, same accumulation
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_tensor_inputs_give_the_same_model_as_numpy_inputs():
    x, y = _data()
    settings = TrainSettings(epochs=2, batch_size=16, lr=0.05)
    a = build_model("cnn4conv", input_shape=(1, 16, 16), num_outputs=4, seed=1)
    b = build_model("cnn4conv", input_shape=(1, 16, 16), num_outputs=4, seed=1)
    train_model(a, x, y, settings, seed=5, device=CPU, normalize=NORMALIZE)
    train_model(b, torch.as_tensor(x), torch.as_tensor(y), settings, seed=5, device=CPU, normalize=NORMALIZE)
    for va, vb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(va, vb)
    pa = predict(a, x, batch_size=7, device=CPU, normalize=NORMALIZE)
    pb = predict(a, torch.as_tensor(x), batch_size=64, device=CPU, normalize=NORMALIZE)
    np.testing.assert_allclose(pa.logits, pb.logits, rtol=1e-5, atol=1e-6)  # batch size changes conv algorithms only
    assert pa.outputs.shape == (70, 4) and pa.features.shape[0] == 70


def test_predict_equals_a_plain_batch_loop_and_concatenation():
    """Outputs written into preallocated arrays: the same numbers as batches concatenated, bit for bit."""
    x, _ = _data(n=45)
    model = build_model("mlp", input_shape=(1, 16, 16), num_outputs=4, seed=2).eval()
    with torch.no_grad():
        parts = [model(to_tensor(x[s : s + 16], CPU, NORMALIZE)) for s in range(0, len(x), 16)]
    pred = predict(model, x, batch_size=16, device=CPU, normalize=NORMALIZE)  # 45 = 16 + 16 + 13
    assert np.array_equal(pred.logits, torch.cat([lg for lg, _ in parts]).numpy())
    assert np.array_equal(pred.features, torch.cat([f for _, f in parts]).numpy())
    assert np.array_equal(pred.outputs, torch.softmax(torch.cat([lg for lg, _ in parts]), dim=1).numpy())
    bare = predict(model, x, batch_size=16, device=CPU, normalize=NORMALIZE, with_features=False)
    assert np.array_equal(bare.logits, pred.logits) and bare.features.shape == (45, 256) and not bare.features.any()
    empty = predict(model, x[:0], batch_size=16, device=CPU, normalize=NORMALIZE)
    assert empty.logits.shape == (0, 4) and empty.features.shape == (0, 256)


def test_early_stopping_reads_the_accuracy_and_stops():
    x, y = _data(n=40)
    y = np.zeros_like(y)  # one class: accuracy reaches 1 within an epoch or two
    model = build_model("mlp", input_shape=(1, 16, 16), num_outputs=4, seed=0)
    settings = TrainSettings(epochs=50, batch_size=8, lr=0.1, early_stop_accuracy=0.99)
    report = train_model(model, x, y, settings, seed=0, device=CPU, normalize=NORMALIZE)
    assert report.epochs_run < 50 and report.train_accuracy >= 0.99
    assert len(report.losses) == report.epochs_run


def test_crop_augmentation_takes_a_shifted_window_of_the_zero_padded_image():
    xb = torch.arange(2 * 1 * 5 * 5, dtype=torch.uint8).view(2, 1, 5, 5) + 1  # no zeros inside the images
    gen = torch.Generator().manual_seed(0)
    out = augment(xb, crop_padding=2, flip=False, generator=gen)
    assert out.shape == xb.shape and out.dtype == xb.dtype
    padded = nn.functional.pad(xb, (2, 2, 2, 2))
    for i in range(2):
        windows = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(padded[i, :, dy:dy + 5, dx:dx + 5], out[i])]
        assert windows, "every output is a 5x5 window of the padded image"
    again = augment(xb, crop_padding=2, flip=False, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # seeded
    flipped = augment(xb, crop_padding=0, flip=True, generator=torch.Generator().manual_seed(1))
    for i in range(2):
        assert torch.equal(flipped[i], xb[i]) or torch.equal(flipped[i], xb[i].flip(-1))


def test_augmented_training_is_seeded_and_differs_from_plain_training():
    x, y = _data()
    runs = []
    for crop in (2, 2, 0):
        model = build_model("cnn4conv", input_shape=(1, 16, 16), num_outputs=4, seed=0)
        train_model(model, x, y, TrainSettings(epochs=1, batch_size=16, lr=0.05, crop_padding=crop, flip=True),
                    seed=3, device=CPU, normalize=NORMALIZE)
        runs.append(model.head.weight.detach().clone())
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_bf16_mixed_precision_trains_with_fp32_weights():
    x, y = _data()
    model = build_model("cnn4conv", input_shape=(1, 16, 16), num_outputs=4, seed=0)
    report = train_model(model, x, y, TrainSettings(epochs=2, batch_size=16, lr=0.05, precision="bf16"),
                         seed=0, device=CPU, normalize=NORMALIZE)
    assert all(np.isfinite(report.losses)) and all(p.dtype == torch.float32 for p in model.parameters())
    pred = predict(model, x, batch_size=32, device=CPU, normalize=NORMALIZE, precision="bf16")
    assert pred.logits.dtype == np.float32 and np.isfinite(pred.logits).all()
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        train_model(model, x, y, TrainSettings(epochs=1, batch_size=16, lr=0.05, precision="fp16"), seed=0, device=CPU)


def test_optimizer_state_carries_momentum_across_calls():
    """Full-batch SGD with momentum: two 1-epoch calls with the state kept = one 2-epoch call."""
    x, y = _data(n=32)
    settings = TrainSettings(epochs=1, batch_size=32, lr=0.05, momentum=0.9)
    kept = build_model("mlp", input_shape=(1, 16, 16), num_outputs=4, seed=0)
    first = train_model(kept, x, y, settings, seed=0, device=CPU, normalize=NORMALIZE, optimizer_state={})
    assert first.optimizer_state and all("momentum_buffer" in s for s in first.optimizer_state.values())
    train_model(kept, x, y, settings, seed=1, device=CPU, normalize=NORMALIZE, optimizer_state=first.optimizer_state)
    once = build_model("mlp", input_shape=(1, 16, 16), num_outputs=4, seed=0)
    train_model(once, x, y, TrainSettings(epochs=2, batch_size=32, lr=0.05, momentum=0.9), seed=0, device=CPU, normalize=NORMALIZE)
    reset = build_model("mlp", input_shape=(1, 16, 16), num_outputs=4, seed=0)
    train_model(reset, x, y, settings, seed=0, device=CPU, normalize=NORMALIZE)
    train_model(reset, x, y, settings, seed=1, device=CPU, normalize=NORMALIZE)
    for a, b, c in zip(kept.parameters(), once.parameters(), reset.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # batch order inside a full batch only moves round-off
    assert any(not torch.allclose(a, c, atol=1e-6) for a, c in zip(kept.parameters(), reset.parameters()))


def test_device_cache_keeps_one_copy_per_live_array(monkeypatch):
    """On a GPU the cache holds one device copy per host array, dropped with the array.

    There is no GPU here: a fake device copy (``on_device`` replaced) stands in for
    the transfer, the cache logic is what is tested. On the CPU nothing is cached.
    """
    import fal_shared.training as training

    cache = DeviceCache()
    x = np.arange(12, dtype=np.uint8).reshape(6, 2)
    assert torch.equal(cache.get(x, CPU), torch.as_tensor(x)) and not cache._entries
    copies = []
    monkeypatch.setattr(training, "on_device", lambda a, device: copies.append(1) or torch.tensor(a))
    gpu = torch.device("cuda")
    first = cache.get(x, gpu)
    assert cache.get(x, gpu) is first and len(copies) == 1
    assert torch.equal(first, torch.as_tensor(x))
    other = x.copy()
    assert cache.get(other, gpu) is not first and len(copies) == 2
    del x
    gc.collect()
    assert len(cache._entries) == 1  # the dead array's entry went with it
