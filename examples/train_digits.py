"""Train a small CNN on scikit-learn's digits (8x8 images, shipped with scikit-learn: no download)
with torch's SGD and AdamW and with every noisefuse optimizer, then print a table of test accuracy
and step time and save a PNG of the learning curves.

    python examples/train_digits.py                 # all configurations, 30 epochs
    python examples/train_digits.py --epochs 5 --configs PNM AdaPNM
    python examples/train_digits.py --state-dtype bfloat16   # noisefuse's state in bfloat16
    python examples/train_digits.py --state-dtype 8bit       # 8-bit blockwise state
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import noisefuse as nf

BATCH = 64
LARGE_BATCH = 256  # the noisy configuration makes this batch behave like one of NOISE_AS_BATCH
NOISE_AS_BATCH = 32


def load_data(seed=0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return x_train, y_train, x_test, y_test


def make_model():
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )


STATE_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "8bit": nf.state.Blockwise8bit(),
                "8bit-linear": nf.state.Blockwise8bit(code_book="linear")}


def configurations(total_steps, state_dtype=None):
    """name -> (batch size, optimizer factory). Learning rates are each optimizer's usual ones;
    ``state_dtype`` is given to the noisefuse optimizers (None: their params' dtype)."""
    fisher = nf.noise.DiagFisher(small_batch=NOISE_AS_BATCH)
    state = {} if state_dtype is None else {"state_dtype": state_dtype}
    return {
        "SGD+momentum": (BATCH, lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)),
        "AdamW": (BATCH, lambda ps: torch.optim.AdamW(ps, lr=2e-3, weight_decay=0.01)),
        # PNM averages gradients with weights (1 - beta^2): its step is about 1/(1 - beta) = 10x
        # smaller than that of torch's SGD (no dampening) at the same lr, hence the larger lr.
        "PNM": (BATCH, lambda ps: nf.PNM(ps, lr=0.5, betas=(0.9, 1.0), **state)),
        "AdaPNM": (BATCH, lambda ps: nf.AdaPNM(ps, lr=2e-3, weight_decay=0.01, **state)),
        "DemonSGD": (BATCH, lambda ps: nf.DemonSGD(ps, lr=0.05, momentum=0.9, total_steps=total_steps, **state)),
        "DemonAdam": (BATCH, lambda ps: nf.DemonAdam(ps, lr=2e-3, total_steps=total_steps, decoupled=True,
                                                      weight_decay=0.01, **state)),
        f"AdaPNM B={LARGE_BATCH}": (LARGE_BATCH, lambda ps: nf.AdaPNM(ps, lr=4e-3, weight_decay=0.01, **state)),
        f"AdaPNM B={LARGE_BATCH}+Fisher": (LARGE_BATCH, lambda ps: nf.AdaPNM(ps, lr=4e-3, weight_decay=0.01,
                                                                            noise=fisher, **state)),
    }


def needs_grad_sample(opt):
    return any(group.get("noise") is not None for group in opt.param_groups)


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def train(name, batch, make_opt, data, epochs, max_steps, seed):
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = make_model()
    opt = make_opt(model.parameters())
    curve, step_times, steps = [], [], 0
    for _ in range(epochs):
        order = torch.randperm(len(x_train))
        for start in range(0, len(order) - batch + 1, batch):
            idx = order[start:start + batch]
            opt.zero_grad()
            if needs_grad_sample(opt):
                # Diagonal-Fisher noise reads per-sample gradients (p.grad_sample), not p.grad.
                nf.per_sample_grads(model, nn.functional.cross_entropy, x_train[idx], y_train[idx])
            else:
                nn.functional.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
            begin = time.perf_counter()
            opt.step()
            step_times.append(time.perf_counter() - begin)
            steps += 1
            if max_steps and steps >= max_steps:
                break
        curve.append(accuracy(model, x_test, y_test))
        if max_steps and steps >= max_steps:
            break
    return {"name": name, "curve": curve, "test_accuracy": curve[-1],
            "step_ms": 1e3 * statistics.median(step_times), "steps": steps}


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        ax.plot(range(1, len(r["curve"]) + 1), r["curve"], label=r["name"], marker="o", markersize=2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.set_title("Small CNN on scikit-learn digits")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--max-steps", type=int, default=0, help="stop each run after this many steps (0: no limit)")
    parser.add_argument("--configs", nargs="*", help="names of the configurations to run (default: all)")
    parser.add_argument("--out", type=Path, default=Path("digits-out"), help="folder for the PNG")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--state-dtype", choices=tuple(STATE_DTYPES), default="float32",
                        help="noisefuse optimizers' state (bfloat16: stochastically rounded; 8bit: blockwise, "
                             "dynamic or linear code book)")
    args = parser.parse_args(argv)

    from tqdm import tqdm

    data = load_data(args.seed)
    steps_per_epoch = len(data[0]) // BATCH
    state_dtype = STATE_DTYPES[args.state_dtype]
    configs = configurations(total_steps=args.epochs * steps_per_epoch, state_dtype=state_dtype)
    names = args.configs or list(configs)
    unknown = sorted(set(names) - set(configs))
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; choose from {list(configs)}")
    results = []
    for name in tqdm(names, desc="training", unit="optimizer"):
        batch, make_opt = configs[name]
        results.append(train(name, batch, make_opt, data, args.epochs, args.max_steps, args.seed))

    print(f"\n{'optimizer':<24} {'test accuracy':>13} {'step (ms)':>10} {'steps':>6}")
    for r in results:
        print(f"{r['name']:<24} {r['test_accuracy']:>13.4f} {r['step_ms']:>10.3f} {r['steps']:>6}")
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / "digits_curves.png")
    print(f"learning curves: {args.out / 'digits_curves.png'}")
    return results


if __name__ == "__main__":
    main()
