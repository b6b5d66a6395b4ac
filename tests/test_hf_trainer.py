"""noisefuse in the Hugging Face Trainer (docs/integration.md, "Hugging Face"): a tiny GPT-2 built
from a config (random weights, no download) trained by Trainer(optimizers=(opt, scheduler)) for
every optimizer and by optimizer_cls_and_kwargs; a run saved mid-way and resumed with
resume_from_checkpoint is bit-identical to the uninterrupted one; gradient accumulation with the
Trainer's max_grad_norm, and the optimizer's own max_grad_norm= under bf16; bfloat16 weights with
float32 state and stochastic rounding."""
from __future__ import annotations

import logging

import pytest
import torch

import noisefuse as nf

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
transformers.logging.set_verbosity_error()
logging.getLogger("transformers").setLevel(logging.ERROR)

OPTIMIZERS = {  # class, arguments
    "PNM": (nf.PNM, dict(lr=3.0, betas=(0.9, 0.5))),  # SGD-style: a large lr for a transformer
    "AdaPNM": (nf.AdaPNM, dict(lr=1e-2)),
    "DemonSGD": (nf.DemonSGD, dict(lr=0.3, total_steps=40)),
    "DemonAdam": (nf.DemonAdam, dict(lr=1e-2, total_steps=40, decoupled=True, weight_decay=0.01)),
}
VOCAB, LENGTH = 64, 16


class Tokens(torch.utils.data.Dataset):
    """Sequences of a repeating pattern with some noise: a language model learns it in a few steps."""

    def __init__(self, n=64):
        g = torch.Generator().manual_seed(0)
        start = torch.randint(0, VOCAB, (n, 1), generator=g)
        self.ids = (start + torch.arange(LENGTH) * 3) % VOCAB

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_gpt2(dtype=torch.float32):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=32, n_layer=2, n_head=2)
    return GPT2LMHeadModel(config).to(dtype)


def arguments(tmp_path, **kw):
    kw.setdefault("max_steps", 6)
    kw.setdefault("save_strategy", "no")
    return TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, report_to=[], use_cpu=True,
                             logging_steps=1, seed=0, data_seed=0, disable_tqdm=True, dataloader_num_workers=0, **kw)


def train(tmp_path, model=None, optimizer="AdaPNM", opt_kw=None, schedule=True, resume=None, **args):
    model = model if model is not None else tiny_gpt2()
    cls, defaults = OPTIMIZERS[optimizer]
    opt = cls(model.parameters(), seed=5, **dict(defaults, **(opt_kw or {})))
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + 0.1 * s)) if schedule else None
    trainer = Trainer(model=model, args=arguments(tmp_path, **args), train_dataset=Tokens(),
                      optimizers=(opt, scheduler))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def learns(history):
    """The last three losses' mean well under the first three's (64 tokens: ln 64 = 4.2 at random)."""
    return sum(history[-3:]) < 0.9 * sum(history[:3])


def weights(trainer):
    return [p.detach().clone() for p in trainer.model.parameters()]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_trainer_with_optimizers_trains(name, tmp_path):
    trainer = train(tmp_path, optimizer=name, max_steps=16)
    history = losses(trainer)
    assert len(history) == 16 and learns(history), history


def test_optimizer_cls_and_kwargs(tmp_path):
    model = tiny_gpt2()
    trainer = Trainer(model=model, args=arguments(tmp_path, max_steps=16), train_dataset=Tokens(),
                      optimizer_cls_and_kwargs=(nf.AdaPNM, {"lr": 1e-2, "noise": nf.noise.Isotropic(1e-4), "seed": 2}))
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer,
                      nf.AdaPNM)
    assert learns(losses(trainer))


@pytest.mark.parametrize("name,opt_kw", [("AdaPNM", {"noise": nf.noise.Isotropic(1e-3)}), ("DemonAdam", {})])
def test_resume_from_checkpoint_is_bit_identical(name, opt_kw, tmp_path):
    whole = train(tmp_path / "whole", optimizer=name, opt_kw=opt_kw, max_steps=6)
    train(tmp_path / "run", optimizer=name, opt_kw=opt_kw, max_steps=6, save_strategy="steps", save_steps=3)
    resumed = train(tmp_path / "run", optimizer=name, opt_kw=opt_kw, max_steps=6,
                    resume=str(tmp_path / "run" / "checkpoint-3"))
    assert all(torch.equal(a, b) for a, b in zip(weights(whole), weights(resumed)))


def test_gradient_accumulation_with_the_trainers_max_grad_norm(tmp_path):
    """The Trainer clips (float32: no scaler) before our step; the optimizer's own max_grad_norm=
    gives the same training (DemonSGD, linear in the gradient: Adam-style steps amplify the last-bit
    difference between g * c and g / (1 / c) on elements whose gradient is near zero)."""
    theirs = train(tmp_path / "a", optimizer="DemonSGD", gradient_accumulation_steps=2, max_grad_norm=0.5)
    ours = train(tmp_path / "b", optimizer="DemonSGD", opt_kw={"max_grad_norm": 0.5}, gradient_accumulation_steps=2,
                 max_grad_norm=0.0)
    unclipped = train(tmp_path / "c", optimizer="DemonSGD", gradient_accumulation_steps=2, max_grad_norm=0.0)
    for a, b in zip(weights(theirs), weights(ours)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert max((a - c).abs().max() for a, c in zip(weights(ours), weights(unclipped))) > 1e-4


def test_bf16_mixed_precision_with_the_optimizers_max_grad_norm(tmp_path):
    """bf16=True (autocast, no scaler): the optimizer's clip is the Trainer's. One step of SGD-style
    DemonSGD, whose update is linear in the clipped gradient: later steps would compare bfloat16
    forwards of weights an ulp apart (the two clips round differently: g * c against g / (1 / c)),
    which bfloat16's 8-bit mantissa turns into visible differences."""
    theirs = train(tmp_path / "a", optimizer="DemonSGD", bf16=True, max_grad_norm=0.5, max_steps=1)
    ours = train(tmp_path / "b", optimizer="DemonSGD", opt_kw={"max_grad_norm": 0.5}, bf16=True, max_grad_norm=0.0,
                 max_steps=1)
    unclipped = train(tmp_path / "c", optimizer="DemonSGD", bf16=True, max_grad_norm=0.0, max_steps=1)
    for a, b in zip(weights(theirs), weights(ours)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert max((a - c).abs().max() for a, c in zip(weights(ours), weights(unclipped))) > 1e-3


def test_bfloat16_weights_with_float32_state_and_stochastic_rounding(tmp_path):
    model = tiny_gpt2(torch.bfloat16)
    trainer = train(tmp_path, model=model, optimizer="AdaPNM", max_steps=16,
                    opt_kw={"state_dtype": torch.float32, "stochastic_rounding": True})
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    assert all(p.dtype == torch.bfloat16 for p in trainer.model.parameters())
    assert all(s["exp_avg"].dtype == torch.float32 for s in opt.state.values())
    assert learns(losses(trainer))
