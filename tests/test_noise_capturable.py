"""Multiplicative noise is capturable: the weight step ``t_w`` and the weight vector are computed on
the device from the step counters, with no host read, and give exactly the numbers of the int step."""
import contextlib

import pytest
import torch

from cases import CONFIGS, assert_same_state, capture_after_warm_up, make_params
from noisefuse.noise import Multiplicative, StepNoise, sample_weights
from noisefuse.noise.step import weight_step
from noise_cases import NOISES, SEED
from test_cuda_graphs import _fused_backends

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# sigma=/prob= rather than small_batch=, so that B = 1 is allowed.
KINDS = {"gaussian": Multiplicative("gaussian", sigma=0.8),
         "gaussian_centered": Multiplicative("gaussian_centered", sigma=1.3),
         "bernoulli": Multiplicative("bernoulli", prob=0.4)}
STEPS = (1, 2, 1000, 2**20)
SEEDS = (0, 5, SEED, 2**64 - 1)
BATCH = 6


@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_tensor_step_draws_the_int_steps_weights(kind, batch):
    for seed in SEEDS:
        for step in STEPS:
            expected = sample_weights(KINDS[kind], batch, seed, step)
            # As the optimizer has it (1 + a float64 counter), and as an int64 0-d tensor.
            counter = torch.tensor(float(step - 1), dtype=torch.float64)
            for t in (weight_step([counter], capturable=True), torch.tensor(step)):
                assert torch.is_tensor(t)
                got = sample_weights(KINDS[kind], batch, seed, t)
                assert got.dtype == torch.float32 and torch.equal(got, expected), (seed, step, t)


@pytest.mark.parametrize("counters", [[], [0.0], [3.0, 9.0, 4.0], [2.0**24 - 1], [2.0**24], [2.0**40 + 1]])
def test_weight_step_on_the_device_equals_the_host_read(counters):
    tensors = [torch.tensor(c, dtype=torch.float64) for c in counters]  # as state["step"]
    host = weight_step(tensors)
    assert isinstance(host, int) and host == 1 + int(max(counters, default=0))
    device = weight_step(tensors, capturable=True)
    if counters:
        assert device.dtype == torch.int64 and device.dim() == 0 and int(device) == host
    else:
        assert device == host == 1  # no counter to read: the int
    # A checkpoint of the official code holds an int counter beside tensor ones.
    assert int(weight_step(tensors + [5], capturable=True)) == max(host, 6)


@contextlib.contextmanager
def no_host_reads_in_step_noise():
    """Makes any host read of a tensor (``item``, ``tolist``, ``int()``, ``float()``, ``bool()``,
    ``__index__``) raise while ``StepNoise`` builds the step's noise, its weight vector included. The
    host backends' own reads outside it (their step counters) still work."""
    inside = [False]
    with pytest.MonkeyPatch.context() as patch:
        for name in ("item", "tolist", "__int__", "__float__", "__bool__", "__index__"):
            def guarded(self, *args, _name=name, _read=getattr(torch.Tensor, name), **kwargs):
                if inside[0]:
                    raise AssertionError(f"Tensor.{_name} read on the host while StepNoise drew the noise")
                return _read(self, *args, **kwargs)
            patch.setattr(torch.Tensor, name, guarded)
        for name in ("__init__", "for_call"):
            def watched(*args, _method=getattr(StepNoise, name), **kwargs):
                inside[0] = True
                try:
                    return _method(*args, **kwargs)
                finally:
                    inside[0] = False
            patch.setattr(StepNoise, name, watched)
        yield


def _noisy_run(backend, noise, params, steps=6, **kw):
    """AdaPNM over clones of ``params`` with per-sample gradients; param 1 sits out every third step,
    so the counters differ and ``t_w`` is their maximum."""
    ps = [p.detach().clone().requires_grad_() for p in params]
    opt = CONFIGS["adapnm"](ps, backend=backend, noise=NOISES[noise], seed=SEED, **kw)
    for step in range(steps):
        for i, p in enumerate(ps):
            gen = torch.Generator().manual_seed(step * 1009 + i)
            rows = torch.randn((BATCH, *p.shape), generator=gen, dtype=torch.float64).to(p.dtype)
            p.grad_sample = None if (i == 1 and step % 3 == 1) else rows
        opt.step()
    return ps


@pytest.mark.parametrize("backend", ["reference", "foreach"])
@pytest.mark.parametrize("noise", ["mult_gaussian", "mult_centered", "mult_bernoulli"])
def test_capturable_step_reads_no_counter_on_the_host(noise, backend):
    params = make_params((1, 33, 130))
    host = _noisy_run(backend, noise, params)  # CPU counters, not capturable: read on the host
    with no_host_reads_in_step_noise():
        with pytest.raises(AssertionError, match="read on the host"):
            _noisy_run(backend, noise, params)  # the guard sees that read (at the second step)
        device = _noisy_run(backend, noise, params, capturable=True)
    for a, b in zip(host, device):
        assert torch.equal(a, b)  # the same weights, bit for bit


@needs_cuda
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_cuda_tensor_step_draws_the_cpu_weights(kind):
    counter = torch.tensor(999.0, device="cuda")
    got = sample_weights(KINDS[kind], 64, SEED, weight_step([counter]), "cuda")
    assert got.device.type == "cuda"
    assert torch.equal(got.cpu(), sample_weights(KINDS[kind], 64, SEED, 1000))


@needs_cuda
@pytest.mark.parametrize("backend", _fused_backends())
@pytest.mark.parametrize("noise", ["mult_gaussian", "mult_centered", "mult_bernoulli"])
def test_captured_noisy_step_replays_like_eager_steps(noise, backend):
    """A step captured once draws new weights at every replay (t_w is read from the counters on the
    device), so replays equal eager steps with the same seed and per-sample gradients."""
    params = make_params((1, 4097, 3001), device="cuda")
    eager, graphed = ([p.detach().clone().requires_grad_() for p in params] for _ in range(2))
    opt_eager, opt_graphed = (CONFIGS["demon_adamw_ams"](ps, backend=backend, noise=NOISES[noise], seed=SEED,
                                                          capturable=True) for ps in (eager, graphed))
    static_rows = [torch.zeros((BATCH, *p.shape), device="cuda") for p in graphed]
    for p, rows in zip(graphed, static_rows):
        p.grad_sample = rows

    def feed(step):
        for i, (rows, p) in enumerate(zip(static_rows, eager)):
            gen = torch.Generator().manual_seed(step * 1009 + i)
            p.grad_sample = torch.randn(rows.shape, generator=gen, dtype=torch.float64).to(rows)
            rows.copy_(p.grad_sample)

    def warm_up():
        for step in range(3):
            feed(step)
            opt_graphed.step()
            opt_eager.step()

    graph = capture_after_warm_up(warm_up, opt_graphed.step)

    for step in range(3, 12):
        feed(step)
        graph.replay()
        opt_eager.step()
    torch.cuda.synchronize()
    assert_same_state(opt_eager, opt_graphed, eager, graphed, torch.float32)
