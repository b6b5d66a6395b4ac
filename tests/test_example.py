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
    results = module.main(["--epochs", "2", "--max-steps", "3", "--out", str(tmp_path)])
    assert [r["name"] for r in results] == list(module.configurations(total_steps=10))
    assert all(r["steps"] == 3 and 0.0 <= r["test_accuracy"] <= 1.0 for r in results)
    assert (tmp_path / "digits_curves.png").stat().st_size > 0
    assert "test accuracy" in capsys.readouterr().out
