"""A param resized after its state was made (``p.data = ...``: model surgery, a grown vocabulary) is
refused with a message naming the state entry, on every backend, before anything is written: no
param moves, no state changes, and nothing past the end of a state buffer is touched. Each state
buffer here is a view of the front of a larger one whose tail is a sentinel, so a kernel that walked
the new, larger param's elements through the old buffers would be caught writing there."""
from __future__ import annotations


import pytest
import torch

import noisefuse as nf
from cases import CONFIGS
from noisefuse import backends
from noisefuse.backends.triton_kernels import launch

SENTINEL = 12345.0
PAD = 64  # sentinel elements after each float buffer (past one 16-element vector of any backend)


def _backends():
    names = ["reference", "foreach"]
    if backends.get("native").available(torch.device("cpu")):
        names.append("native")
    names.append("triton")  # under the interpreter (the fixture below)
    return names


@pytest.fixture
def interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("NOISEFUSE_TRITON_BLOCK", raising=False)


def _guard_float_state(opt, p):
    """Each float state buffer of ``p`` replaced by an equal view at the front of a buffer padded
    with sentinels; returns the padded buffers."""
    padded = {}
    for key, buf in opt.state[p].items():
        if key in ("step", "beta1_prod") or not torch.is_tensor(buf) or buf.dim() == 0:
            continue
        whole = torch.full((buf.numel() + PAD,), SENTINEL, dtype=buf.dtype)
        whole[:buf.numel()] = buf.reshape(-1)
        opt.state[p][key] = whole[:buf.numel()].view(buf.shape)
        padded[key] = whole
    return padded


def _snapshot(opt, params):
    return ([p.detach().clone() for p in params],
            [{k: v.clone() for k, v in opt.state[p].items()} for p in params])


def _assert_unchanged(opt, params, snapshot):
    before_params, before_state = snapshot
    for p, b in zip(params, before_params):
        assert torch.equal(p.detach(), b)
    for p, saved in zip(params, before_state):
        assert opt.state[p].keys() == saved.keys()
        for key, value in saved.items():
            assert torch.equal(opt.state[p][key], value), key


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("config", ["pnm", "adapnm", "demon_sgd", "demon_adamw_ams"])
def test_resized_param_is_refused_before_any_write(config, backend, request):
    if backend == "triton":
        request.getfixturevalue("interpreter")
    # The resized param comes after a good one of its group and in a group after a good one, so
    # that a backend writing as it goes would have moved something before it met the bad one.
    a, b, c = (torch.randn(n, dtype=torch.float64).float().requires_grad_() for n in (7, 3, 5))
    opt = CONFIGS[config]([{"params": [a]}, {"params": [b, c]}], backend=backend)
    for p in (a, b, c):
        p.grad = torch.randn_like(p)
    opt.step()
    padded = _guard_float_state(opt, c)
    c.data = torch.ones(6)  # one element more than its state holds
    for p in (a, b, c):
        p.grad = torch.randn_like(p)
    snapshot = _snapshot(opt, (a, b, c))
    with pytest.raises(RuntimeError, match=r"state '\w+' of param 1 of param group 1 has shape \(5,\), but the "
                                           r"param has \(6,\)"):
        opt.step()
    _assert_unchanged(opt, (a, b, c), snapshot)
    for key, whole in padded.items():
        assert torch.all(whole[-PAD:] == SENTINEL), f"{key}: written past its end"
    # Starting its state afresh, as the message says, steps the resized param.
    del opt.state[c]
    opt.step()
    assert opt.state[c]["step"].item() == 1


@pytest.mark.parametrize("backend", _backends())
def test_resized_param_with_8bit_state_is_refused(backend, request):
    if backend == "triton":
        request.getfixturevalue("interpreter")
    p = torch.randn(300, dtype=torch.float64).float().requires_grad_()
    opt = nf.AdaPNM([p], state_dtype=nf.state.Blockwise8bit(block_size=64, min_numel=0), backend=backend)
    p.grad = torch.randn_like(p)
    opt.step()
    p.data = torch.ones(301)
    p.grad = torch.randn_like(p)
    snapshot = _snapshot(opt, [p])
    with pytest.raises(RuntimeError, match=r"state 'exp_avg' of param 0 of param group 0 has shape \(300,\)"):
        opt.step()
    _assert_unchanged(opt, [p], snapshot)


def _triton_op_args(n_param, n_state):
    p = torch.randn(n_param, dtype=torch.float64).float()
    g = torch.randn(n_param, dtype=torch.float64).float()
    wholes = [torch.full((n_state + PAD,), SENTINEL) for _ in range(4)]
    states = [w[:n_state] for w in wholes]
    for s in states[2:]:
        s.fill_(0.25)  # second moments: positive
    steps = [torch.zeros((), dtype=torch.float64)]
    return p, g, wholes, states, steps


@pytest.mark.parametrize("n_state", [5, 7])
def test_triton_launcher_checks_every_state_shape(n_state, interpreter):
    """The launcher itself (what ``torch.ops.noisefuse.triton_fused_step_`` runs) compares every state
    tensor's shape with its param's, not only the strides: a state of 5 for a param of 6 would have
    its sixth element read and written, and one of 7 would be stepped as if it were 6."""
    p, g, wholes, states, steps = _triton_op_args(6, n_state)
    before = [p.clone(), *[w.clone() for w in wholes]]
    with pytest.raises(RuntimeError, match=r"state tensor \(exp_avgs\) of param 0 has shape \(%d,\)" % n_state):
        launch.fused_step([p], [g], states[:1], [], states[2:3], states[3:4], steps, [], momentum=2, lr=0.1,
                          beta1=0.9, beta2=0.999, beta0=1.0, eps=1e-8, weight_decay=0.0, decoupled=True,
                          nesterov=False, maximize=False, demon_total_steps=0, demon_delay=0.0)
    for now, then in zip([p, *wholes], before):
        assert torch.equal(now, then)


def test_triton_launcher_checks_the_scales_of_8bit_state(interpreter):
    from noisefuse.state import maps

    p, g = torch.randn(130), torch.randn(130)
    codes = torch.zeros(130, dtype=torch.uint8)
    scales = torch.full((2 + PAD,), SENTINEL)  # 130 elements in blocks of 64 need 3
    with pytest.raises(RuntimeError, match=r"scales of state list 0 of param 0 are torch.float32 \(2,\)"):
        launch.fused_step([p], [g], [codes], [], [], [], [torch.zeros((), dtype=torch.float64)], [], momentum=1,
                          lr=0.1, beta1=0.9, beta2=0.999, beta0=0.0, eps=1e-8, weight_decay=0.0, decoupled=True,
                          nesterov=False, maximize=False, demon_total_steps=0, demon_delay=0.0,
                          state_scales=[scales[:2]], code_books=maps.tables("dynamic"), block_size=64)
    assert torch.all(scales[2:] == SENTINEL)
