"""Which torch the managed smoke venv gets: CPU wheels on a machine without an NVIDIA GPU when PyTorch's
CPU index answers (about 1 GB instead of 6), PyPI's CUDA build otherwise, and it says why. Real
processes: a stand-in nvidia-smi on PATH, a local HTTP server as the index."""
from __future__ import annotations

import http.server
import socket
import threading

import pytest

from zimage_patcher.smoke import runner


@pytest.fixture
def index(tmp_path):
    """A local pip index that serves /torch/; its URL."""
    (tmp_path / "idx" / "torch").mkdir(parents=True)
    (tmp_path / "idx" / "torch" / "index.html").write_text("<html></html>")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(tmp_path / "idx"), **k)

        def log_message(self, *a):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def no_gpu(monkeypatch, tmp_path):
    """PATH without nvidia-smi (an empty folder)."""
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delenv(runner.ENV_TORCH, raising=False)
    return tmp_path / "bin"


def test_no_gpu_and_a_reachable_cpu_index_gets_cpu_wheels(no_gpu, index, monkeypatch):
    monkeypatch.setenv(runner.ENV_CPU_INDEX, index)
    url, why = runner.torch_source()
    assert url == index and "no NVIDIA GPU" in why
    cmd = runner.install_command(runner.Path("/v/bin/python"), url)
    assert cmd[cmd.index("--extra-index-url") + 1] == index and cmd[-2:] == ["-r", str(runner.REQUIREMENTS)]


def test_an_unreachable_index_falls_back_to_pypi_and_says_so(no_gpu, monkeypatch):
    with socket.socket() as s:           # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(runner.ENV_CPU_INDEX, f"http://127.0.0.1:{port}")
    url, why = runner.torch_source()
    assert url is None and "does not answer" in why
    assert "--extra-index-url" not in runner.install_command(runner.Path("/v/bin/python"), url)


def test_a_gpu_gets_the_cuda_build(no_gpu, index, monkeypatch):
    smi = no_gpu / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-x)'\n")
    smi.chmod(0o755)
    monkeypatch.setenv(runner.ENV_CPU_INDEX, index)
    assert runner.torch_source() == (None, "PyPI's torch build, with CUDA: nvidia-smi lists a GPU")
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")     # a driver without a GPU
    assert runner.torch_source()[0] == index


def test_the_choice_can_be_forced(no_gpu, monkeypatch, index):
    monkeypatch.setenv(runner.ENV_CPU_INDEX, index)
    monkeypatch.setenv(runner.ENV_TORCH, "pypi")
    assert runner.torch_source()[0] is None
    monkeypatch.setenv(runner.ENV_TORCH, "cpu")
    assert runner.torch_source() == (index, f"CPU wheels from {index} (${runner.ENV_TORCH}=cpu)")
