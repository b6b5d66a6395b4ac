"""``torch.ops.noisefuse.sample_weights``: multiplicative noise's weight vector in one kernel launch
(CPU and CUDA), drawn from the stream the torch draw (``noise.transforms.sample_weights``) uses.
Bernoulli weights are integer decisions and agree bit for bit; the Gaussian kinds agree to the
float32 rounding of log and cos (the C library's or CUDA's against torch's vectorised ones)."""
import pytest
import torch

from noise_cases import SEED
from noisefuse.backends import native
from noisefuse.noise import Multiplicative, sample_weights
from noisefuse.noise.step import weight_step
from noisefuse.random.philox import seed_as_int64

pytestmark = pytest.mark.skipif(not native.available(torch.device("cpu")), reason="the native extension is not built")
needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and native.available(torch.device("cuda"))),
                                reason="needs a GPU and the native extension's CUDA kernel")

KINDS = {"gaussian": Multiplicative("gaussian", sigma=0.8),
         "gaussian_centered": Multiplicative("gaussian_centered", sigma=1.3),
         "bernoulli": Multiplicative("bernoulli", prob=0.4),
         "gaussian_wide": Multiplicative("gaussian", small_batch=8)}  # sigma = sqrt((B - 8) / 8)
SEEDS = (0, 5, SEED, 2**63 + 7, 2**64 - 1)
STEPS = (1, 2, 1000, 2**32 + 3)  # lo32(t) enters the counter


def usable(kind, batch):
    noise = KINDS[kind]
    if noise.small_batch is not None and batch <= noise.small_batch:
        pytest.skip("small_batch= needs B > small_batch")
    return noise


def assert_same_weights(got, expected, noise, batch):
    if noise.kind == "bernoulli":
        assert torch.equal(got, expected)
        return
    # |xi| < 8, so one ulp of xi is at most 2^-21; a last-bit difference in log or cos moves xi by a
    # few of them, sigma scales it, and 1 + sigma * xi is rounded once more (an ulp of |w|).
    sigma = noise.sigma_for(batch)
    atol = 4 * sigma * 2.0**-21 + expected.abs().max().item() * 2.0**-23
    torch.testing.assert_close(got, expected, rtol=0, atol=atol)


@pytest.mark.parametrize("batch", [1, 9, 32, 1000])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_op_draws_the_torch_draws_weights(kind, batch):
    noise = usable(kind, batch)
    for seed in SEEDS:
        for step in STEPS:
            got = native.draw_weights(noise, batch, seed, step, "cpu")
            assert got.dtype == torch.float32 and got.shape == (batch,)
            assert_same_weights(got, sample_weights(noise, batch, seed, step), noise, batch)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_device_step_draws_the_int_steps_weights(kind):
    noise = KINDS[kind]
    counter = torch.tensor(999.0)  # as the optimizer has it: t_w = 1 + a float32 counter
    for t in (weight_step([counter], capturable=True), torch.tensor(1000)):
        assert torch.equal(native.draw_weights(noise, 64, SEED, t, "cpu"),
                           native.draw_weights(noise, 64, SEED, 1000, "cpu"))


def test_centered_weights_have_mean_one():
    w = native.draw_weights(KINDS["gaussian_centered"], 4096, SEED, 3, "cpu").double()
    # The xi are centered on their float32-rounded mean: what is left is rounding, not sampling.
    assert abs(w.mean().item() - 1.0) < 1e-6


def test_opcheck():
    args = (torch.tensor(5), 33, seed_as_int64(2**64 - 1), 1, 0.7, 1.0)
    torch.library.opcheck(torch.ops.noisefuse.sample_weights.default, args)


@pytest.mark.parametrize("args, pattern", [
    ((torch.tensor(5.0), 8, 0, 0, 1.0, 1.0), "step must be a one-element int64 tensor"),
    ((torch.tensor([1, 2]), 8, 0, 0, 1.0, 1.0), "step must be a one-element int64 tensor"),
    ((torch.tensor(0), 8, 0, 0, 1.0, 1.0), "step is 1-based, got 0"),
    ((torch.tensor(1), 0, 0, 0, 1.0, 1.0), r"batch_size must be in \[1, 2\^31\), got 0"),
    ((torch.tensor(1), 8, 0, 3, 1.0, 1.0), "kind must be 0 .gaussian., 1 .gaussian_centered. or 2 .bernoulli., got 3"),
    ((torch.tensor(1), 8, 0, 2, 1.0, 0.0), r"prob must be in \(0, 1\], got 0"),
    ((torch.tensor(1), 8, 0, 0, float("nan"), 1.0), "sigma must be finite"),
])
def test_bad_arguments_are_named(args, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        torch.ops.noisefuse.sample_weights(*args)


@needs_cuda
@pytest.mark.parametrize("batch", [1, 257, 5000])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_cuda_op_draws_the_torch_draws_weights(kind, batch):
    noise = usable(kind, batch)
    for seed in SEEDS:
        t = weight_step([torch.tensor(999.0, device="cuda")])  # read on the device
        got = native.draw_weights(noise, batch, seed, t, "cuda")
        assert got.device.type == "cuda"
        assert_same_weights(got.cpu(), sample_weights(noise, batch, seed, 1000), noise, batch)


@needs_cuda
def test_cuda_op_is_captured_with_its_step():
    step = torch.tensor(7, device="cuda")
    noise = KINDS["gaussian_centered"]
    native.draw_weights(noise, 300, SEED, step, "cuda")  # warm-up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = native.draw_weights(noise, 300, SEED, step, "cuda")
    for t in (8, 9):
        step.fill_(t)
        graph.replay()
        torch.testing.assert_close(out.cpu(), native.draw_weights(noise, 300, SEED, t, "cpu"), rtol=0, atol=1e-5)
