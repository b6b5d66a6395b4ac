"""Issue #20: every step and every checkpoint is checked whole before the first write. A bad value in
a later param group, a foreign or damaged checkpoint, a misspelt group key: each raises an error
naming it, and leaves every param and every state entry as it was."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

import noisefuse as nf
from cases import CONFIGS, make_grads


def two_groups(config="adapnm", backend="reference", steps=2, **kw):
    a, b = (torch.randn(n, dtype=torch.float64).float().requires_grad_() for n in (4, 3))
    opt = CONFIGS[config]([{"params": [a]}, {"params": [b]}], backend=backend, **kw)
    for step in range(steps):
        set_grads([a, b], step)
        opt.step()
    set_grads([a, b], steps)
    return opt, [a, b]


def set_grads(params, step):
    for p, g in zip(params, make_grads(params, step)):
        p.grad = g


def snapshot(opt, params):
    return ([p.detach().clone() for p in params],
            [{k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()} for p in params],
            copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]))


def assert_unchanged(opt, params, before):
    params_before, states_before, groups_before = before
    for p, b in zip(params, params_before):
        assert torch.equal(p.detach(), b)
    for p, saved in zip(params, states_before):
        assert opt.state[p].keys() == saved.keys()
        for key, value in saved.items():
            assert torch.equal(opt.state[p][key], value) if torch.is_tensor(value) else opt.state[p][key] == value
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups_before


# ----- finding 2: a bad value in group 1, from a checkpoint or set by hand ------------------------------
def _bad_betas(sd):
    sd["param_groups"][1]["betas"] = (0.9, 0.999)


def _no_lr(sd):
    del sd["param_groups"][1]["lr"]


def _demon_zero_steps(sd):
    sd["param_groups"][1]["demon"] = {"total_steps": 0}


def _nan_step(sd):
    sd["state"][1]["step"] = torch.tensor(float("nan"), dtype=torch.float64)


def _negative_step(sd):
    sd["state"][1]["step"] = torch.tensor(-3.0, dtype=torch.float64)


def _fractional_step(sd):
    sd["state"][1]["step"] = 2.5


def _no_step(sd):
    del sd["state"][1]["step"]


BAD_CHECKPOINTS = {
    _bad_betas: r"param group 1: Invalid betas",
    _no_lr: r"param group 1 has no 'lr'",
    _demon_zero_steps: r"param group 1: Demon total_steps must be a positive int",
    _nan_step: r"state 'step' of param 1 \(param group 1\) is nan",
    _negative_step: r"state 'step' of param 1 \(param group 1\) is -3.0",
    _fractional_step: r"state 'step' of param 1 \(param group 1\) is 2.5",
    _no_step: r"state of param 1 \(param group 1\) has no 'step'",
}


@pytest.mark.parametrize("damage", BAD_CHECKPOINTS, ids=lambda f: f.__name__)
def test_damaged_checkpoint_refused_whole(damage):
    opt, params = two_groups()
    sd = copy.deepcopy(opt.state_dict())
    damage(sd)
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match=BAD_CHECKPOINTS[damage]):
        opt.load_state_dict(sd)
    assert_unchanged(opt, params, before)
    opt.step()  # and the optimizer steps on as it was


@pytest.mark.parametrize("backend", ["reference", "foreach", "auto"])
@pytest.mark.parametrize("key, value, match", [
    ("betas", (0.9, 0.999), r"param group 1: Invalid betas"),
    ("lr", None, r"param group 1 has no 'lr'"),
    ("lr", float("nan"), r"param group 1: Invalid lr"),
    ("demon", {"total_steps": 0}, r"param group 1: Demon total_steps"),
    ("demon", {"total_stesp": 5}, r"param group 1: .*total_stesp"),
    ("eps", -1.0, r"param group 1: Invalid eps"),
])
def test_bad_value_set_on_a_later_group_raises_before_any_write(backend, key, value, match):
    opt, params = two_groups(backend=backend)
    if value is None:
        del opt.param_groups[1][key]
    else:
        opt.param_groups[1][key] = value
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match=match):
        opt.step()
    assert_unchanged(opt, params, before)


# ----- finding 3: another optimizer's checkpoint -------------------------------------------------------
def _stepped(opt, params):
    for step in range(2):
        set_grads(params, step)
        opt.step()
    return opt.state_dict()


FOREIGN = [
    ("AdaPNM into PNM", lambda ps: nf.AdaPNM(ps), lambda ps: nf.PNM(ps, lr=0.1), "Invalid betas"),
    ("PNM into AdaPNM", lambda ps: nf.PNM(ps, lr=0.1), lambda ps: nf.AdaPNM(ps), "Invalid betas"),
    ("Adam into AdaPNM", lambda ps: torch.optim.Adam(ps), lambda ps: nf.AdaPNM(ps), "Invalid betas"),
    ("AdamW into DemonAdam", lambda ps: torch.optim.AdamW(ps),
     lambda ps: nf.DemonAdam(ps, total_steps=10), "has no 'decoupled'|demon must be set"),
    ("SGD into DemonSGD", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
     lambda ps: nf.DemonSGD(ps, lr=0.1, total_steps=10), "has no 'decoupled'|demon must be set"),
    ("DemonSGD into PNM", lambda ps: nf.DemonSGD(ps, lr=0.1, total_steps=10), lambda ps: nf.PNM(ps, lr=0.1),
     "has no 'betas'"),
]


@pytest.mark.parametrize("name, saver, loader, match", FOREIGN, ids=[f[0] for f in FOREIGN])
def test_checkpoint_of_another_optimizer_refused(name, saver, loader, match):
    params = [torch.randn(5, dtype=torch.float64).float().requires_grad_()]
    sd = _stepped(saver(params), params)
    opt = loader(params)
    _stepped(opt, params)
    set_grads(params, 9)
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match=f"not a {type(opt).__name__} checkpoint.*({match})"):
        opt.load_state_dict(sd)
    assert_unchanged(opt, params, before)


def test_state_key_of_another_optimizer_refused():
    opt, params = two_groups("pnm")
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["exp_avg_sq"] = torch.zeros(4)
    with pytest.raises(ValueError, match="has 'exp_avg_sq', which PNM does not keep"):
        opt.load_state_dict(sd)


@pytest.mark.parametrize("bad", [float("nan"), -1.0, float("inf")])
def test_bad_8bit_scales_refused(bad):
    p = torch.randn(300, dtype=torch.float64).float().requires_grad_()
    opt = nf.AdaPNM([p], state_dtype=nf.state.Blockwise8bit(block_size=64, min_numel=0), backend="reference")
    _stepped(opt, [p])
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["exp_avg_scales"][1] = bad
    before = snapshot(opt, [p])
    with pytest.raises(ValueError, match="'exp_avg_scales' of param 0 .* negative or non-finite"):
        opt.load_state_dict(sd)
    assert_unchanged(opt, [p], before)


# ----- finding 4: the backend is the loading optimizer's ------------------------------------------------
def test_backend_is_the_loading_optimizers():
    saver, params = two_groups(backend="reference")
    sd = saver.state_dict()
    sd["param_groups"][0]["backend"] = "triton"  # as saved on a GPU machine
    loader = CONFIGS["adapnm"]([{"params": [p]} for p in params], backend="foreach")
    loader.load_state_dict(sd)
    assert [g["backend"] for g in loader.param_groups] == ["foreach", "foreach"]
    loader.step()  # a "triton" checkpoint steps on this CPU


# ----- finding 6: hyperparameters from every group ------------------------------------------------------
def test_required_lr_from_every_group():
    a, b = torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = nf.PNM([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.2}], backend="reference")
    a.grad, b.grad = torch.ones(3), torch.ones(2)
    opt.step()
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.2]
    assert not torch.equal(a.detach()[:2] - 1, b.detach() - 1)  # each moved by its own lr
    with pytest.raises(ValueError, match="param group 1 needs 'lr'"):
        nf.DemonSGD([{"params": [a], "lr": 0.1}, {"params": [b]}], total_steps=5)


@pytest.mark.parametrize("cls, kw", [(nf.DemonSGD, dict(lr=0.1)), (nf.DemonAdam, {}), (nf.AdaPNM, {})])
def test_demon_in_a_group_is_honoured(cls, kw):
    """``total_steps``/``delay`` in a group is that group's Demon: the group steps exactly as an
    optimizer built with that Demon."""
    p0 = torch.randn(6, dtype=torch.float64).float()
    a, b, c = (p0.clone().requires_grad_() for _ in range(3))
    grouped = cls([{"params": [a], "total_steps": 4, "delay": 0.25}], backend="reference", **kw)
    direct = cls([b], demon=nf.Demon(4, delay=0.25), backend="reference", **kw)
    plain = cls([c], demon=nf.Demon(1000), backend="reference", **kw)
    for step in range(6):
        for p in (a, b, c):
            p.grad = make_grads([p], step)[0]
        for opt in (grouped, direct, plain):
            opt.step()
    assert grouped.param_groups[0]["demon"] == {"total_steps": 4, "delay": 0.25}
    assert torch.equal(a.detach(), b.detach())
    assert not torch.equal(a.detach(), c.detach())


def test_demon_in_a_group_given_twice_refused():
    a = torch.ones(3, requires_grad=True)
    with pytest.raises(ValueError, match="total_steps/delay or demon, not both"):
        nf.AdaPNM([{"params": [a], "total_steps": 4, "demon": 5}])


# ----- finding 7: a group that fails its checks is not kept ----------------------------------------------
@pytest.mark.parametrize("key, value", [
    ("noise", {"type": "Isotropic", "stdd": 0.1}),
    ("demon", {"total_stesp": 5}),
    ("state_dtype", {"format": "blockwise8bit", "block_sise": 64}),
])
def test_add_param_group_with_a_misspelt_key_keeps_nothing(key, value):
    opt = nf.AdaPNM([torch.ones(3, requires_grad=True)], backend="reference")
    with pytest.raises((TypeError, ValueError)):
        opt.add_param_group({"params": [torch.ones(2, requires_grad=True)], key: value})
    assert len(opt.param_groups) == 1
    opt.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step()  # later steps are unaffected


# ----- finding 5: every layout torch.optim steps, steps on every backend --------------------------------
def _layouts():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(10, 5, 2, generator=g)
    wide = torch.randn(6, 8, generator=g)
    square = torch.randn(7, 4, generator=g)
    return {
        "strided_last_dim": lambda: base[..., 0],  # torch's test_forloop_goes_right_direction
        "every_other_column": lambda: wide[:, ::2],
        "transposed": lambda: square.t(),  # dense, not row-major
        "size_one_dim": lambda: torch.randn(1, 5, generator=g).t(),  # [5, 1] with strides (1, 5)
    }


def _layout_backends():
    names = ["auto", "foreach"]
    if nf.backends.get("native").available(torch.device("cpu")):
        names.append("native")
    return names + ["triton"]


@pytest.mark.parametrize("backend", _layout_backends())
@pytest.mark.parametrize("layout", sorted(_layouts()))
@pytest.mark.parametrize("state", ["float", "8bit"])
def test_every_layout_steps_like_the_reference(backend, layout, state, monkeypatch):
    if backend == "triton":
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    for name in ("native", "triton"):
        monkeypatch.setattr(nf.backends.get(name), "_warned_layout", False)
    kw = {"state_dtype": nf.state.Blockwise8bit(block_size=16, min_numel=0)} if state == "8bit" else {}
    results = []
    for which in ("reference", backend):
        p = _layouts()[layout]().detach().requires_grad_()
        opt = nf.AdaPNM([p], lr=0.01, backend=which, **kw)
        for step in range(3):
            # A grad laid out unlike its param where the param is dense (a hand-assigned contiguous
            # grad of a transposed param); torch's own layout where it is a view.
            p.grad = make_grads([p], step)[0].contiguous()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # the layout warning: tested apart
                opt.step()
        results.append((p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}))
    (p_ref, s_ref), (p_got, s_got) = results
    torch.testing.assert_close(p_got, p_ref, atol=1e-6, rtol=1e-5)
    for key in s_ref:
        assert s_got[key].shape == s_ref[key].shape, key
        if state == "float":
            torch.testing.assert_close(s_got[key], s_ref[key], atol=1e-6, rtol=1e-5, msg=key)


# ----- finding 7: the smaller ones -----------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", "foreach"])
def test_zero_dim_param_with_clipping_and_a_one_element_grad_scale(backend):
    """A 0-d param's gradient divided by a [1]-shaped divisor (the clip, or AMP's scale) stays 0-d."""
    results = []
    for which in ("foreach", backend):
        a, z = torch.nn.Parameter(torch.linspace(-1, 1, 4)), torch.nn.Parameter(torch.tensor(1.5))
        opt = nf.AdaPNM([a, z], max_grad_norm=0.5, backend=which)
        for step in range(3):
            a.grad, z.grad = torch.linspace(0, 3, 4) * (step + 1), torch.tensor(0.3)
            opt.grad_scale, opt.found_inf = torch.tensor([2.0]), torch.tensor([0.0])
            opt.step()
        results.append((a.detach(), z.detach()))
    assert results[1][1].shape == ()
    for x, y in zip(*results):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)


def test_a_param_listed_twice_is_refused():
    a = torch.ones(3, requires_grad=True)
    with pytest.raises(ValueError, match="param group 0 lists a param more than once"):
        nf.PNM([a, a], lr=0.1)
    opt = nf.PNM((p for p in [a]), lr=0.1)  # a generator is read once
    assert opt.param_groups[0]["params"] == [a]


def test_numpy_scalars_are_numbers():
    np = pytest.importorskip("numpy")
    a = torch.ones(3, requires_grad=True)
    opt = nf.DemonSGD([a], lr=np.float32(0.1), total_steps=np.int64(10), seed=np.int64(3))
    assert opt.param_groups[0]["seed"] == 3 and type(opt.param_groups[0]["seed"]) is int
    assert opt.param_groups[0]["demon"] == {"total_steps": 10, "delay": 0.0}
    a.grad = torch.ones(3)
    opt.step()
    torch.testing.assert_close(a.detach(), torch.full((3,), 0.9))
