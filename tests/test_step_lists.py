"""A param group's step lists are kept from one step to the next (noisefuse/optim/step_lists.py)
and built again whenever what they were built from changes. Each scenario below changes one such
thing between two steps; the optimizer must then end exactly where one that builds its lists
afresh at every step ends, and where the change says it must."""
import copy

import pytest
import torch

import noisefuse as nf
from noisefuse import backends
from cases import cpu_backends, make_grads, make_params

SIZES = (3, 5, 7, 1)
CHANGE_AT = 3  # the step before which each scenario makes its change
BACKENDS = [b for b in cpu_backends() if b != "triton"]  # Triton runs CPU tensors only interpreted: slow


def adapnm(params, **kw):
    return nf.AdaPNM(params, lr=0.01, amsgrad=False, weight_decay=0.01, **kw)


def run(backend, change, keep_lists, dtypes=(torch.float32,) * len(SIZES), steps=6):
    """``steps`` steps of fresh grads on copies of the same params (of ``dtypes``: one group, one
    call per dtype), ``change(opt, params)`` right before step CHANGE_AT; with ``keep_lists=False``
    the kept lists are dropped before every step."""
    params = [p.detach().to(dtype).requires_grad_() for p, dtype in zip(make_params(SIZES, torch.float64), dtypes)]
    opt = adapnm(params, backend=backend)
    for step in range(steps):
        for p, g in zip(params, make_grads(params, step)):
            p.grad = g
        if step == CHANGE_AT:
            change(opt, params)
        if not keep_lists:
            opt._step_lists.clear()
        opt.step()
    return params, opt


def assert_identical(a, b):
    (params_a, opt_a), (params_b, opt_b) = a, b
    for i, (pa, pb) in enumerate(zip(params_a, params_b)):
        assert pa.dtype == pb.dtype and torch.equal(pa.detach(), pb.detach()), f"param {i}"
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        assert sa.keys() == sb.keys(), f"param {i}: {sorted(sa)} vs {sorted(sb)}"
        for key in sa:
            assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), f"param {i} state {key}"


def check(backend, change, **kw):
    """Runs the scenario with kept lists and with lists built at every step; returns the first."""
    kept = run(backend, change, keep_lists=True, **kw)
    assert_identical(kept, run(backend, change, keep_lists=False, **kw))
    return kept


@pytest.mark.parametrize("backend", BACKENDS)
def test_lists_are_kept_while_nothing_changes(backend):
    params, opt = run(backend, lambda opt, params: None, keep_lists=True)
    kept = opt._step_lists[0]
    for p, g in zip(params, make_grads(params, 99)):
        p.grad = g
    opt.step()
    assert opt._step_lists[0] is kept


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_grad_set_to_none_leaves_its_param_out(backend):
    def drop_grad(opt, params):
        params[1].grad = None

    before = run(backend, lambda opt, params: None, keep_lists=True, steps=3)[0][1].detach().clone()
    params, opt = check(backend, drop_grad, steps=4)
    assert torch.equal(params[1].detach(), before)  # step 3 left it alone
    assert opt.state[params[1]]["step"].item() == 3
    assert opt.state[params[0]]["step"].item() == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_grad_set_to_none_then_new_grads(backend):
    def zero_all_but_first(opt, params):
        first = params[0].grad
        opt.zero_grad(set_to_none=True)
        params[0].grad = first

    params, opt = check(backend, zero_all_but_first)
    assert [opt.state[p]["step"].item() for p in params] == [6, 5, 5, 5]


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_state_dict_replaces_the_state_the_step_updates(backend):
    before_load = {}  # opt -> (its exp_avg of param 0 before the load, that tensor's value then)

    def reload(opt, params):
        old = opt.state[params[0]]["exp_avg"]
        before_load[opt] = (old, old.clone())
        opt.load_state_dict(copy.deepcopy(opt.state_dict()))

    params, opt = check(backend, reload)
    old, value = before_load[opt]
    assert opt.state[params[0]]["exp_avg"] is not old and torch.equal(old, value)  # left behind
    assert opt.state[params[0]]["step"].item() == 6


@pytest.mark.parametrize("backend", BACKENDS)
def test_added_param_group_takes_part(backend):
    def add_group(opt, params):
        extra = torch.ones(4, requires_grad=True)
        extra.grad = torch.full((4,), 0.5)
        opt.add_param_group({"params": [extra]})
        params.append(extra)  # run() gives it grads from now on and compares it too

    params, opt = check(backend, add_group)
    assert opt.state[params[4]]["step"].item() == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_replaced_state_tensor_is_the_one_updated(backend):
    replaced = {}  # opt -> (the exp_avg of param 0 it replaced, that tensor's value then, the new one)

    def replace_buffer(opt, params):
        old = opt.state[params[0]]["exp_avg"]
        new = opt.state[params[0]]["exp_avg"] = old.clone()
        replaced[opt] = (old, old.clone(), new)

    params, opt = check(backend, replace_buffer)
    old, value, new = replaced[opt]
    assert opt.state[params[0]]["exp_avg"] is new and not torch.equal(new, value)
    assert torch.equal(old, value)  # the replaced tensor is left alone


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_replaced_state_dict_starts_afresh(backend):
    def reset(opt, params):
        opt.state[params[2]] = {}

    params, opt = check(backend, reset)
    assert opt.state[params[2]]["step"].item() == 3
    assert opt.state[params[0]]["step"].item() == 6


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_step_counter_set_as_an_int_is_read(backend):
    def official_checkpoint_step(opt, params):
        opt.state[params[0]]["step"] = 10  # the official PNM code keeps an int

    params, opt = check(backend, official_checkpoint_step)
    assert opt.state[params[0]]["step"].item() == 13


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_param_given_another_dtype_in_place_gets_state_of_that_dtype(backend):
    def to_double(opt, params):
        params[3].data = params[3].data.double()  # what module.double() does: the same param object
        params[3].grad = None
        params[3].grad = torch.ones(1, dtype=torch.float64)

    params, opt = check(backend, to_double)
    assert opt.state[params[3]]["exp_avg"].dtype == torch.float64
    assert opt.state[params[3]]["step"].item() == 6


@pytest.mark.parametrize("backend", BACKENDS)
def test_param_removed_from_its_group_is_left_out(backend):
    def remove_last(opt, params):
        opt.param_groups[0]["params"].pop()

    params, opt = check(backend, remove_last)
    assert opt.state[params[3]]["step"].item() == 3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtypes", [(torch.float32,) * len(SIZES), (torch.float32, torch.float64) * 2],
                         ids=["one_call", "two_calls"])
def test_param_replaced_in_its_group_with_its_state_carried_over_is_the_one_updated(backend, dtypes):
    def replace_param(opt, params):
        old = params[1]
        new = old.detach().clone().requires_grad_()
        new.grad = old.grad
        opt.param_groups[0]["params"][1] = params[1] = new
        opt.state[new] = opt.state.pop(old)  # the same state entries, now the new param's

    params, opt = check(backend, replace_param, dtypes=dtypes)
    assert opt.state[params[1]]["step"].item() == 6


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dtype_changed_on_the_group_converts_the_state(backend):
    def float32_state(opt, params):
        opt.param_groups[0]["state_dtype"] = torch.float32

    params, opt = check(backend, float32_state, dtypes=(torch.bfloat16,) * len(SIZES))
    assert opt.state[params[0]]["exp_avg"].dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_amsgrad_turned_on_creates_its_buffer(backend):
    def amsgrad(opt, params):
        opt.param_groups[0]["amsgrad"] = True

    params, opt = check(backend, amsgrad)
    assert "max_exp_avg_sq" in opt.state[params[0]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_demon_turned_on_creates_its_product(backend):
    def demon(opt, params):
        opt.param_groups[0]["demon"] = nf.Demon(10).as_dict()

    params, opt = check(backend, demon)
    assert "beta1_prod" in opt.state[params[0]]


@pytest.mark.skipif(not (torch.cuda.is_available() and backends.get("native").available(torch.device("cuda"))),
                    reason="needs a CUDA GPU and the native extension's CUDA kernel")
def test_backend_changed_on_the_group_moves_the_counters():
    params = [torch.randn(5, device="cuda", requires_grad=True)]
    opt = adapnm(params, backend="native")
    for backend in ("native", "foreach", "native"):
        opt.param_groups[0]["backend"] = backend
        params[0].grad = torch.ones(5, device="cuda")
        opt.step()
        # foreach reads the counters on the host, the native kernels on the device
        assert opt.state[params[0]]["step"].device.type == ("cpu" if backend == "foreach" else "cuda")
