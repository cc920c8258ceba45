"""Factorised Bernoulli distributions: log-probabilities, draws and chains.

Used by the estimators and the models alike. Every sample is drawn from a
uniform by `b = 1[u < sigmoid(phi)]`, and the uniforms are kept for the
antithetic estimators. Samples are float32 tensors of exact 0/1 values.
Shapes: `[N, B, D_l]` for `N` chains of `B` examples with `D_l` units in
layer `l`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

LogitsLayer = Callable[[Tensor], Tensor]
"""Maps samples of one layer `[K, B, D_l]` to the logits of the next `[K, B, D_{l+1}]`."""


def bernoulli_log_prob(samples: Tensor, logits: Tensor) -> Tensor:
    """log q(b) = sum_d (b_d phi_d - softplus(phi_d)): samples and logits broadcast to `[..., D]` -> `[...]`.

    Logits of the full shape (a decoder's output) go through torch's fused
    binary cross-entropy; smaller logits (`[B, D]` against samples `[K, B, D]`,
    a prior's `[D]`, or such logits expanded to `[K, B, D]`) get their softplus
    term on their own shape: one pass, not K.
    """
    logits = smallest_view(logits)  # e.g. first-layer logits expanded to K samples: their softplus once
    if logits.dim() >= samples.dim() and logits.shape[logits.dim() - samples.dim() :] == samples.shape:
        target = samples.expand_as(logits).to(logits.dtype)
        return -nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)
    return (samples * logits).sum(-1) - nn.functional.softplus(logits).sum(-1)


def uniform(shape: Sequence[int], device: torch.device | str = "cpu", bits: int = 24,
            generator: torch.Generator | None = None) -> Tensor:
    """Float32 uniforms of `shape` on `device`, from torch's random stream of that device.

    bits=24: `k / 2^24`, `k` uniform on `0 .. 2^24 - 1` (torch.rand's values).
    bits=16: `(k + 1/2) / 2^16`, `k` uniform on `0 .. 2^16 - 1` (never 0 or 1).

    On a CPU the draws are taken as 64-bit words and split (two or four values
    per word): torch's CPU generator costs about the same per call whatever the
    width, so this is 1.5-3x faster than `torch.rand` for the same values'
    distribution. Other devices use `torch.rand` (24 bits). Compiled code draws
    the same words without a graph break (with inductor's `fallback_random`,
    the very same values as eager).
    """
    if bits not in (16, 24):
        raise ValueError(f"bits must be 16 or 24, got {bits}")
    if torch.device(device).type != "cpu":
        return torch.rand(tuple(shape), device=device, generator=generator)
    count = math.prod(shape)
    per_word = 2 if bits == 24 else 4
    # 64 random bits per word (randint over the whole int64 range: one value of 2^64 missing).
    words = torch.randint(-(2**63), 2**63 - 1, (-(-count // per_word),), generator=generator)
    if bits == 24:
        return torch.mul(words.view(torch.int32)[:count].view(tuple(shape)) & 0xFFFFFF, 2.0**-24)
    # int16 k_s = k - 2^15: (k + 1/2) / 2^16 = k_s / 2^16 + 1/2 + 1/2^17, exact in float32.
    return torch.mul(words.view(torch.int16)[:count].view(tuple(shape)), 2.0**-16).add_(0.5 + 2.0**-17)


def smallest_view(tensor: Tensor) -> Tensor:
    """`tensor` without the expansion of its first dimension (stride 0), kept as size 1: the same
    values under broadcasting, for elementwise work done once instead of K times (first-layer
    logits `[B, D]` expanded to `[K, B, D]` -> `[1, B, D]`)."""
    return tensor[:1] if tensor.dim() and tensor.stride(0) == 0 else tensor


def draw_bernoulli(logits: Tensor, tie_halves: bool = False) -> tuple[Tensor, Tensor]:
    """Samples `1[u < sigmoid(logits)]` and their uniforms `u` (`uniform`, 24 bits): float32 tensors of
    `logits`' shape and device.

    tie_halves: the first and second half of dim 0 share their uniforms
        (common random numbers for the two branches of antithetic pairs).
    """
    shape = logits.shape
    if tie_halves:
        uniforms = uniform((shape[0] // 2, *shape[1:]), logits.device).repeat(2, *([1] * (len(shape) - 1)))
    else:
        uniforms = uniform(shape, logits.device)
    samples = (uniforms < torch.sigmoid(smallest_view(logits.detach()).float())).float()
    return samples, uniforms


@dataclass
class ChainSample:
    """Samples, logits and uniforms of a (possibly partial) chain, one entry per layer.

    `logits` keep their autograd graph (the layers' parameters learn through
    them); `samples` and `uniforms` are float32 and detached.
    """

    logits: list[Tensor]
    samples: list[Tensor] = field(default_factory=list)
    uniforms: list[Tensor] = field(default_factory=list)

    def detached_logits(self) -> list[Tensor]:
        """Float32 logits without graph, as `f` receives them."""
        return [phi.detach().float() for phi in self.logits]


def complete_chain(chain: ChainSample, layers: Sequence[LogitsLayer], tie_halves: bool = False) -> ChainSample:
    """Sample every layer that `chain` lacks, down to the last of `layers`.

    chain: logits for layers 1..m and samples for 1..m or 1..m-1.
    layers: `layers[l]` maps samples of layer l+1 to logits of layer l+2.
    Returns a new chain with `len(layers) + 1` layers.
    """
    logits, samples, uniforms = list(chain.logits), list(chain.samples), list(chain.uniforms)
    while True:
        if len(samples) < len(logits):
            b, u = draw_bernoulli(logits[-1], tie_halves)
            samples.append(b)
            uniforms.append(u)
        if len(samples) == len(layers) + 1:
            return ChainSample(logits, samples, uniforms)
        layer_index = len(samples) - 1
        phi = layers[layer_index](samples[-1])
        check_layer_logits(phi, samples[-1], layer_index + 2)
        logits.append(phi)


def check_layer_logits(phi, previous: Tensor, layer_number: int) -> None:
    """Raise ValueError unless a layer map returned logits `[N, B, D]` for samples `previous` `[N, B, D_prev]`."""
    if not isinstance(phi, Tensor) or phi.dim() != 3 or phi.shape[:2] != previous.shape[:2]:
        got = list(phi.shape) if isinstance(phi, Tensor) else type(phi).__name__
        raise ValueError(
            f"layer {layer_number} logits must have shape [N, B, D] = "
            f"[{previous.shape[0]}, {previous.shape[1]}, D], got {got}"
        )


def sample_chain(first_logits: Tensor, layers: Sequence[LogitsLayer], n_samples: int) -> ChainSample:
    """`n_samples` independent chains from first-layer logits `[B, D_1]`: samples `[n_samples, B, D_l]` per layer."""
    return complete_chain(ChainSample(logits=[first_logits.expand(n_samples, *first_logits.shape)]), layers)


def local_branches(base: ChainSample, layers: Sequence[LogitsLayer], draw: Callable[[int], Tensor]) -> ChainSample:
    """The rows of the per-layer ("local") chain estimators (ARMS here; double CV and RODEO as in
    the RODEO authors' code), stacked for one call of `f`.

    base: one chain `[1, B, D_l]`: logits of every layer, samples of every layer but possibly the last.
    draw: layer index `l` -> that layer's `K` samples `[K, B, D_l]`, drawn from `base`'s layer-l
        logits; called for l = 0, 1, ... in turn, each call before that layer's completion is drawn.
    For each layer `l`, `K` rows keep `base`'s samples above `l`, take `draw(l)` at `l`, and complete
    the layers below with independent draws (each row from its own layer-l sample). Returns the
    `L * K` rows layer-major (rows `l K .. (l + 1) K - 1` are layer l's), detached float32 samples
    and logits `[L K, B, D_m]`; the first layer's logits, the same for every row, are `base`'s
    expanded (no copy). No autograd graph.
    """
    n_layers = len(layers) + 1
    detached = base.detached_logits()
    blocks = []
    with torch.no_grad():
        for layer in range(n_layers):
            drawn = draw(layer)
            k = drawn.shape[0]
            start = ChainSample(
                logits=[phi.expand(k, -1, -1) for phi in detached[: layer + 1]],
                samples=[b.expand(k, -1, -1) for b in base.samples[:layer]] + [drawn],
            )
            blocks.append(complete_chain(start, layers))
    samples = [torch.cat([block.samples[m] for block in blocks]) for m in range(n_layers)]
    logits = [detached[0].expand(samples[0].shape[0], -1, -1)]
    logits += [torch.cat([block.logits[m] for block in blocks]).float() for m in range(1, n_layers)]
    return ChainSample(logits=logits, samples=samples)
