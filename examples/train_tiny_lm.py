"""Train a two-layer GPT-2 (transformers' GPT2LMHeadModel built from a config, random weights) as a
byte-level language model on text that ships with Python (the sources of a few standard-library
modules: no download), with PNM, AdaPNM and DemonAdam and float32, bfloat16 or 8-bit blockwise
optimizer state (dynamic or linear code book); print
the final training and held-out loss of each and save the loss curves.

    python examples/train_tiny_lm.py                             # every optimizer x state dtype
    python examples/train_tiny_lm.py --steps 200 --optimizers AdaPNM --states float32
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
from pathlib import Path

import torch

import noisefuse as nf

# Sources of modules every CPython has, concatenated: about 400 KB of English and Python.
CORPUS_MODULES = ("argparse", "textwrap", "json.decoder", "json.encoder", "fractions", "statistics", "calendar")
CONTEXT = 64
BATCH = 16
HELD_OUT = 16384  # bytes of the held-out tail the test loss is measured on
STATES = {"float32": None, "bfloat16": torch.bfloat16, "8bit": nf.state.Blockwise8bit(),
          "8bit-linear": nf.state.Blockwise8bit(code_book="linear")}


def corpus() -> torch.Tensor:
    import importlib

    text = "\n".join(inspect.getsource(importlib.import_module(m)) for m in CORPUS_MODULES)
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def make_model(seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=256, n_positions=CONTEXT, n_embd=96, n_layer=2, n_head=4, bos_token_id=0,
                        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def optimizers(total_steps):
    """name -> factory(params, state_dtype). Learning rates are the usual ones for a small transformer."""
    return {
        "PNM": lambda ps, sd: nf.PNM(ps, lr=0.5, betas=(0.9, 1.0), state_dtype=sd),
        "AdaPNM": lambda ps, sd: nf.AdaPNM(ps, lr=2e-3, weight_decay=0.01, state_dtype=sd),
        "DemonAdam": lambda ps, sd: nf.DemonAdam(ps, lr=2e-3, total_steps=total_steps, weight_decay=0.01,
                                                 state_dtype=sd),
    }


def batches(data: torch.Tensor, steps: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - CONTEXT - 1, (BATCH,), generator=gen)
        yield torch.stack([data[s:s + CONTEXT] for s in starts])


def held_out_loss(model, data: torch.Tensor) -> float:
    """Mean next-byte loss (nats) over the held-out bytes, in non-overlapping windows."""
    windows = data[: (len(data) // CONTEXT) * CONTEXT].view(-1, CONTEXT)
    with torch.no_grad():
        losses = [model(chunk, labels=chunk).loss.item() for chunk in windows.split(64)]
    return sum(losses) / len(losses)


def train(name, make_opt, state, train_data, test_data, steps, seed):
    model = make_model(seed)
    opt = make_opt(model.parameters(), STATES[state])
    curve = []
    for step, x in enumerate(batches(train_data, steps, seed), 1):
        opt.zero_grad()
        loss = model(x, labels=x).loss
        loss.backward()
        opt.step()
        curve.append(loss.item())
    tail = curve[-max(1, steps // 10):]  # the last tenth: a smoothed final training loss
    return {"optimizer": name, "state": state,
            "train_loss": sum(tail) / len(tail), "test_loss": held_out_loss(model, test_data), "curve": curve}


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        window = 20
        smooth = [sum(r["curve"][max(0, i - window):i + 1]) / len(r["curve"][max(0, i - window):i + 1])
                  for i in range(len(r["curve"]))]
        ax.plot(smooth, label=f"{r['optimizer']} {r['state']} state", linestyle="-" if r["state"] == "float32" else "--")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/byte, 20-step mean)")
    ax.set_title(f"2-layer GPT-2 on CPython sources ({BATCH}x{CONTEXT} bytes per step)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--optimizers", nargs="*", default=None, help="default: PNM AdaPNM DemonAdam")
    parser.add_argument("--states", nargs="*", default=list(STATES), choices=list(STATES))
    parser.add_argument("--out", type=Path, default=Path("tiny-lm-out"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    data = corpus()
    train_data, test_data = data[:-HELD_OUT], data[-HELD_OUT:]
    factories = optimizers(args.steps)
    names = args.optimizers or list(factories)
    unknown = sorted(set(names) - set(factories))
    if unknown:
        parser.error(f"unknown optimizer(s) {unknown}; choose from {list(factories)}")
    results = [train(name, factories[name], state, train_data, test_data, args.steps, args.seed)
               for name in names for state in args.states]

    print(f"\n{len(data) / 1e3:.0f} KB of text, {args.steps} steps; uniform guess: {math.log(256):.3f} nats/byte")
    print(f"{'optimizer':<10} {'state':<11} {'train loss':>10} {'test loss':>10}")
    for r in results:
        print(f"{r['optimizer']:<10} {r['state']:<11} {r['train_loss']:>10.4f} {r['test_loss']:>10.4f}")
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / "tiny_lm_curves.png")
    (args.out / "tiny_lm.json").write_text(json.dumps(
        [{k: v for k, v in r.items() if k != "curve"} for r in results], indent=1))
    print(f"loss curves: {args.out / 'tiny_lm_curves.png'}")
    return results


if __name__ == "__main__":
    main()
