"""Parameter sets to benchmark: the shapes of real architectures, built here from their published
hyperparameters (no download, no model code), plus synthetic sets for sweeps.

An optimizer step's cost depends only on the parameter shapes: total elements set the memory
traffic, the number of tensors sets per-tensor overhead (launches, Python work, chunking). So a
preset is a list of shapes and nothing else.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Preset:
    name: str
    shapes: tuple[tuple[int, ...], ...]
    description: str

    @property
    def n_params(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @property
    def n_tensors(self) -> int:
        return len(self.shapes)


def gpt2_shapes(n_layer: int, d_model: int, vocab: int = 50257, n_ctx: int = 1024):
    """GPT-2 (Radford et al. 2019) parameter shapes in Hugging Face order; the LM head is tied to
    the token embedding, so it adds no tensor."""
    d, shapes = d_model, [(vocab, d_model), (n_ctx, d_model)]
    for _ in range(n_layer):
        shapes += [(d,), (d,),                      # ln_1
                   (d, 3 * d), (3 * d,),            # attn.c_attn
                   (d, d), (d,),                    # attn.c_proj
                   (d,), (d,),                      # ln_2
                   (d, 4 * d), (4 * d,),            # mlp.c_fc
                   (4 * d, d), (d,)]                # mlp.c_proj
    return tuple(shapes + [(d,), (d,)])             # ln_f


def resnet50_shapes(num_classes: int = 1000):
    """ResNet-50 (He et al. 2016) parameter shapes in torchvision order: bottleneck blocks
    [3, 4, 6, 3], expansion 4, batch-norm weight and bias per conv, no conv biases."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    inplanes = 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for block in range(blocks):
            shapes += [(planes, inplanes, 1, 1), (planes,), (planes,),
                       (planes, planes, 3, 3), (planes,), (planes,),
                       (planes * 4, planes, 1, 1), (planes * 4,), (planes * 4,)]
            if block == 0:  # projection shortcut: the first block changes the channel count
                shapes += [(planes * 4, inplanes, 1, 1), (planes * 4,), (planes * 4,)]
            inplanes = planes * 4
    return tuple(shapes + [(num_classes, 2048), (num_classes,)])


# Sizes of the vectors that dominate the tensor count of real models (norm scales, biases).
_SMALL_SIZES = (64, 128, 256, 512, 768, 1024, 2048)


def many_small_shapes(n_tensors: int = 4096):
    """Thousands of tiny tensors: the norm scales and biases of a deep, narrow network, where the
    per-tensor cost of a step (launches, host work) dominates its memory traffic."""
    return tuple((_SMALL_SIZES[i % len(_SMALL_SIZES)],) for i in range(n_tensors))


def synthetic_shapes(n_params: int, n_tensors: int):
    """``n_tensors`` 1-d tensors holding ``n_params`` elements in all, as equal as possible."""
    if n_tensors < 1 or n_params < n_tensors:
        raise ValueError(f"need 1 <= tensors <= params, got params={n_params}, tensors={n_tensors}")
    base, extra = divmod(n_params, n_tensors)
    return tuple((base + (1 if i < extra else 0),) for i in range(n_tensors))


PRESETS = {
    "gpt2-small": Preset("gpt2-small", gpt2_shapes(12, 768), "GPT-2 small: 12 layers, d=768, tied LM head"),
    "gpt2-medium": Preset("gpt2-medium", gpt2_shapes(24, 1024), "GPT-2 medium: 24 layers, d=1024, tied LM head"),
    "resnet50": Preset("resnet50", resnet50_shapes(), "ResNet-50 (torchvision layout), 1000 classes"),
    "many-small": Preset("many-small", many_small_shapes(), "4096 norm/bias-sized vectors of 64-2048 elements"),
}

# What runs when no --preset is given. On a 2-core CPU a GPT-2 step moves ~5 GB and the whole
# preset takes minutes across ~20 implementations, so the CPU default is the mid-size model and the
# overhead-bound case (``--preset gpt2-small`` runs it anyway); GPUs get the large models too.
DEFAULT_PRESETS = {
    "cpu": ("resnet50", "many-small"),
    "cuda": ("gpt2-small", "gpt2-medium", "resnet50", "many-small"),
}


def synthetic(n_params: int, n_tensors: int) -> Preset:
    return Preset(f"synthetic-{n_params}x{n_tensors}", synthetic_shapes(n_params, n_tensors),
                  f"{n_tensors} equal 1-d tensors, {n_params} elements in all")


def get(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})") from None


def make_tensors(preset: Preset, dtype: torch.dtype, device, seed: int = 0):
    """Parameters (leaf tensors that require grad, each its own allocation as in a real model)
    with their ``.grad`` set; values are small and random so no optimizer under- or overflows
    over a few hundred benchmark steps."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    params = []
    for shape in preset.shapes:
        p = torch.empty(shape, dtype=dtype, device=device).normal_(0.0, 0.02, generator=gen)
        p.requires_grad_(True)
        p.grad = torch.empty_like(p).normal_(0.0, 1e-3, generator=gen)
        params.append(p)
    return params
