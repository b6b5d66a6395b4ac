"""The foreach backend equals the reference in params and every state tensor."""
import pytest
import torch

from cases import CONFIGS, SIZES, assert_same_state, compare_backends, make_params, run

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_foreach_matches_reference(config, dtype):
    compare_backends(config, "foreach", dtype=dtype, steps=20)


@pytest.mark.parametrize("config", ["adapnm", "demon_sgd_nesterov", "pnm_l2_demon"])
def test_foreach_maximize(config):
    compare_backends(config, "foreach", maximize=True)


@pytest.mark.parametrize("config", ["adapnm_noams_demon", "demon_adamw_ams"])
def test_param_groups_with_own_hyperparameters(config):
    params = make_params(SIZES + (17,))
    groups = [
        {"params": [0, 1, 2]},
        {"params": [3], "lr": 0.002, "weight_decay": 0.0},
        {"params": [4], "eps": 1e-3, "weight_decay": 0.1},
    ]
    pa, oa = run(config, "reference", params, groups=groups)
    pb, ob = run(config, "foreach", params, groups=groups)
    assert_same_state(oa, ob, pa, pb, torch.float32)


def test_mixed_dtypes_in_one_group():
    # One group, two (device, dtype) buckets: each is a separate fused call.
    params = make_params((5, 33)) + make_params((7,), dtype=torch.bfloat16)
    pa, oa = run("adapnm", "reference", params)
    pb, ob = run("adapnm", "foreach", params)
    assert_same_state(oa, ob, pa[:2], pb[:2], torch.float32)
    assert_same_state(oa, ob, pa[2:], pb[2:], torch.bfloat16)
