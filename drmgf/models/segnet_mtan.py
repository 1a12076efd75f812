"""``segnet_mtan``: SegNet with MTAN task attention for dense prediction (NYUv2-style).

The network of Liu, Johns and Davison, "End-to-End Multi-Task Learning with Attention" (CVPR 2019),
with a scalable width. A shared SegNet encoder (stages of 2, 2, 3, 3, 3 conv-BN-ReLU layers with
``[w, 2w, 4w, 8w, 8w]`` channels, each followed by 2x2 max-pooling with indices) and a mirrored
decoder (max-unpooling with those indices, then 3, 3, 3, 2, 2 layers) produce the shared features.
Each task owns one soft-attention mask per encoder and decoder stage (1x1 conv-BN-ReLU, 1x1
conv-BN-Sigmoid) that selects from the shared features; as in MTAN, the 3x3 conv-BN-ReLU layer that
follows each mask is shared by all tasks. A per-task head (3x3 conv, 1x1 conv) gives the output.
Differences from the reference code: convs followed by BatchNorm have no bias (it would get no
gradient), and segmentation outputs logits rather than log-probabilities (the losses apply softmax).

Notes for pruning and export:

- Pool indices carry no gradient, so a dependency graph traced through autograd cannot see that the
  decoder input of unpooling step ``j`` and encoder stage ``4 - j``'s output are indexed channel by
  channel together: both must keep the same channels (see :func:`unpool_couplings`).
- All unpooling goes through :class:`MaxUnpool`, the one module to replace by an export-friendly
  equivalent. With torch 2.14, ``torch.onnx.export(task_module, x, dynamo=True)`` decomposes it into
  ONNX ``MaxPool`` indices and ``ScatterND``; onnxruntime matched PyTorch, tied maxima included.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from drmgf.tasks import TaskSpec

ENCODER_CONVS = (2, 2, 3, 3, 3)  # conv layers per encoder stage; the decoder mirrors them
STAGES = len(ENCODER_CONVS)
DIVISOR = 2**STAGES  # input sides must survive five 2x2 poolings
NORMAL_EPS = 1e-12
_KINDS = ("segmentation", "depth", "normal")


def stage_widths(width: int) -> list[int]:
    """Channels of encoder stages 0..4: ``[w, 2w, 4w, 8w, 8w]``."""
    return [width, 2 * width, 4 * width, 8 * width, 8 * width]


def conv_bn_relu(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    """Conv (no bias: the BatchNorm that follows cancels it) + BatchNorm + ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class ConvStage(nn.Module):
    """``layers`` conv-BN-ReLU layers; MTAN's attention reads both the first layer's and the last one's output."""

    def __init__(self, cin: int, cout: int, layers: int) -> None:
        super().__init__()
        self.first = conv_bn_relu(cin, cout)
        self.rest = nn.Sequential(*(conv_bn_relu(cout, cout) for _ in range(layers - 1)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, cin, H, W] -> (first layer's output, stage output), both [B, cout, H, W]."""
        first = self.first(x)
        return first, self.rest(first)

    def last_conv(self) -> nn.Conv2d:
        """The conv whose channels the stage outputs."""
        return (self.rest[-1] if len(self.rest) else self.first)[0]  # type: ignore[return-value]


class MaxUnpool(nn.Module):
    """2x2, stride-2 max-unpooling: places each value where its window's maximum was, zeros elsewhere.

    The only consumer of pool indices in the model, kept separate so that an exporter can swap it
    for an equivalent formulation (a scatter into a zero tensor gives identical results).
    """

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """x, indices: [B, C, h, w] (indices flat into the 2h x 2w plane) -> [B, C, 2h, 2w]."""
        return F.max_unpool2d(x, indices, kernel_size=2, stride=2)


class SegNetFeatures(NamedTuple):
    """What the attention branches read from the shared network, one entry per stage.

    Attributes:
        enc_first: encoder stage i's first-layer output, [B, c_i, H / 2^i, W / 2^i].
        enc_out: encoder stage i's output before pooling, same shape.
        dec_in: decoder stage j's unpooled input (j = 0 is the deepest).
        dec_out: decoder stage j's output.
    """

    enc_first: list[torch.Tensor]
    enc_out: list[torch.Tensor]
    dec_in: list[torch.Tensor]
    dec_out: list[torch.Tensor]


def decoder_widths(width: int) -> tuple[list[int], list[int]]:
    """Input and output channels of decoder stages 0 (deepest) .. 4 (full resolution)."""
    enc = stage_widths(width)
    cin = enc[::-1]
    cout = [enc[max(STAGES - 2 - j, 0)] for j in range(STAGES)]
    return cin, cout


def check_input(x: torch.Tensor) -> None:
    """Raise ValueError unless x is [B, C, H, W] with H and W divisible by 32."""
    if x.dim() != 4:
        raise ValueError(f"segnet_mtan expects images [B, C, H, W], got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % DIVISOR or w % DIVISOR:
        raise ValueError(f"segnet_mtan needs height and width divisible by {DIVISOR} (5 poolings), got {h}x{w}")


class SegNetBackbone(nn.Module):
    """The shared SegNet encoder and decoder.

    Args:
        in_channels: image channels.
        width: channels of the first stage.
    """

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        enc = stage_widths(width)
        self.encoder = nn.ModuleList(
            ConvStage(in_channels if i == 0 else enc[i - 1], enc[i], n) for i, n in enumerate(ENCODER_CONVS)
        )
        dec_in, dec_out = decoder_widths(width)
        self.decoder = nn.ModuleList(
            ConvStage(dec_in[j], dec_out[j], n) for j, n in enumerate(ENCODER_CONVS[::-1])
        )
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        self.unpool = MaxUnpool()

    def forward(self, x: torch.Tensor) -> SegNetFeatures:
        """x: [B, in_channels, H, W] with H, W divisible by 32 -> per-stage features."""
        check_input(x)
        enc_first, enc_out, indices = [], [], []
        for stage in self.encoder:
            first, out = stage(x)
            x, idx = self.pool(out)
            enc_first.append(first)
            enc_out.append(out)
            indices.append(idx)
        dec_in, dec_out = [], []
        for stage, idx in zip(self.decoder, reversed(indices)):
            up = self.unpool(x, idx)
            x = stage(up)[1]
            dec_in.append(up)
            dec_out.append(x)
        return SegNetFeatures(enc_first, enc_out, dec_in, dec_out)


def attention_mask(cin: int, cout: int) -> nn.Sequential:
    """MTAN's soft mask: 1x1 conv-BN-ReLU, 1x1 conv-BN-Sigmoid. [B, cin, H, W] -> [B, cout, H, W] in (0, 1)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.Sigmoid(),
    )


class SharedAttentionConvs(nn.Module):
    """The 3x3 conv-BN-ReLU layers after each attention mask, shared by all tasks (as in MTAN).

    Encoder stage i maps the masked features to the next stage's width (the last keeps 8w); decoder
    stage j maps the previous attended features to stage j's decoder width.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        enc = stage_widths(width)
        _, dec_out = decoder_widths(width)
        self.encoder = nn.ModuleList(conv_bn_relu(enc[i], enc[min(i + 1, STAGES - 1)]) for i in range(STAGES))
        prev = [enc[-1]] + dec_out[:-1]
        self.decoder = nn.ModuleList(conv_bn_relu(prev[j], dec_out[j]) for j in range(STAGES))


class TaskAttention(nn.Module):
    """One task's attention masks over the shared encoder and decoder.

    Args:
        width: channels of the first stage.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        enc = stage_widths(width)
        dec_in, dec_out = decoder_widths(width)
        self.encoder = nn.ModuleList(attention_mask(c if i == 0 else 2 * c, c) for i, c in enumerate(enc))
        self.decoder = nn.ModuleList(attention_mask(dec_in[j] + dec_out[j], dec_out[j]) for j in range(STAGES))

    def forward(self, feats: SegNetFeatures, shared: SharedAttentionConvs) -> torch.Tensor:
        """Attended features of this task: [B, w, H, W] at input resolution."""
        a = self._encode(feats, shared)
        for j, (mask, conv) in enumerate(zip(self.decoder, shared.decoder)):
            a = conv(F.interpolate(a, scale_factor=2.0, mode="bilinear", align_corners=True))
            a = mask(torch.cat((feats.dec_in[j], a), dim=1)) * feats.dec_out[j]
        return a

    def _encode(self, feats: SegNetFeatures, shared: SharedAttentionConvs) -> torch.Tensor:
        """Encoder half: [B, 8w, H / 32, W / 32]."""
        a = feats.enc_first[0]  # stage 0's mask sees the shared features only; later ones also the task's
        for i, (mask, conv) in enumerate(zip(self.encoder, shared.encoder)):
            gate_in = a if i == 0 else torch.cat((feats.enc_first[i], a), dim=1)
            a = F.max_pool2d(conv(mask(gate_in) * feats.enc_out[i]), kernel_size=2, stride=2)
        return a


class DenseHead(nn.Module):
    """3x3 conv then 1x1 conv to the task's channels (MTAN's prediction layer); unit normals for ``normal``.

    Args:
        cin: input channels.
        task: the output it predicts.
    """

    def __init__(self, cin: int, task: TaskSpec) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cin, 3, padding=1)
        self.out = nn.Conv2d(cin, task.out_channels, 1)
        self.unit_length = task.kind == "normal"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, cin, H, W] -> [B, out_channels, H, W] (logits, depth, or unit normals)."""
        y = self.out(self.conv(x))
        if self.unit_length:
            y = y / y.norm(p=2, dim=1, keepdim=True).clamp_min(NORMAL_EPS)
        return y


class TaskPath(nn.Module):
    """Everything one task uses: shared network, shared attention convs, its masks and head (no copies)."""

    def __init__(self, backbone: SegNetBackbone, shared: SharedAttentionConvs, branch: TaskAttention,
                 head: DenseHead) -> None:
        super().__init__()
        self.backbone, self.shared, self.branch, self.head = backbone, shared, branch, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, in_channels, H, W] -> [B, out_channels, H, W]."""
        return self.head(self.branch(self.backbone(x), self.shared))


def check_tasks(tasks: tuple[TaskSpec, ...]) -> None:
    """Raise ValueError for an empty task list or a task the dense heads cannot produce."""
    if not tasks:
        raise ValueError("segnet_mtan needs at least one task")
    for t in tasks:
        if t.kind not in _KINDS:
            raise ValueError(f"segnet_mtan has dense heads only ({', '.join(_KINDS)}); task {t.name!r} is {t.kind}")
        if t.out_channels < 1:
            raise ValueError(f"segmentation task {t.name!r} needs num_classes >= 1, got {t.num_classes}")


class SegNetMTAN(nn.Module):
    """Multi-task SegNet with MTAN attention: ``forward(x) -> {task name: [B, out_channels, H, W]}``.

    Args:
        tasks: dense tasks (segmentation, depth, normal), one attention branch and head each.
        in_channels: image channels.
        width: channels of the first stage (64 in the paper; stages use w, 2w, 4w, 8w, 8w).
    """

    def __init__(self, tasks: tuple[TaskSpec, ...], in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        check_tasks(tasks)
        if width < 1:
            raise ValueError(f"--width must be >= 1, got {width}")
        self.backbone = SegNetBackbone(in_channels, width)
        self.shared_attention = SharedAttentionConvs(width)
        self.branches = nn.ModuleDict({t.name: TaskAttention(width) for t in tasks})
        self.heads = nn.ModuleDict({t.name: DenseHead(width, t) for t in tasks})
        self.tasks = tuple(tasks)
        init_mtan(self)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: [B, in_channels, H, W], H and W divisible by 32."""
        feats = self.backbone(x)
        return {name: self.heads[name](branch(feats, self.shared_attention)) for name, branch in self.branches.items()}

    @torch.no_grad()
    def init_output_bias(self, name: str, value: float) -> None:
        """Set the last layer's bias of output ``name`` (the loop starts depth at the data's mean)."""
        self.heads[name].out.bias.fill_(value)

    def channel_couplings(self) -> list[tuple[nn.Module, nn.Module]]:
        """Convs whose output channels are tied outside autograd (pool indices), for pruning."""
        return [(a, b) for a, b in unpool_couplings(self) if a is not b]

    def task_module(self, name: str) -> nn.Module:
        """Shared network, shared attention convs, and task ``name``'s masks and head; returns one tensor."""
        if name not in self.branches:
            raise KeyError(f"no task {name!r}; tasks are {list(self.branches)}")
        return TaskPath(self.backbone, self.shared_attention, self.branches[name], self.heads[name])


def unpool_couplings(model: SegNetMTAN) -> list[tuple[nn.Conv2d, nn.Conv2d]]:
    """Conv pairs whose output channels are tied by pool indices, one per unpooling step.

    Unpooling step ``j`` places the output channels of the first conv (the conv producing its input:
    encoder stage 4's last conv for j = 0, else decoder stage j - 1's last conv) with the indices of
    the second (encoder stage 4 - j's last conv). Pruning must remove the same channels from both.
    """
    last = [stage.last_conv() for stage in model.backbone.encoder]
    dec_last = [stage.last_conv() for stage in model.backbone.decoder]
    producers = [last[-1]] + dec_last[:-1]
    return [(producers[j], last[STAGES - 1 - j]) for j in range(STAGES)]


def init_mtan(model: nn.Module) -> None:
    """MTAN's initialisation: Xavier-normal convs with zero bias, unit BatchNorm."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build(tasks: tuple[TaskSpec, ...], in_channels: int, depth: int | None = None, width: int | None = None,
          exit_every: int | None = None) -> SegNetMTAN:
    """Registry entry: one attention branch and head per dense task.

    ``depth`` and ``exit_every`` do not apply (the SegNet depth is fixed) and are ignored.
    ``width`` defaults to 8 (the paper uses 64 at 288x384).
    """
    del depth, exit_every
    return SegNetMTAN(tasks, in_channels, width=width or 8)
