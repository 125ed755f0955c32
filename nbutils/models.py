"""Models: ResNet-18/50 with the CIFAR stem, a width multiplier, and named layers to probe.

Every classifier here is ``encoder -> head``: ``model.encoder(x)`` gives the penultimate features
(global-average-pooled output of the last block, 8*width dims for ResNet-18) and ``model.head``
turns them into logits. The head is a separate, replaceable module so that paper A's
classifier-only fine-tuning and the class-mean-feature (CMF) head swap it without touching the
encoder.

``extract(model, store, idx, layers=...)`` reads the output of any named layers in one forward pass
(forward hooks, global-average pooling inside the hook).
"""
from __future__ import annotations

import copy

from contextlib import contextmanager
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNetEncoder(nn.Module):
    """CIFAR-stem ResNet body: 3x3 conv stem (no max-pool), four stages, global average pooling.

    Named children ``stem, layer1 .. layer4, pool`` are the layers that layer-wise probes read.
    """

    def __init__(self, block, num_blocks: Sequence[int], width: int = 64, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        cin = width
        layers = []
        for i, n in enumerate(num_blocks):
            planes = width * 2 ** i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, stride=(1 if i == 0 or j > 0 else 2)))
                cin = planes * block.expansion
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = cin

    def forward(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.pool(x)


class Classifier(nn.Module):
    """``encoder -> head``. ``forward`` returns logits; ``features`` the penultimate features."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def features(self, x):
        return self.encoder(x)

    def forward(self, x):
        return self.head(self.encoder(x))


ARCHS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet50": (Bottleneck, (3, 4, 6, 3))}


def build_model(arch: str = "resnet18", num_classes: int = 10, width: int = 64, in_channels: int = 3) -> Classifier:
    """ResNet-18/50 with the CIFAR stem; ``width`` is the first stage's channel count (64 = paper)."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    if width < 1 or num_classes < 2 or in_channels < 1:
        raise ValueError(f"need width >= 1, num_classes >= 2, in_channels >= 1; got {width}, {num_classes}, {in_channels}")
    block, blocks = ARCHS[arch]
    enc = ResNetEncoder(block, blocks, width=width, in_channels=in_channels)
    return Classifier(enc, nn.Linear(enc.out_dim, num_classes))


def model_from_config(cfg) -> Classifier:
    return build_model(cfg.arch, cfg.num_classes, cfg.width, cfg.in_channels)


PROBE_LAYERS = ("stem", "layer1", "layer2", "layer3", "layer4")


@contextmanager
def capture(model: nn.Module, layers: Iterable[str], pool: bool = True):
    """Context manager: forward hooks that store the (pooled) output of each named module.

    Yields a dict name -> list of tensors (one per forward call, detached, float32, on the CPU).
    Spatial maps are global-average pooled inside the hook, so memory stays O(N * channels).
    """
    modules = dict(model.named_modules())
    missing = [n for n in layers if n not in modules]
    if missing:
        raise ValueError(f"unknown layer(s) {missing}; some valid names: {[n for n in modules if n][:20]}")
    store: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    handles = []
    for name in layers:
        def hook(_m, _inp, out, name=name):
            if pool and out.ndim == 4:
                out = out.float().mean(dim=(2, 3))
            store[name].append(out.detach().float().cpu())
        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def fuse_for_eval(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every ``Conv2d`` followed by a ``BatchNorm2d`` (stem, both convs of
    each residual block, projection shortcuts) folded into one convolution, the BatchNorm replaced by
    ``Identity``: the same function in eval mode (to float rounding, ~1e-6 relative), with the same module
    names for hooks, ~15% faster on the CPU. Other modules are copied unchanged."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    for parent in fused.modules():
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats \
                    and isinstance(parent, (nn.Sequential, BasicBlock, Bottleneck)):
                if isinstance(parent, nn.Sequential) or (a, b) in _BLOCK_PAIRS:
                    parent._modules[a] = fuse_conv_bn_eval(conv, bn)
                    parent._modules[b] = nn.Identity()
    return fused


#: (conv, bn) attribute pairs of the residual blocks whose outputs feed straight into the BatchNorm
_BLOCK_PAIRS = {("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")}


@torch.no_grad()
def extract(model: nn.Module, store, idx: torch.Tensor, layers: Sequence[str] = ("encoder",),
            batch_size: int = 1000, autocast: bool = False, fuse: bool = True) -> dict[str, torch.Tensor]:
    """One eval-mode pass over ``store[idx]``: returns {layer: features, "logits", "labels"} on the CPU.

    ``layers`` are module names of ``model`` (``"encoder"`` = penultimate features,
    ``"encoder.layer3"`` = a residual stage, pooled). ``fuse``: run a copy with BatchNorm folded into the
    convolutions (:func:`fuse_for_eval`; same features to float rounding, faster); ``model`` itself is
    never changed.
    """
    if fuse and any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        model = fuse_for_eval(model)
    was_training = model.training
    model.eval()
    logits, labels = [], []
    dev = store.device
    try:
        with capture(model, layers) as feats:
            for x, y in store.iter_batches(idx, batch_size):
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast and dev.type == "cuda"):
                    logits.append(model(x).float().cpu())
                labels.append(y.cpu())
    finally:
        model.train(was_training)
    out = {k: torch.cat(v) if v else torch.empty(0) for k, v in feats.items()}
    out["logits"] = torch.cat(logits) if logits else torch.empty(0)
    out["labels"] = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
    return out


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# Regression models (paper B)
# ----------------------------------------------------------------------------------------------
NORMS = ("none", "layer", "batch")


class RegressionMLP(nn.Module):
    """The bias-free MLP of Deep NRC: ``depth`` Linear layers without bias, ReLU between them, an optional
    LayerNorm / BatchNorm (without affine shift either) before each ReLU.

    ``depth`` counts the linear maps: ``in_dim -> width -> ... -> width -> out_dim`` (depth 8, width 512 in the
    paper). The Linear modules are ``layers.0 .. layers.{depth-1}``; the deep-NRC metrics of layer l are read
    from the *input* of ``layers.l`` (``nbutils.metrics.nrc.layer_nrc``)."""

    def __init__(self, in_dim: int, out_dim: int, depth: int = 8, width: int = 512, norm: str = "none"):
        super().__init__()
        if depth < 1 or width < 1 or in_dim < 1 or out_dim < 1:
            raise ValueError(f"need depth, width, in_dim, out_dim >= 1; got {depth}, {width}, {in_dim}, {out_dim}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        dims = [in_dim] + [width] * (depth - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(dims[i], dims[i + 1], bias=False) for i in range(depth))
        make = {"none": lambda d: nn.Identity(),
                "layer": lambda d: nn.LayerNorm(d, elementwise_affine=False),
                "batch": lambda d: nn.BatchNorm1d(d, affine=False)}[norm]
        self.norms = nn.ModuleList(make(width) for _ in range(depth - 1))

    def forward(self, x):
        for lin, norm in zip(self.layers[:-1], self.norms):
            x = F.relu(norm(lin(x)))
        return self.layers[-1](x)


def build_regressor(kind: str, input_shape: Sequence[int], out_dim: int, *, depth: int = 8, width: int = 512,
                    norm: str = "none", arch: str = "resnet18") -> nn.Module:
    """``kind="mlp"``: :class:`RegressionMLP` on flat inputs of ``input_shape = (d,)``;
    ``kind="resnet"``: the CIFAR-stem ResNet (``arch``, first-stage ``width``) on ``(C, H, W)`` images with a
    linear regression head of ``out_dim`` outputs."""
    if kind == "mlp":
        if len(input_shape) != 1:
            raise ValueError(f"an MLP needs flat inputs (d,), got input shape {tuple(input_shape)}")
        return RegressionMLP(int(input_shape[0]), out_dim, depth, width, norm)
    if kind == "resnet":
        if len(input_shape) != 3:
            raise ValueError(f"a ResNet needs images (C, H, W), got input shape {tuple(input_shape)}")
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
        block, blocks = ARCHS[arch]
        enc = ResNetEncoder(block, blocks, width=width, in_channels=int(input_shape[0]))
        return Classifier(enc, nn.Linear(enc.out_dim, out_dim))
    raise ValueError(f"kind must be 'mlp' or 'resnet', got {kind!r}")
