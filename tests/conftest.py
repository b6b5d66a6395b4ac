"""Test-session setup: the CUDA emulation's two builds (tests/cuda_emulation.py) start in the
background as soon as the session knows it will run tests/test_cuda_emulated.py, and that file runs
last, so that about two minutes of compiling overlap the other tests (which mostly keep one core
of a CI machine's two busy) instead of following them."""
from __future__ import annotations

EMULATED = "test_cuda_emulated.py"


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.path.name == EMULATED)  # stable: the others keep their order


def pytest_collection_finish(session):
    if session.config.option.collectonly or not any(item.path.name == EMULATED for item in session.items):
        return
    import cuda_emulation

    if cuda_emulation.sanitizer():  # the sanitized child run of test_memory_accesses_are_in_bounds
        return
    session.config._emulation_builds = cuda_emulation.start_background_builds()


def pytest_unconfigure(config):
    for child in getattr(config, "_emulation_builds", []):
        child.wait()
