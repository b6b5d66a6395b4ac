"""noisefuse in Lightning (docs/integration.md, "Lightning"): configure_optimizers with a scheduler
for every optimizer, 32-true and bf16-mixed; a checkpoint resumed with ckpt_path= is bit-identical
to the uninterrupted run; gradient clipping under mixed precision through the optimizer's own
max_grad_norm= (Lightning refuses gradient_clip_val for optimizers that unscale inside their step);
Demon's total_steps on resume is the checkpoint's, and how to change it deliberately."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import noisefuse as nf
from noisefuse.demon import as_demon

L = pytest.importorskip("lightning")
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

OPTIMIZERS = {
    "PNM": lambda ps, **kw: nf.PNM(ps, lr=0.05, **kw),
    "AdaPNM": lambda ps, **kw: nf.AdaPNM(ps, lr=1e-2, **kw),
    "DemonSGD": lambda ps, **kw: nf.DemonSGD(ps, lr=0.05, total_steps=kw.pop("total_steps", 40), **kw),
    "DemonAdam": lambda ps, **kw: nf.DemonAdam(ps, lr=1e-2, total_steps=kw.pop("total_steps", 40), **kw),
}


class Regression(L.LightningModule):
    def __init__(self, optimizer="AdaPNM", new_total_steps=None, **opt_kw):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.optimizer, self.opt_kw, self.new_total_steps = optimizer, opt_kw, new_total_steps
        self.losses = []

    def training_step(self, batch, _):
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        opt = OPTIMIZERS[self.optimizer](self.parameters(), seed=3, **self.opt_kw)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.7)}

    def on_load_checkpoint(self, checkpoint):
        # The deliberate way to resume with another Demon schedule: edit the saved param groups,
        # which load_state_dict would otherwise restore over configure_optimizers' values.
        if self.new_total_steps is not None:
            for group in checkpoint["optimizer_states"][0]["param_groups"]:
                group["demon"] = nf.Demon(self.new_total_steps).as_dict()


def data(n=32, batch=8):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True).sin()), batch_size=batch)


def trainer(tmp_path=None, **kw):
    kw.setdefault("max_epochs", 3)
    return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=tmp_path is not None, default_root_dir=tmp_path, deterministic=True, **kw)


def params(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_configure_optimizers_with_a_scheduler_trains(name, precision):
    model = Regression(name)
    t = trainer(precision=precision, max_epochs=6)
    t.fit(model, data())
    assert t.global_step == 24
    assert sum(model.losses[-4:]) < 0.7 * sum(model.losses[:4])
    assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(t.optimizers[0].defaults["lr"] * 0.7 ** 2)  # stepped per epoch


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("name,kw", [("AdaPNM", {"noise": nf.noise.Isotropic(1e-3)}), ("DemonAdam", {})])
def test_resume_from_a_checkpoint_is_bit_identical(name, kw, precision, tmp_path):
    whole = Regression(name, **kw)
    trainer(precision=precision, max_epochs=4).fit(whole, data())

    first = Regression(name, **kw)
    t = trainer(tmp_path, precision=precision, max_epochs=2)
    t.fit(first, data())
    ckpt = tmp_path / "mid.ckpt"
    t.save_checkpoint(ckpt)
    resumed = Regression(name, **kw)
    trainer(precision=precision, max_epochs=4).fit(resumed, data(), ckpt_path=str(ckpt))
    assert all(torch.equal(a, b) for a, b in zip(params(whole), params(resumed)))


def test_gradient_clip_val_is_refused_under_mixed_precision_so_clip_in_the_optimizer():
    """Lightning refuses gradient_clip_val for an optimizer that unscales inside its step (as for
    torch's fused AdamW); max_grad_norm= clips inside the step instead, on the unscaled gradients."""
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping because it performs unscaling"):
        trainer(precision="16-mixed", gradient_clip_val=0.1, max_epochs=1).fit(Regression(), data())

    lightning_clip = Regression("DemonAdam")
    trainer(precision="32-true", gradient_clip_val=0.1).fit(lightning_clip, data())
    ours = Regression("DemonAdam", max_grad_norm=0.1)
    trainer(precision="32-true").fit(ours, data())
    for a, b in zip(params(lightning_clip), params(ours)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)

    # Under 16-mixed the GradScaler's scale reaches the step, which clips the unscaled gradients:
    # the same training as in float32, to float16 autocast's precision.
    mixed = Regression("DemonAdam", max_grad_norm=0.1)
    trainer(precision="16-mixed").fit(mixed, data())
    unclipped = Regression("DemonAdam")
    trainer(precision="16-mixed").fit(unclipped, data())
    for a, b, c in zip(params(mixed), params(ours), params(unclipped)):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-2)
    assert max((a - c).abs().max() for a, c in zip(params(mixed), params(unclipped))) > 1e-3


def test_demon_total_steps_on_resume(tmp_path):
    """Resuming with a longer schedule keeps the checkpoint's total_steps (load_state_dict restores
    the param groups); on_load_checkpoint changes it deliberately."""
    t = trainer(tmp_path, max_epochs=1)
    t.fit(Regression("DemonSGD", total_steps=8), data())
    ckpt = tmp_path / "short.ckpt"
    t.save_checkpoint(ckpt)

    kept = Regression("DemonSGD", total_steps=80)
    t2 = trainer(max_epochs=2)
    t2.fit(kept, data(), ckpt_path=str(ckpt))
    assert as_demon(t2.optimizers[0].param_groups[0]["demon"]).total_steps == 8

    changed = Regression("DemonSGD", total_steps=80, new_total_steps=80)
    t3 = trainer(max_epochs=2)
    t3.fit(changed, data(), ckpt_path=str(ckpt))
    assert as_demon(t3.optimizers[0].param_groups[0]["demon"]).total_steps == 80
    assert not all(torch.equal(a, b) for a, b in zip(params(kept), params(changed)))
