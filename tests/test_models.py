"""Models return (logits, penultimate features) with the documented shapes."""

from __future__ import annotations

import pytest
import torch

from fal_shared.models import MODEL_NAMES, build_model


@pytest.mark.parametrize(
    "name, shape, feature_dim",
    [
        ("resnet8", (3, 32, 32), 64),
        ("resnet8", (1, 28, 28), 64),
        ("preact-resnet8", (1, 28, 28), 64),
        ("preact-resnet8", (3, 32, 32), 64),
        ("cnn4conv", (1, 28, 28), 64),  # 28 -> 1x1 after 4 pools: 64 features (spec)
        ("cnn4conv", (3, 32, 32), 256),  # 32 -> 2x2: 256 features (spec)
        ("mobilenetv2", (3, 32, 32), 1280),
        ("small-cnn", (1, 8, 8), 128),
        ("mlp", (1, 8, 8), 256),
    ],
)
def test_image_models_return_logits_and_features(name, shape, feature_dim):
    model = build_model(name, input_shape=shape, num_outputs=10, seed=0).eval()
    logits, features = model(torch.zeros(2, *shape))
    assert logits.shape == (2, 10)
    assert features.shape == (2, feature_dim)


def test_resnet8_is_the_16_32_64_backbone():
    model = build_model("resnet8", input_shape=(3, 32, 32), num_outputs=10)
    convs = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert convs == [16, 16, 16, 32, 32, 64, 64]  # stem + one BasicBlock (2 convs) per stage


def test_preact_resnet8_is_the_reference_codes_pre_activation_layout():
    """dgitj/FAL models/preact_resnet_mnist.py: 77,562 parameters and 487 buffer values for MNIST, 10 classes
    (its state dict loads into this model key by key and gives the same outputs, checked against the checkout)."""
    model = build_model("preact-resnet8", input_shape=(1, 28, 28), num_outputs=10, seed=0)
    assert sum(p.numel() for p in model.parameters()) == 77_562
    assert sum(b.numel() for b in model.buffers()) == 487
    stem, *blocks, final_bn = list(model.body)[:5]
    assert isinstance(stem, torch.nn.Conv2d)  # no BN/ReLU after the stem: each block pre-activates its input
    assert isinstance(final_bn, torch.nn.BatchNorm2d) and final_bn.num_features == 64
    shortcuts = [b.shortcut for b in blocks]
    assert shortcuts[0] is None and all(isinstance(s, torch.nn.Conv2d) and s.kernel_size == (1, 1) for s in shortcuts[1:])
    w = blocks[2].conv2.weight  # He-normal, fan-out: std sqrt(2 / (3 * 3 * 64))
    assert abs(float(w.std()) - (2 / (9 * 64)) ** 0.5) < 0.01


def test_linear_model_features_are_its_inputs():
    model = build_model("linear", input_shape=(5,), num_outputs=1, seed=0)
    x = torch.randn(4, 5)
    out, feats = model(x)
    assert out.shape == (4, 1) and torch.equal(feats, x)


def test_seeded_init_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_model("cnn4conv", input_shape=(1, 28, 28), num_outputs=10, seed=7)
    assert torch.equal(torch.rand(1), expected_next)
    b = build_model("cnn4conv", input_shape=(1, 28, 28), num_outputs=10, seed=7)
    c = build_model("cnn4conv", input_shape=(1, 28, 28), num_outputs=10, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_unknown_model_and_wrong_shape_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model 'vgg'; valid models: " + ", ".join(MODEL_NAMES)):
        build_model("vgg", input_shape=(1, 8, 8), num_outputs=2)
    with pytest.raises(ValueError, match="needs image inputs"):
        build_model("resnet8", input_shape=(8,), num_outputs=2)
    with pytest.raises(ValueError, match="at least 16 pixels"):
        build_model("cnn4conv", input_shape=(1, 8, 8), num_outputs=2)


def test_resnet8s_block_is_torchvisions_basic_block_parameter_for_parameter():
    """fal_shared.models.BasicBlock replaces torchvision's only to skip its import: same seed, same model."""
    import subprocess
    import sys

    from torchvision.models.resnet import BasicBlock as TorchvisionBlock

    import fal_shared.models as models

    ours = build_model("resnet8", input_shape=(1, 28, 28), num_outputs=10, seed=3)
    original = models.BasicBlock
    models.BasicBlock = TorchvisionBlock
    try:
        theirs = build_model("resnet8", input_shape=(1, 28, 28), num_outputs=10, seed=3)
    finally:
        models.BasicBlock = original
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(4, 1, 28, 28)
    ours.train(), theirs.train()
    assert torch.equal(ours(x)[0], theirs(x)[0]) and torch.equal(ours(x)[1], theirs(x)[1])
    # and building it imports neither torchvision nor scikit-learn (seconds of CPU in every process)
    probe = ("import sys, client_app.app, server_app.app; from fal_shared.models import build_model; "
             "build_model('resnet8', input_shape=(1, 28, 28), num_outputs=10); "
             "print(sorted(m for m in ('torchvision', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    # a deployed SuperNode starts one ClientApp process per message: it imports no scipy either
    probe = "import sys, client_app.app; print('scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
