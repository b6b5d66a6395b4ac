"""The end-to-end example runs (a few steps of every configuration) and writes its plot."""
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_digits.py"


def test_train_digits_runs_every_configuration(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("train_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--epochs", "2", "--max-steps", "3", "--out", str(tmp_path), "--state-dtype", "8bit"])
    assert [r["name"] for r in results] == list(module.configurations(total_steps=10))
    assert all(r["steps"] == 3 and 0.0 <= r["test_accuracy"] <= 1.0 for r in results)
    assert (tmp_path / "digits_curves.png").stat().st_size > 0
    assert "test accuracy" in capsys.readouterr().out


LM_EXAMPLE = EXAMPLE.with_name("train_tiny_lm.py")


def test_train_tiny_lm_runs_every_optimizer_and_state(tmp_path, capsys):
    pytest.importorskip("transformers")
    spec = importlib.util.spec_from_file_location("train_tiny_lm", LM_EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--steps", "3", "--out", str(tmp_path)])
    assert [(r["optimizer"], r["state"]) for r in results] == [
        (name, state) for name in ("PNM", "AdaPNM", "DemonAdam")
        for state in ("float32", "bfloat16", "8bit", "8bit-linear")]
    # Three steps from random weights: still near the uniform guess, and finite.
    assert all(0.0 < r["test_loss"] < 7.0 and 0.0 < r["train_loss"] < 7.0 for r in results)
    assert (tmp_path / "tiny_lm_curves.png").stat().st_size > 0
    assert "test loss" in capsys.readouterr().out
