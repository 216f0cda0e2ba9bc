"""Shared test fixtures.

Real datasets live beside the repo in ../shared/datasets (override: QDEPLOY_SHARED).
Under CI (CI=true) a test that needs them fails instead of skipping.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_datasets() -> Path:
    return Path(os.environ.get("QDEPLOY_SHARED", REPO.parent / "shared")) / "datasets"


@pytest.fixture
def datasets_dir() -> Path:
    d = shared_datasets()
    if not d.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{d} is missing: CI must run the real-dataset tests")
        pytest.skip(f"{d} not present")
    return d


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one torch thread is much faster than two spinning against a busy machine."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """One tiny train stage for every bad-input case that needs a model (copy it before changing it)."""
    from corpus import RECIPE, TINY

    from qdeploy.cli import main

    build = tmp_path_factory.mktemp("trained") / "build"
    assert main(["train", "--build-dir", str(build), *TINY]) == 0
    assert (build / RECIPE / "train" / "stage.json").is_file()
    return build
