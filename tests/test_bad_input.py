"""Bad input gets a clear error naming the problem, raised before any tensor is touched."""
import pytest
import torch

import noisefuse as nf


def p():
    return [torch.ones(3, requires_grad=True)]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: nf.PNM(p(), lr=-0.1), "lr"),
        (lambda: nf.PNM(p(), lr=float("nan")), "lr"),
        (lambda: nf.PNM(p(), lr=0.1, betas=(1.0, 1.0)), "beta1"),
        (lambda: nf.PNM(p(), lr=0.1, betas=(-0.1, 1.0)), "beta1"),
        (lambda: nf.PNM(p(), lr=0.1, betas=(0.9, -1.0)), "beta0"),
        (lambda: nf.PNM(p(), lr=0.1, betas=(0.9,)), "betas"),
        (lambda: nf.PNM(p(), lr=0.1, weight_decay=-1e-3), "weight_decay"),
        (lambda: nf.AdaPNM(p(), betas=(0.9, 1.0, 1.0)), "beta2"),
        (lambda: nf.AdaPNM(p(), eps=-1.0), "eps"),
        (lambda: nf.AdaPNM(p(), amsgrad="yes"), "amsgrad"),
        (lambda: nf.DemonSGD(p(), lr=0.1, total_steps=0), "total_steps"),
        (lambda: nf.DemonSGD(p(), lr=0.1, total_steps=10.5), "total_steps"),
        (lambda: nf.DemonSGD(p(), lr=0.1), "total_steps"),
        (lambda: nf.DemonSGD(p(), lr=0.1, total_steps=10, demon=10), "not both"),
        (lambda: nf.DemonSGD(p(), lr=0.1, momentum=1.0, total_steps=10), "momentum"),
        (lambda: nf.DemonSGD(p(), lr=0.1, total_steps=10, delay=1.0), "delay"),
        (lambda: nf.DemonAdam(p(), total_steps=-5), "total_steps"),
        (lambda: nf.DemonAdam(p(), total_steps=5, betas=(0.9, 1.5)), "beta2"),
        (lambda: nf.AdaPNM(p(), demon="soon"), "demon"),
        (lambda: nf.AdaPNM(p(), demon=0), "total_steps"),
        (lambda: nf.AdaPNM(p(), backend="cuda-magic"), "backend"),
        (lambda: nf.AdaPNM(p(), seed=-1), "seed"),
        (lambda: nf.AdaPNM(p(), maximize=1), "maximize"),
        (lambda: nf.AdaPNM([{"params": p(), "lr": -1.0}]), "lr"),
    ],
)
def test_invalid_hyperparameters_raise_value_error_naming_them(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_pnm_requires_lr():
    # As torch.optim's `required`: a ValueError naming it, since a group may give it instead.
    with pytest.raises(ValueError, match="param group 0 needs 'lr'"):
        nf.PNM(p())


def _assert_untouched(params, before, opt):
    for a, b in zip(params, before):
        assert torch.equal(a.detach(), b)
    assert all(len(opt.state[x]) == 0 for x in params)


def test_sparse_gradient_rejected_before_any_update():
    params = [torch.ones(3, requires_grad=True), torch.ones(4, requires_grad=True)]
    before = [x.detach().clone() for x in params]
    opt = nf.AdaPNM(params)
    params[0].grad = torch.ones(3)  # a valid grad on the first param...
    params[1].grad = torch.ones(4).to_sparse()  # ...must not be applied when the second is bad
    with pytest.raises(RuntimeError, match="sparse.*param 1 of param group 0"):
        opt.step()
    _assert_untouched(params, before, opt)


def test_sparse_gradient_in_a_later_group_rejected_before_the_first_group_moves():
    a, b = torch.ones(3, requires_grad=True), torch.ones(4, requires_grad=True)
    opt = nf.PNM([{"params": [a]}, {"params": [b]}], lr=0.1)
    a.grad, b.grad = torch.ones(3), torch.ones(4).to_sparse()
    with pytest.raises(RuntimeError, match="param group 1"):
        opt.step()
    _assert_untouched([a, b], [torch.ones(3), torch.ones(4)], opt)


def test_complex_params_rejected():
    z = torch.ones(3, dtype=torch.complex64, requires_grad=True)
    opt = nf.DemonAdam([z], total_steps=10)
    z.grad = torch.ones(3, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="real floating-point"):
        opt.step()
    _assert_untouched([z], [torch.ones(3, dtype=torch.complex64)], opt)


def test_gradient_dtype_mismatch_rejected():
    x = torch.ones(3, requires_grad=True)
    opt = nf.PNM([x], lr=0.1)
    if hasattr(x, "grad_dtype"):
        x.grad_dtype = None  # torch >= 2.10 refuses such a grad unless told to allow it
    try:
        x.grad = torch.ones(3, dtype=torch.float64)
    except RuntimeError:
        pytest.skip("this torch rejects a gradient of another dtype itself")
    with pytest.raises(RuntimeError, match="does not match"):
        opt.step()
    _assert_untouched([x], [torch.ones(3)], opt)


def test_explicit_backend_that_cannot_run_says_why():
    x = torch.ones(3, requires_grad=True)
    opt = nf.PNM([x], lr=0.1, backend="triton")
    x.grad = torch.ones(3)
    from noisefuse import backends
    if backends.get("triton").available(x.device):
        pytest.skip("the Triton interpreter is active")
    with pytest.raises(RuntimeError, match="triton"):
        opt.step()
    _assert_untouched([x], [torch.ones(3)], opt)
