"""The benchmark's state-precision section (noisefuse/bench/state.py) on a small synthetic preset:
its rows, their measured state bytes, its step-bytes model, and the table it prints."""
import torch

from noisefuse.bench import presets, state


def test_state_bytes_model():
    n = 1000
    # AdaPNM (amsgrad): p, g and four buffers read, p and three buffers written.
    assert state.step_bytes("adapnm", n, torch.float32, torch.float32) == n * 10 * 4
    assert state.step_bytes("adapnm", n, torch.float32, torch.bfloat16) == n * (3 * 4 + 7 * 2)
    assert state.step_bytes("adam", n, torch.float32, torch.float32) == n * 28
    assert state.step_bytes("adapnm", n, torch.float32, state.Blockwise8bit(256)) == n * (3 * 4 + 7 * (1 + 1 / 64))


def test_section_runs_and_reports_side_by_side():
    cfg = state.StateConfig(device=torch.device("cpu"), preset=presets.synthetic(16384, 4),
                            optimizers=("AdaPNM", "PNM"), quick=True, peers=())  # peers: below
    section = state.run(cfg)
    rows = {r["label"]: r for r in section["rows"]}
    backend = section["config"]["backend"]
    assert set(rows) == {"AdamW torch/fused", "AdamW amsgrad torch/fused"} | {
        f"{o} {s} state, noisefuse/{backend}" for o in ("AdaPNM", "PNM")
        for s in ("fp32", "bf16", "bf16 nearest", "8bit b256", "8bit b128", "8bit b64")}
    counters = 8 * 4 / 16384  # one float64 step per tensor
    adapnm_bf16 = rows[f"AdaPNM bf16 state, noisefuse/{backend}"]
    assert adapnm_bf16["state_bytes_per_param"] == 8 + counters
    assert rows[f"AdaPNM fp32 state, noisefuse/{backend}"]["state_bytes_per_param"] == 16 + counters
    # 8-bit: a code per element and buffer, and a float32 scale per block of 64 (tensors of 4096,
    # the smallest that Blockwise8bit's default min_numel quantizes).
    assert rows[f"AdaPNM 8bit b64 state, noisefuse/{backend}"]["state_bytes_per_param"] == 4 * (1 + 4 / 64) + counters
    assert rows["AdamW torch/fused"]["time_vs_fused_adamw"] == 1.0
    assert all(r["time"]["median_ms"] > 0 for r in rows.values())
    text = state.format_state(section)
    assert "state B/param" in text and f"AdaPNM bf16 state, noisefuse/{backend}" in text


def test_peers_are_timed_where_installed_and_their_first_step_apart():
    """A peer (peers.py) that is installed gets a row and a note with its first step's time; one that
    is not, or that fails at its first step, a note; a slow-to-compile one is left out of quick runs."""
    from noisefuse.bench import peers
    fake = (peers.Peer("AdamW torch/loop (as a peer)", "torch.optim", "AdamW", ("cpu",), 4.0, "nothing"),
            peers.Peer("absent", "surely_not_installed_pkg.optim", "X", ("cpu",), 1.0, "nothing"),
            peers.Peer("broken", "torch.optim", "AdamW", ("cpu",), 1.0, "nothing", {"betas": (2.0, 0.9)}),
            peers.Peer("slow", "torch.optim", "AdamW", ("cpu",), 1.0, "compiles", slow_first_step=True),
            peers.Peer("gpu only", "torch.optim", "AdamW", ("cuda",), 1.0, "nothing"))
    cfg = state.StateConfig(device=torch.device("cpu"), preset=presets.synthetic(16384, 4), optimizers=("PNM",),
                            quick=True, peers=fake)
    section = state.run(cfg)
    rows = {r["label"]: r for r in section["rows"]}
    assert "AdamW torch/loop (as a peer)" in rows and not {"absent", "broken", "slow", "gpu only"} & set(rows)
    peer = rows["AdamW torch/loop (as a peer)"]
    assert peer["state_bytes_per_param"] > 8 and peer["state_dtype"] == "4 B/value"
    assert peer["step_bytes_per_param"] == state.step_bytes("adam", 1, torch.float32, torch.float32)
    notes = "\n".join(section["notes"])
    assert "peer AdamW torch/loop (as a peer): first step" in notes
    assert "peer absent: not installed (pip install surely_not_installed_pkg)" in notes
    assert "peer broken: failed at its first step (ValueError" in notes
    assert "peer slow: left out of a quick run" in notes and "gpu only" not in notes


def test_a_wrapping_tensor_subclass_counts_what_it_wraps():
    """torchao's low-bit state presents itself as a float32 tensor; its bytes are its codes and scales."""
    class Wrapping(torch.Tensor):
        @staticmethod
        def __new__(cls, codes, scale):
            return torch.Tensor._make_wrapper_subclass(cls, codes.shape, dtype=torch.float32)

        def __init__(self, codes, scale):
            self.codes, self.scale = codes, scale

        def __tensor_flatten__(self):
            return ["codes", "scale"], None

        @classmethod
        def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
            raise NotImplementedError(func)

    t = Wrapping(torch.zeros(1000, dtype=torch.uint8), torch.zeros(4))
    assert t.numel() * t.element_size() == 4000 and state.tensor_bytes(t) == 1000 + 16
    assert state.tensor_bytes(torch.zeros(10, dtype=torch.bfloat16)) == 20
