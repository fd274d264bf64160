"""GoogLeNet (Szegedy et al. 2015) as torchvision builds it, wrapped for feature visualization.

The wrapper takes images in [0, 1], normalizes them the way the weights expect, and then runs
the children of ``torchvision.models.googlenet`` in order. The children are registered on
the wrapper under their torchvision names, so ``inception4c`` is a tappable layer
(``ifv.math.objective.tap(model, "inception4c", x)``) and the wrapper's state dict has exactly the
keys of torchvision's (less the auxiliary classifiers, which FV never uses).

The smooth twin (``googlenet_patterns_softplus``) changes three things (``smooth`` and
``preactivation``): Softplus (beta = 4) for ReLU and average for max pooling, so that FV's
optima are stationary points rather than kinks (see ifv/zoo/models/densenet.py); and the
activation of inception4c moved from the ends of its four branches to after their
concatenation, which computes the same function but makes the tapped output a
pre-activation, as DenseNet's dense3 is. The stand-ins themselves are torchvision's
GoogLeNet as it is. docs/stand-ins.md describes both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ifv.errors import UserError
from ifv.zoo.models.densenet import activation_layer
from ifv.zoo.surgery import ChannelScale, bn_out, cols, rows

POOLS = ("max", "avg")

# the children of torchvision's GoogLeNet in the order of its forward pass
ORDER = ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b",
         "maxpool3", "inception4a", "inception4b", "inception4c", "inception4d", "inception4e",
         "maxpool4", "inception5a", "inception5b", "avgpool", "dropout", "fc")

# output channels of each tappable child
CHANNELS = {"conv1": 64, "maxpool1": 64, "conv2": 64, "conv3": 192, "maxpool2": 192,
            "inception3a": 256, "inception3b": 480, "maxpool3": 480, "inception4a": 512,
            "inception4b": 512, "inception4c": 512, "inception4d": 528, "inception4e": 832,
            "maxpool4": 832, "inception5a": 832, "inception5b": 1024, "avgpool": 1024}

# torchvision's IMAGENET1K_V1 weights are ported from the original network, which expects
# inputs in [-1, 1]: torchvision's preset transform normalizes with the ImageNet mean/std
# and the builder then forces transform_input=True, whose affine map undoes that and applies
# (x - 0.5) / 0.5. Composed, a [0, 1] image is normalized with mean 0.5 and std 0.5 per
# channel; with transform_input=False that composition is done here, inside the wrapper.
IMAGENET_V1_NORMALIZE = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def layers(num_classes: int) -> dict[str, int]:
    """Tappable layers and their channel counts (``fc``: the logits)."""
    return {**CHANNELS, "fc": num_classes}


class ConvBN(nn.Module):
    """torchvision's BasicConv2d (conv, batch norm, activation) with a chosen activation."""

    def __init__(self, conv: nn.Module, bn: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, act

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


def smooth(net: nn.Module, activation: str, pool: str) -> None:
    """Swap, in place, every BasicConv2d's ReLU for ``activation`` and, for ``pool="avg"``,
    every max pooling for average pooling of the same window (padding not counted).

    State-dict keys are unchanged (the activations hold no weights)."""
    from torchvision.models.googlenet import BasicConv2d

    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; valid: {', '.join(POOLS)}")
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BasicConv2d) and activation != "relu":
                setattr(parent, name, ConvBN(child.conv, child.bn, activation_layer(activation)))
            elif isinstance(child, nn.MaxPool2d) and pool == "avg":
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride,
                                                   child.padding, child.ceil_mode,
                                                   count_include_pad=False))


class GoogLeNetFV(nn.Module):
    """torchvision's GoogLeNet (no auxiliary heads, transform_input=False) on [0, 1] images.

    ``normalize``: (mean, std) per channel applied first, or None for none. ``activation``
    and ``pool``: see ``smooth`` (defaults: torchvision's). ``preactivation``: Inception
    children whose output is taken before the final activation of their branches; the
    activation is applied to the concatenation instead (the same function, since it acts
    elementwise), so that tapping them gives pre-activations.
    """

    def __init__(self, num_classes: int = 1000, init_weights: bool = False,
                 normalize: Sequence[Sequence[float]] | None = None,
                 activation: str = "relu", pool: str = "max",
                 preactivation: Sequence[str] = ()) -> None:
        super().__init__()
        from torchvision.models import googlenet

        net = googlenet(weights=None, num_classes=num_classes, aux_logits=False,
                        init_weights=init_weights, transform_input=False)
        smooth(net, activation, pool)
        inceptions = [n for n in ORDER if n.startswith("inception")]
        unknown = [n for n in preactivation if n not in inceptions]
        if unknown:
            raise ValueError(f"preactivation {unknown} must name Inception children; valid: "
                             f"{', '.join(inceptions)}")
        self.after = nn.ModuleDict()  # activations applied after a child's output
        for name in preactivation:
            block = getattr(net, name)
            for key in ("branch1", "branch2", "branch3", "branch4"):
                parent, branch = block, getattr(block, key)
                if isinstance(branch, nn.Sequential):  # its last conv ends the branch
                    parent, key = branch, str(len(branch) - 1)
                last = getattr(parent, key)
                setattr(parent, key, ConvBN(last.conv, last.bn, nn.Identity()))
            self.after[name] = activation_layer(activation)
        mean, std = normalize if normalize is not None else ((0.0,) * 3, (1.0,) * 3)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        for name in ORDER:
            self.add_module(name, getattr(net, name))

    def forward(self, x: Tensor) -> Tensor:
        x = (x - self.mean) / self.std
        for name in ORDER:
            x = getattr(self, name)(x)
            if name in self.after:
                x = self.after[name](x)
            if name == "avgpool":
                x = torch.flatten(x, 1)
        return x

    # --- planted copies (``ifv.zoo.surgery.Plantable``) ---------------------------------

    plantable = tuple(n for n in ORDER if n.startswith("inception"))

    def _branch_ends(self, layer: str) -> list[nn.Module]:
        """The last ConvBN of each of an Inception block's four branches."""
        block = getattr(self, layer)
        return [branch[-1] if isinstance(branch, nn.Sequential) else branch
                for branch in (block.branch1, block.branch2, block.branch3, block.branch4)]

    def channel_groups(self, layer: str) -> list[int]:
        """An Inception output's four branches, within which its channels can be
        permuted."""
        return [end.conv.out_channels for end in self._branch_ends(layer)]

    def plant(self, layer: str, src: Tensor, d: Tensor) -> None:
        """Permute (B's channel j is the old src[j]) and scale (by d_j > 0) the channels of
        Inception block ``layer`` in place, without changing the function: each branch's
        last ConvBN produces them; the next Inception's 1x1 convolutions (or the classifier)
        consume them, pooling in between being channelwise. A scale folds into the
        branches' batch norms; it passes a ReLU (positively homogeneous) and is divided out
        in the consumers; a tap before the activation (``preactivation``) divides it out
        before the activation instead (``ChannelScale``); other activations refuse it."""
        start = 0
        for end in self._branch_ends(layer):
            g = end.conv.out_channels
            s = src[start:start + g] - start
            rows(end.conv, s, torch.ones(g, dtype=torch.float64))
            bn_out(end.bn, s, d[start:start + g])
            start += g
        scaled = not bool((d == 1).all())
        pre = layer in self.after
        if scaled and not pre and not all(isinstance(getattr(end, "act", nn.ReLU()), nn.ReLU)
                                          for end in self._branch_ends(layer)):
            raise UserError(f"{layer} is tapped after an activation that is not positively "
                            "homogeneous, which no weight can rescale; rescaled copies need "
                            "ReLU or a pre-activation tap")
        later = [n for n in ORDER[ORDER.index(layer) + 1:] if n.startswith("inception")]
        if later:
            nxt = getattr(self, later[0])
            consumers = [nxt.branch1.conv, nxt.branch2[0].conv, nxt.branch3[0].conv,
                         nxt.branch4[1].conv]
        else:
            consumers = [self.fc]
        for consumer in consumers:
            cols(consumer, src, None if pre or not scaled else d)
        if scaled and pre:
            factor = (1.0 / d).to(self._branch_ends(layer)[0].conv.weight)
            self.after[layer] = nn.Sequential(ChannelScale(factor), self.after[layer])
