"""DenseNet-BC (Huang et al. 2017) as used in the paper (Sec. 3.1).

Bottleneck layers (BN-ReLU-1x1 conv to 4k channels, BN-ReLU-3x3 conv to k channels) whose
outputs are concatenated to their inputs; transitions (BN-ReLU-1x1 conv with compression,
2x2 average pooling) between three dense blocks. The named children are the tappable layers:
``conv0``, ``dense1``, ``trans1``, ``dense2``, ``trans2``, ``dense3`` (the concatenation, a
pre-activation output), ``pool`` (BN-ReLU-global mean) and ``classifier`` (the logits).

``activation="softplus"`` replaces every ReLU by Softplus with beta = 4 (a ReLU whose kink is
rounded over about +-0.5): the smooth twins (``*_softplus``) that measure what smoothness does
to Grad-IFV. With ReLU, FV's optima sit on kinks where x^T Z_k Dy need not vanish, against the
premise of Sec. 2.1; docs/kinks.md is the estimator for that case, docs/stand-ins.md the twins.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ifv.zoo.surgery import bn_in, cols, rows

ACTIVATIONS = ("relu", "softplus")


def activation_layer(name: str) -> nn.Module:
    """The nonlinearity: ReLU (the paper's networks, the stand-ins) or Softplus(beta=4) (the
    smooth twins)."""
    if name == "relu":
        return nn.ReLU(inplace=False)
    if name == "softplus":
        return nn.Softplus(beta=4.0)
    raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")


class Bottleneck(nn.Module):
    """BN-ReLU-Conv1x1(4k)-BN-ReLU-Conv3x3(k); the output is concatenated to the input."""

    def __init__(self, in_channels: int, growth: int, activation: str = "relu") -> None:
        super().__init__()
        inner = 4 * growth
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            activation_layer(activation),
            nn.Conv2d(in_channels, inner, 1, bias=False),
            nn.BatchNorm2d(inner),
            activation_layer(activation),
            nn.Conv2d(inner, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class Transition(nn.Sequential):
    """BN-ReLU-Conv1x1 with compression, then 2x2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int, activation: str = "relu") -> None:
        super().__init__(
            nn.BatchNorm2d(in_channels),
            activation_layer(activation),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.AvgPool2d(2),
        )


class GlobalPool(nn.Sequential):
    """The final BN-ReLU and the spatial mean: (B, C, H, W) -> (B, C)."""

    def __init__(self, channels: int, activation: str = "relu") -> None:
        super().__init__(nn.BatchNorm2d(channels), activation_layer(activation),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def block_channels(depth: int, growth: int, compression: float = 0.5) -> list[int]:
    """Output channels of conv0, dense1, trans1, dense2, trans2, dense3 for DenseNet-BC."""
    if (depth - 4) % 6:
        raise ValueError(f"DenseNet-BC depth must be 6n+4, got {depth}")
    n = (depth - 4) // 6
    c = 2 * growth
    out = [c]
    for block in range(3):
        c += n * growth
        out.append(c)
        if block < 2:
            c = int(c * compression)
            out.append(c)
    return out


class DenseNetBC(nn.Module):
    """DenseNet-BC for 32x32 inputs in [0, 1]; depth 100 and growth 12 is the paper's model."""

    def __init__(self, depth: int = 100, growth: int = 12, num_classes: int = 10,
                 compression: float = 0.5, activation: str = "relu") -> None:
        super().__init__()
        n = (depth - 4) // 6
        ch = block_channels(depth, growth, compression)
        self.conv0 = nn.Conv2d(3, ch[0], 3, padding=1, bias=False)
        def block(c: int) -> nn.Sequential:
            return nn.Sequential(*(Bottleneck(c + i * growth, growth, activation)
                                   for i in range(n)))

        self.dense1 = block(ch[0])
        self.trans1 = Transition(ch[1], ch[2], activation)
        self.dense2 = block(ch[2])
        self.trans2 = Transition(ch[3], ch[4], activation)
        self.dense3 = block(ch[4])
        self.pool = GlobalPool(ch[5], activation)
        self.classifier = nn.Linear(ch[5], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv0(x)
        x = self.trans1(self.dense1(x))
        x = self.trans2(self.dense2(x))
        return self.classifier(self.pool(self.dense3(x)))

    # --- planted copies (``ifv.zoo.surgery.Plantable``) ---------------------------------

    plantable = ("dense1", "dense2", "dense3")

    def channel_groups(self, layer: str) -> list[int]:
        """A dense block's output groups, within which its channels can be permuted: the
        block's input and each of its layers' growth channels (the concatenation order is
        the architecture)."""
        block = getattr(self, layer)
        return [block[0].body[0].num_features] + [b.body[5].out_channels for b in block]

    def plant(self, layer: str, src: Tensor, d: Tensor) -> None:
        """Permute (B's channel j is the old src[j]) and scale (by d_j > 0) the channels of
        dense block ``layer`` in place, without changing the function: the producers are
        the convolutions that make each group (no bias; pooling is channelwise), the
        consumers every later layer's batch norm (a scale folds into its running mean and
        weight exactly) and 1x1 convolution, and the block's successor."""
        block = getattr(self, layer)
        b = int(layer[-1])
        c0 = block[0].body[0].num_features
        rows(self.conv0 if b == 1 else getattr(self, f"trans{b - 1}")[2], src[:c0], d[:c0])
        start = c0
        for layer_i in block:
            g = layer_i.body[5].out_channels
            bn_in(layer_i.body[0], src, d)
            cols(layer_i.body[2], src)
            rows(layer_i.body[5], src[start:start + g] - start, d[start:start + g])
            start += g
        if b < 3:
            succ = getattr(self, f"trans{b}")
            bn_in(succ[0], src, d)
            cols(succ[2], src)
        else:
            bn_in(self.pool[0], src, d)
            cols(self.classifier, src)
