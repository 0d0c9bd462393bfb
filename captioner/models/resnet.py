"""A ResNet written out: stem, stages of residual blocks, batch norm; a grid of features for a decoder.

A residual block computes ``relu(F(x) + shortcut(x))``: the convolutions ``F`` learn a correction to
the identity, so a deep stack starts out close to passing its input through, and gradients reach the
lower layers through the shortcuts. Two kinds of block (He et al., 2015):

- :class:`BasicBlock` (ResNet-18/34): two 3x3 convolutions, ``width`` channels in and out;
- :class:`BottleneckBlock` (ResNet-50/101/152): 1x1 down to ``width``, 3x3 at ``width``, 1x1 up to
  ``4 * width``; the cheap 1x1 convolutions let the expensive 3x3 run on few channels.

Every convolution is followed by batch norm (and a ReLU, except the last of a block, which is added to
the shortcut first). When a block changes the resolution or the channel count, its shortcut is a
strided 1x1 convolution + batch norm ("projection shortcut"); otherwise it is the identity. The last
batch norm of each block starts at zero (the "zero-init residual" trick), so each block starts as
the identity.

The network: a stem (a strided convolution, optionally a max pool), then ``len(widths)`` stages; the
first stage keeps the stem's resolution and every later stage halves it. The stride of the whole
encoder is ``2 * (2 if stem_pool) * 2 ** (stages - 1)``:

    shapes preset  64x64 image, stem stride 2, 3 stages  -> stride 8  -> an 8x8 grid   (the ViT's 8x8 patches)
    ResNet-50/101  224x224, 7x7 conv stride 2 + pool, 4 stages -> stride 32 -> a 7x7 grid of 2048 channels

The output is the last stage's feature map read as a sequence, ``(B, H*W, C)`` row-major: a decoder
attends over it exactly as over the ViT's patch features. There is no global pooling here; the
Show-and-Tell decoder averages the grid itself.

The ResNet-50/101-shaped presets (``configs/coco_resnet*.yaml``) start from random weights: this project
has no ImageNet weights and downloads none. The original projects started from ImageNet-pretrained ResNets, whose
features already know objects; a ResNet trained from scratch on captions alone learns them from far
less data and needs many more epochs to get close.
"""

from __future__ import annotations

from torch import Tensor, nn

from captioner.config import ResNetConfig


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Convolution (no bias: batch norm's shift replaces it) + batch norm; 'same' padding for odd kernels."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out))


def shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    """The identity when shapes match, else a strided 1x1 projection + batch norm."""
    return nn.Identity() if stride == 1 and c_in == c_out else conv_bn(c_in, c_out, 1, stride)


class BasicBlock(nn.Module):
    """relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x)): (B, c_in, H, W) -> (B, width, H/s, W/s)."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn(c_in, width, 3, stride)
        self.conv2 = conv_bn(width, width, 3)
        nn.init.zeros_(self.conv2[1].weight)  # the block starts as the identity (zero-init residual)
        self.shortcut = shortcut(c_in, width, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.conv1(x))  # (B, width, H/s, W/s)
        return self.relu(self.conv2(out) + self.shortcut(x))


class BottleneckBlock(nn.Module):
    """1x1 down to width, 3x3 (strided), 1x1 up to 4*width, + shortcut: (B, c_in, H, W) -> (B, 4*width, H/s, W/s).

    The stride sits on the 3x3 convolution, as in torchvision's "ResNet v1.5".
    """

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1):
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = conv_bn(c_in, width, 1)
        self.conv2 = conv_bn(width, width, 3, stride)
        self.conv3 = conv_bn(width, c_out, 1)
        nn.init.zeros_(self.conv3[1].weight)
        self.shortcut = shortcut(c_in, c_out, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.conv1(x))  # (B, width, H, W)
        out = self.relu(self.conv2(out))  # (B, width, H/s, W/s)
        return self.relu(self.conv3(out) + self.shortcut(x))  # (B, 4*width, H/s, W/s)


BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


class ResNetEncoder(nn.Module):
    """Images (B, 3, S, S) -> a grid of features (B, H*W, C), C = widths[-1] * expansion.

    ``stem`` and ``stages`` are separate attributes so that layer-wise unfreezing can treat the stem
    like the ViT's patch embedding and each stage like a transformer layer (:meth:`layer_groups`).
    """

    def __init__(self, config: ResNetConfig):
        super().__init__()
        if not config.widths or len(config.widths) != len(config.blocks) or min(config.blocks) < 1:
            raise ValueError(f"resnet.widths and resnet.blocks need one entry per stage and at least one block "
                             f"each; got widths={config.widths}, blocks={config.blocks}")
        self.config = config
        layers = [nn.Conv2d(3, config.stem_width, config.stem_kernel, 2, config.stem_kernel // 2, bias=False),
                  nn.BatchNorm2d(config.stem_width), nn.ReLU(inplace=True)]
        if config.stem_pool:
            layers.append(nn.MaxPool2d(3, 2, padding=1))
        self.stem = nn.Sequential(*layers)
        block = BLOCKS[config.block]
        stages, c_in = [], config.stem_width
        for i, (width, n) in enumerate(zip(config.widths, config.blocks)):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1  # the first block of every later stage halves H and W
                blocks.append(block(c_in, width, stride))
                c_in = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.width = c_in  # C, what a decoder reads
        self.stride = 2 * (2 if config.stem_pool else 1) * 2 ** (len(stages) - 1)
        if config.image_size % self.stride:
            raise ValueError(f"resnet.image_size {config.image_size} is not a multiple of the encoder's "
                             f"stride {self.stride}")
        self.grid_size = config.image_size // self.stride
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def layer_groups(self) -> list[list[nn.Module]]:
        """The unfreezing groups above the stem, from the input side: one per stage."""
        return [[stage] for stage in self.stages]

    def forward(self, images: Tensor) -> Tensor:
        x = self.stem(images)  # (B, stem_width, S/2, S/2), /4 with the pool
        for stage in self.stages:
            x = stage(x)  # (B, C_i, H_i, W_i)
        return x.flatten(2).transpose(1, 2)  # (B, H*W, C): row-major grid cells, like ViT patches
