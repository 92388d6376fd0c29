"""Models by name. Every model returns ``(logits, features)``.

``features`` is the penultimate representation (the input of the last linear
layer). Query strategies need it for Core-Set, BADGE, prototypes and LoGo.

Which models and why:

* ``resnet8``: the AHFAL/KAFAL backbone's shape, post-activation: 16-32-64 channels, one torchvision
  ``BasicBlock`` per stage, global average pooling, ``Linear(64, C)``. Not the AHFAL reference code's
  variant: with BatchNorm buffers averaged it learns faster than ``preact-resnet8`` (MNIST, alpha 1.0:
  docs/results/parity-runs.md).
* ``preact-resnet8``: the same widths with pre-activation blocks (He et al. 2016, "Identity mappings in
  deep residual networks": BN-ReLU before each convolution, a 1x1 convolution on the pre-activated input
  as the shortcut of a stage that changes shape, BN-ReLU before the pooling) and He-normal (fan-out)
  convolution weights: the architecture of the AHFAL reference code (dgitj/FAL
  ``models/preact_resnet*.py``), for runs that must match it.
* ``cnn4conv``: the LoGo/FairFAL backbone: 4 x [Conv3x3(64) + BN + ReLU +
  MaxPool2], flatten, ``Linear(emb, C)`` with a zero bias.
* ``mobilenetv2``: torchvision's MobileNetV2 (width 1.0, no pretrained weights:
  nothing can be downloaded), with its classifier split so the features are
  returned; the stem stride is reduced to 1 for inputs of 32 pixels or less,
  as is usual for CIFAR-sized images.
* ``small-cnn``: two conv layers, for the 8x8 ``digits`` default.
* ``mlp``: one hidden layer on flattened inputs.
* ``linear``: a single linear layer (regression, the FALE paper's model);
  its features are its inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.models import mobilenet_v2
from torchvision.models.resnet import BasicBlock

__all__ = ["MODEL_NAMES", "build_model", "check_model_fits", "default_model_for"]


class _FeatureHeadModel(nn.Module):
    """A body producing features and a linear head producing logits."""

    def __init__(self, body: nn.Module, feature_dim: int, num_outputs: int) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(feature_dim, num_outputs)
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.head(features), features


def _resnet8(in_channels: int, image_size: int, num_outputs: int) -> nn.Module:
    def stage(inp: int, out: int, stride: int) -> nn.Module:
        downsample = None
        if stride != 1 or inp != out:
            downsample = nn.Sequential(
                nn.Conv2d(inp, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )
        return BasicBlock(inp, out, stride=stride, downsample=downsample)

    body = nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
        stage(16, 16, 1),
        stage(16, 32, 2),
        stage(32, 64, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return _FeatureHeadModel(body, 64, num_outputs)


class _PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the shortcut (a 1x1 conv of the pre-activated input when the shape changes)."""

    def __init__(self, inp: int, out: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(inp), nn.BatchNorm2d(out)
        self.conv1 = nn.Conv2d(inp, out, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out, out, 3, padding=1, bias=False)
        self.shortcut = nn.Conv2d(inp, out, 1, stride=stride, bias=False) if stride != 1 or inp != out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(pre)
        return self.conv2(torch.relu(self.bn2(self.conv1(pre)))) + residual


def _preact_resnet8(in_channels: int, image_size: int, num_outputs: int) -> nn.Module:
    body = nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
        _PreActBlock(16, 16, 1),
        _PreActBlock(16, 32, 2),
        _PreActBlock(32, 64, 2),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    for m in body.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return _FeatureHeadModel(body, 64, num_outputs)


def _cnn4conv(in_channels: int, image_size: int, num_outputs: int) -> nn.Module:
    layers: list[nn.Module] = []
    channels, size = in_channels, image_size
    for _ in range(4):
        layers += [
            nn.Conv2d(channels, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        channels, size = 64, size // 2
    if size < 1:
        raise ValueError(
            f"model 'cnn4conv' needs images of at least 16 pixels, got {image_size}"
        )
    layers.append(nn.Flatten())
    model = _FeatureHeadModel(nn.Sequential(*layers), 64 * size * size, num_outputs)
    nn.init.zeros_(model.head.bias)  # as the FairFAL/LoGo code does
    return model


def _mobilenetv2(in_channels: int, image_size: int, num_outputs: int) -> nn.Module:
    net = mobilenet_v2(weights=None, num_classes=num_outputs)
    stem = net.features[0][0]
    stride = 1 if image_size <= 32 else 2
    net.features[0][0] = nn.Conv2d(
        in_channels, stem.out_channels, 3, stride=stride, padding=1, bias=False
    )
    body = nn.Sequential(net.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = _FeatureHeadModel(body, net.last_channel, num_outputs)
    return model


def _small_cnn(in_channels: int, image_size: int, num_outputs: int) -> nn.Module:
    body = nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (image_size // 2) ** 2, 128),
        nn.ReLU(inplace=True),
    )
    return _FeatureHeadModel(body, 128, num_outputs)


def _mlp(in_channels: int, image_size: int, num_outputs: int) -> nn.Module:
    body = nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, 256),
        nn.ReLU(inplace=True),
    )
    return _FeatureHeadModel(body, 256, num_outputs)


class _Linear(nn.Module):
    """Single linear layer for regression; features are the inputs."""

    def __init__(self, num_features: int, num_outputs: int) -> None:
        super().__init__()
        self.head = nn.Linear(num_features, num_outputs)
        self.feature_dim = num_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(x), x


_IMAGE_MODELS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "resnet8": _resnet8,
    "preact-resnet8": _preact_resnet8,
    "cnn4conv": _cnn4conv,
    "mobilenetv2": _mobilenetv2,
    "small-cnn": _small_cnn,
    "mlp": _mlp,
}
MODEL_NAMES: tuple[str, ...] = (*_IMAGE_MODELS, "linear")

_DEFAULTS = {
    "digits": "small-cnn",
    "mnist": "cnn4conv",
    "fashion-mnist": "cnn4conv",
    "cifar10": "resnet8",
    "cifar100": "resnet8",
    "svhn": "resnet8",
}


def default_model_for(dataset: str, task: str) -> str:
    """The model ``model='auto'`` resolves to for a dataset."""
    if task == "regression":
        return "linear"
    return _DEFAULTS.get(dataset, "cnn4conv")


def build_model(
    name: str,
    *,
    input_shape: tuple[int, ...],
    num_outputs: int,
    seed: int | None = None,
) -> nn.Module:
    """Build a model by name, optionally with a seeded initialisation.

    Parameters
    ----------
    name : str
        One of :data:`MODEL_NAMES`.
    input_shape : tuple
        ``(C, H, W)`` for image models, ``(d,)`` for ``linear``.
    num_outputs : int
        Number of classes (classification) or 1 (regression).
    seed : int, optional
        Seed of the weight initialisation. The global torch RNG is saved and
        restored, so building a model never changes other randomness.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")
    if name == "linear":
        if len(input_shape) != 1:
            raise ValueError(f"model 'linear' needs flat inputs (d,), got shape {input_shape}")
        factory: Callable[[], nn.Module] = lambda: _Linear(input_shape[0], num_outputs)
    else:
        if len(input_shape) != 3:
            raise ValueError(
                f"model {name!r} needs image inputs (C, H, W), got shape {input_shape}"
            )
        channels, height, _ = input_shape
        factory = lambda: _IMAGE_MODELS[name](channels, height, num_outputs)
    if seed is None:
        return factory()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def check_model_fits(name: str, *, input_shape: tuple[int, ...], num_outputs: int, dataset: str = "") -> None:
    """Build ``name`` for this data and run two zero samples through it.

    Raises a ValueError naming the model, the dataset and the reason when the
    model cannot take the data (e.g. an image model on a regression dataset,
    cnn4conv on 8x8 digits), so a bad combination fails before any training.
    Leaves the global torch RNG untouched.
    """
    where = f"dataset {dataset!r} " if dataset else ""
    try:
        model = build_model(name, input_shape=tuple(input_shape), num_outputs=num_outputs, seed=0)
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            logits, _ = model(torch.zeros((2, *input_shape)))
    except (ValueError, RuntimeError) as err:
        raise ValueError(f"model: {name!r} cannot take {where}(input shape {tuple(input_shape)}): {err}") from None
    if tuple(logits.shape) != (2, num_outputs):
        raise ValueError(f"model: {name!r} gives outputs of shape {tuple(logits.shape)[1:]} for {where}, expected ({num_outputs},)")
