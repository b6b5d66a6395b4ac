"""PyTorch's generic optimizer checks of what a user touches besides the numbers: state dicts and
their round trips, deepcopy and pickle, param groups and add_param_group, repr, constructor errors,
and the step, state_dict and load_state_dict hooks (the numbers, and why torch's own harness cannot
drive ours: tests/test_torch_optim_suite.py)."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch

import noisefuse as nf
from cases import assert_same_state, make_grads, make_params, through_a_file
# backend is a fixture: pytest finds it by its name in this module.
from optim_suite import (NAMES, OPTIM_INPUTS, assert_identical, backend, clones, inputs_for, loss_closure, make,
                         set_grads, steps, weight_bias)  # noqa: F401

# Non-dense params on the fused backends are stepped by foreach, with one warning (docs/integration.md).
pytestmark = pytest.mark.filterwarnings("ignore:.*stepped by the foreach backend")


def _nontensor_step(sd):
    sd = copy.deepcopy(sd)
    for state in sd["state"].values():
        state["step"] = state["step"].item()
    return sd


def _older(sd):
    """Without the group keys a later version added, where they hold their defaults."""
    sd = copy.deepcopy(sd)
    defaults = dict(nf.optim.base.COMMON_DEFAULTS, seed=3)
    for group in sd["param_groups"]:
        for key, value in defaults.items():
            if key in group and group[key] == value:
                del group[key]
    return sd


# The ways torch's tests carry a state dict: test_state_dict_deterministic (deepcopy),
# test_save_load_equality_with_weights_only, test_load_nontensor_step, test_can_load_older_state_dict.
ROUND_TRIPS = {"deepcopy": copy.deepcopy, "weights_only": through_a_file, "nontensor_step": _nontensor_step,
               "older": _older}


@pytest.mark.parametrize("carry", sorted(ROUND_TRIPS))
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_mid_run(name, backend, carry, request):
    # Saved after 3 steps, loaded into a fresh optimizer on copies of the params: 3 more steps give
    # the uninterrupted run's params and state bit for bit; the loaded dict is left as it was, and
    # the loading optimizer's state_dict() is the saved one.
    for kwargs in inputs_for(name, backend, request):
        params = make_params((0, 1, 9))
        straight = make(name, params, backend, **kwargs)
        steps(straight, params, 0, 3)
        resumed_params = clones(params)
        resumed = make(name, resumed_params, backend, **dict(kwargs, lr=kwargs["lr"] * 3))
        saved = ROUND_TRIPS[carry](straight.state_dict())
        untouched = copy.deepcopy(saved)
        resumed.load_state_dict(saved)
        assert_state_dicts_equal(saved, untouched)
        assert_state_dicts_equal(resumed.state_dict(), straight.state_dict())
        steps(straight, params, 3, 6)
        steps(resumed, resumed_params, 3, 6)
        assert_identical(straight, resumed, params, resumed_params)


def assert_state_dicts_equal(a, b):
    assert a.keys() == b.keys()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i, state in a["state"].items():
        assert state.keys() == b["state"][i].keys()
        for key, value in state.items():
            other = b["state"][i][key]
            assert type(value) is type(other) and (torch.equal(value, other) if torch.is_tensor(value)
                                                   else value == other), (i, key)


@pytest.mark.parametrize("name", NAMES)
def test_can_load_from_to_named_state_dict(name):
    # Params given as model.named_parameters(): the names are saved ("param_names") and a
    # checkpoint moves between named and unnamed optimizers, stepping on as the unnamed run.
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    kwargs = OPTIM_INPUTS[name][1][1]
    named = make(name, copy.deepcopy(model).named_parameters(), "reference", **kwargs)
    plain = make(name, copy.deepcopy(model).parameters(), "reference", **kwargs)
    for opt in (named, plain):
        steps(opt, opt.param_groups[0]["params"], 0, 2)
    assert named.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]
    for source, target_params in ((named, copy.deepcopy(model).parameters()),
                                  (plain, copy.deepcopy(model).named_parameters())):
        target = make(name, target_params, "reference", **kwargs)
        target.load_state_dict(copy.deepcopy(source.state_dict()))
        ps = target.param_groups[0]["params"]
        with torch.no_grad():
            for p, q in zip(ps, source.param_groups[0]["params"]):
                p.copy_(q)
        steps(target, ps, 2, 4)
        steps(source, source.param_groups[0]["params"], 2, 4)
        assert_identical(source, target, source.param_groups[0]["params"], ps)


def public_attrs(obj):
    return {k for k in obj.__dict__ if not k.startswith("_")}


@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
@pytest.mark.parametrize("name", NAMES)
def test_deepcopy_copies_all_public_attrs(name, backend, copier):
    # The copy holds copies of the params and steps on exactly as the original does.
    params = make_params((0, 1, 9))
    opt = make(name, params, backend, **OPTIM_INPUTS[name][1][-1])
    steps(opt, params, 0, 2)
    copied = copy.deepcopy(opt) if copier == "deepcopy" else pickle.loads(pickle.dumps(opt))
    assert public_attrs(copied) == public_attrs(opt)
    copied_params = copied.param_groups[0]["params"]
    assert all(p is not q and torch.equal(p, q) for p, q in zip(params, copied_params))
    steps(opt, params, 2, 4)
    steps(copied, copied_params, 2, 4)
    assert_identical(opt, copied, params, copied_params)


@pytest.mark.parametrize("name", NAMES)
def test_add_param_group(name, backend, request):
    # A group added after 3 steps steps as it would have in the optimizer from the start (a param's
    # state starts at its first grad), with the defaults for what it does not set.
    for kwargs in inputs_for(name, backend, request):
        runs = []
        for added in (False, True):
            a, b = make_params((6,)), make_params((0, 4), seed=1)
            new_group = {"params": b, "lr": 0.02, "weight_decay": 0.0}
            opt = make(name, a if added else [{"params": a}, new_group], backend, **kwargs)
            steps(opt, a, 0, 3)
            if added:
                opt.add_param_group(new_group)
            steps(opt, a + b, 3, 6)
            runs.append((a + b, opt))
        (pa, oa), (pb, ob) = runs
        assert_identical(oa, ob, pa, pb)
        group = ob.param_groups[1]
        assert {k: v for k, v in group.items() if k not in ("params", "lr", "weight_decay")} == \
               {k: v for k, v in ob.param_groups[0].items() if k not in ("params", "lr", "weight_decay")}
        ref_params = clones(make_params((6,)) + make_params((0, 4), seed=1))
        ref = make(name, [{"params": ref_params[:1]}, dict(new_group, params=ref_params[1:])], "reference", **kwargs)
        steps(ref, ref_params[:1], 0, 3)
        steps(ref, ref_params, 3, 6)
        assert_same_state(ref, ob, ref_params, pb, torch.float32)


def group_kwargs(kwargs):
    """``kwargs`` as one group's hyperparameters (DemonSGD/DemonAdam's total_steps and delay
    included: a group's Demon), but max_grad_norm: one global norm, every group has the first's."""
    return {k: v for k, v in kwargs.items() if k != "max_grad_norm"}


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_lr(name, backend, request):
    # lr (and a Demon optimizer's total_steps) given only in the groups, none to the constructor: a
    # group steps with its own; an lr of 0 leaves its param as it was, whatever its grad.
    for kwargs in inputs_for(name, backend, request):
        kwargs = group_kwargs(kwargs)
        in_groups = {k: kwargs[k] for k in ("lr", "total_steps", "delay") if k in kwargs}
        outer = {k: v for k, v in kwargs.items() if k not in in_groups}
        params, frozen = make_params((0, 1, 8)), make_params((5,), seed=2)
        opt = OPTIM_INPUTS[name][0]([dict(in_groups, params=params), dict(in_groups, params=frozen, lr=0.0)],
                                    backend=backend, seed=3, **outer)
        before = frozen[0].detach().clone()
        steps(opt, params + frozen, 0, 4)
        assert torch.equal(frozen[0], before)
        alone = clones(make_params((0, 1, 8)))
        ref = make(name, alone, "reference", **kwargs)
        steps(ref, alone, 0, 4)
        assert_same_state(ref, opt, alone, params, torch.float32)


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_weight_decay(name, backend, request):
    # Two groups, each with every hyperparameter of its own (the richer inputs), step as two
    # optimizers with those hyperparameters do.
    _, inputs = OPTIM_INPUTS[name]
    first, second = (group_kwargs(kwargs) for kwargs in inputs[1:])
    a, b = make_params((7, 1)), make_params((0, 9), seed=1)
    opt = make(name, [dict(first, params=a), dict(second, params=b)], backend, **inputs[0])
    steps(opt, a + b, 0, 5)
    ra, rb = clones(make_params((7, 1))), clones(make_params((0, 9), seed=1))
    refs = [make(name, ra, "reference", **first), make(name, rb, "reference", **second)]
    for step in range(5):
        set_grads(ra + rb, step)
        for ref in refs:
            ref.step()
    assert_same_state(refs[0], opt, ra, a, torch.float32)
    assert_same_state(refs[1], opt, rb, b, torch.float32)


@pytest.mark.parametrize("name", NAMES)
def test_maximize(name, backend, request):
    # maximize=True with grads g steps as maximize=False with -g (the reference's run).
    for kwargs in inputs_for(name, backend, request):
        params, negated = make_params((0, 1, 9)), make_params((0, 1, 9))
        opt = make(name, params, backend, **dict(kwargs, maximize=True))
        ref = make(name, negated, "reference", **dict(kwargs, maximize=False))
        for step in range(5):
            set_grads(params, step)
            for p, g in zip(negated, make_grads(negated, step)):
                p.grad = -g
            opt.step()
            ref.step()
        assert_same_state(ref, opt, negated, params, torch.float32)


def test_optimizer_can_be_printed():
    for name in NAMES:
        cls, inputs = OPTIM_INPUTS[name]
        opt = cls([{"params": make_params((2,))}, dict(group_kwargs(inputs[1]), params=make_params((3,)))],
                  **inputs[0])
        text = repr(opt)
        assert text.startswith(f"{name} (") and "Parameter Group 0" in text and "Parameter Group 1" in text
        for group in opt.param_groups:
            for key in group:
                assert key == "params" or f"{key}: " in text, key


@pytest.mark.parametrize("name", NAMES)
def test_errors(name):
    # test_errors: an invalid hyperparameter is refused by the constructor, with its name.
    cls, inputs = OPTIM_INPUTS[name]
    base = inputs[0]
    bad = {"lr": -1.0, "weight_decay": -0.1}
    bad.update({"PNM": {"betas": (1.0, 1.0)}, "AdaPNM": {"betas": (0.9, 1.0, 1.0), "eps": -1e-8},
                "DemonSGD": {"momentum": 1.0}, "DemonAdam": {"betas": (0.9, -0.1), "eps": -1e-8}}[name])
    for key, value in bad.items():
        with pytest.raises(ValueError, match=key.rstrip("s")):
            cls(make_params((2,)), **dict(base, **{key: value}))


def test_step_all_hooks():
    # torch's order: global pre, own pre, step, own post, global post; a pre hook may replace the
    # step's arguments; a removed hook is not called.
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
    for name in NAMES:
        weight, bias, x = weight_bias()
        opt = make(name, [weight, bias], "reference", **OPTIM_INPUTS[name][1][0])
        closure, calls = loss_closure(opt, weight, bias, x), []
        handles = [register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global pre")),
                   register_optimizer_step_post_hook(lambda o, a, k: calls.append("global post"))]
        try:
            handles.append(opt.register_step_post_hook(lambda o, a, k: calls.append("post")))
            handles.append(opt.register_step_pre_hook(lambda o, a, k: calls.append(("pre", o is opt, a, k))))
            opt.register_step_pre_hook(lambda o, a, k: (a, {"closure": closure}))  # a = (opt,)
            loss = opt.step()
        finally:
            for handle in handles[:2]:
                handle.remove()
        assert calls == ["global pre", ("pre", True, (opt,), {}), "post", "global post"], name
        assert torch.is_tensor(loss)  # the replaced arguments reached the step
        for handle in handles[2:]:
            handle.remove()
        opt.step()
        assert len(calls) == 4


def test_state_dict_pre_and_post_hooks():
    # test_state_dict_pre_hook / _post_hook: the pre hook sees the optimizer before packing, the
    # post hook may change the packed dict and its return value is what state_dict() returns.
    for name in NAMES:
        params = make_params((3,))
        opt = make(name, params, "reference", **OPTIM_INPUTS[name][1][0])
        steps(opt, params, 0, 1)
        opt.register_state_dict_pre_hook(lambda o: o.state.__setitem__("test", 1))

        def post(o, sd):
            sd["ran_pre_hook"] = sd["state"].pop("test", None) == 1
            return sd
        opt.register_state_dict_post_hook(post)
        sd = opt.state_dict()
        assert sd["ran_pre_hook"] is True and "test" not in sd["state"] and 0 in sd["state"], name


def test_load_state_dict_pre_and_post_hooks():
    # test_load_state_dict_pre_hook_and_prepend / _post_hook: pre hooks run before anything reads
    # the dict, in place or returning a new one, prepended ones first; the post hook sees the
    # optimizer loaded.
    for name in NAMES:
        params = make_params((3,))
        opt = make(name, params, "reference", **OPTIM_INPUTS[name][1][0])
        steps(opt, params, 0, 1)
        sd, order = opt.state_dict(), []

        def in_place(o, sd):
            order.append("in place")
            sd["param_groups"][0]["lr"] = 0.002

        def copying(o, sd):
            order.append("copying")
            sd = copy.deepcopy(sd)
            sd["param_groups"][0]["lr"] = 0.003
            return sd

        def post(o):
            o.state["ran_post_hook"] = o.param_groups[0]["lr"] == 0.003

        opt.register_load_state_dict_pre_hook(copying)
        opt.register_load_state_dict_pre_hook(in_place, prepend=True)
        opt.register_load_state_dict_post_hook(post)
        opt.load_state_dict(sd)
        assert order == ["in place", "copying"] and opt.param_groups[0]["lr"] == 0.003, name
        assert opt.state["ran_post_hook"] is True


@pytest.mark.parametrize("name", NAMES)
def test_load_state_dict_pre_hook_may_adapt_the_checkpoint(name):
    # torch: "a custom register_load_state_dict_pre_hook should be implemented to adapt the loaded
    # dict": what the hook returns is what is loaded, and checked. Here a checkpoint whose state
    # entries were saved under other names (a renamed buffer) is made whole by the hook; and the
    # post hook sees the optimizer as it will step (the loading optimizer's backend, foreach, not
    # the saving one's).
    params = make_params((0, 1, 9))
    source = make(name, params, "reference", **OPTIM_INPUTS[name][1][0])
    steps(source, params, 0, 3)
    good = source.state_dict()
    renamed = copy.deepcopy(good)
    for state in renamed["state"].values():
        for key in list(state):
            state["old_" + key] = state.pop(key)

    def adapt(o, sd):
        sd = copy.deepcopy(sd)
        sd["state"] = {i: {k.removeprefix("old_"): v for k, v in s.items()} for i, s in sd["state"].items()}
        return sd

    seen = []
    resumed = make(name, clones(params), "foreach", **OPTIM_INPUTS[name][1][0])
    resumed.register_load_state_dict_pre_hook(adapt)
    resumed.register_load_state_dict_post_hook(lambda o: seen.append(o.param_groups[0]["backend"]))
    resumed.load_state_dict(renamed)
    assert_state_dicts_equal(resumed.state_dict(), dict(good, param_groups=resumed.state_dict()["param_groups"]))
    assert seen == ["foreach"]


@pytest.mark.parametrize("name", NAMES)
def test_load_state_dict_pre_hook_result_is_what_is_loaded(name):
    # A pre hook that returns a new dict: every entry of it is loaded, the step counters and the
    # buffers too (as torch.optim.Adam loads them), not those of the dict it was given.
    params = make_params((5,))
    source = make(name, params, "reference", **OPTIM_INPUTS[name][1][0])
    steps(source, params, 0, 2)

    def changed(o, sd):
        sd = copy.deepcopy(sd)
        for key, value in sd["state"][0].items():
            sd["state"][0][key] = torch.full_like(value, 10.0) if key == "step" else value * 0.5
        return sd

    resumed = make(name, clones(params), "reference", **OPTIM_INPUTS[name][1][0])
    resumed.register_load_state_dict_pre_hook(changed)
    resumed.load_state_dict(source.state_dict())
    assert_state_dicts_equal(resumed.state_dict(), changed(None, source.state_dict()))
