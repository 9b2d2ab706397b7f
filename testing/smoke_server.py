"""The smoke interpreter, started once per test process: a fork server (testing/fork_server.py) with
torch and the other third-party packages of the smoke imported already. A smoke run (harness.py,
tests/smoke/probe.py) spends ~4 s of its ~5 s starting Python and importing torch, torchvision,
transformers and scipy; about twenty-five tests run one, so they share that import and fork from it.

`start(python, folder)` returns the server and FOLDER/bin/python, which stands in for PYTHON: give it
to the runner as the smoke Python. `python SCRIPT.py ARGS` runs forked from the server, as
`python SCRIPT.py` would; anything else (`-c`, `-m`, options) execs PYTHON itself.

Still a real process with real torch and real ComfyUI: only modules outside the checkout are
imported in advance (never ComfyUI or ComfyUI-GGUF, so each run imports the checkout it is given,
pristine or patched). What the preloaded packages read once at import time (e.g. OMP_NUM_THREADS)
is the server's environment, not the run's; the smoke sets none of it, and the server has
OMP_WAIT_POLICY=PASSIVE (below).
"""
from __future__ import annotations

import os

from testing import fork_server

# What harness.py, probe.py and ComfyUI import from outside the checkout (SMOKE_MODULES first:
# a server that cannot import them says so, and the tests skip with that reason).
SMOKE_MODULES = ("torch", "numpy", "gguf", "sentencepiece", "safetensors")
PRELOAD = ("torchvision", "torchvision.ops", "scipy", "scipy.stats", "einops", "einops.layers.torch",
           "yaml", "PIL.Image", "PIL.PngImagePlugin", "torchsde", "av", "psutil", "tqdm",
           "tokenizers", "huggingface_hub", "sympy", "safetensors.torch", "gguf.gguf_reader",
           "google.protobuf.text_format", "sentencepiece.sentencepiece_model_pb2", "transformers",
           *(f"transformers:{name}" for name in ("CLIPTokenizer", "T5TokenizerFast", "T5Config",
                                                 "LlamaTokenizerFast", "Qwen2Tokenizer", "Qwen2Config",
                                                 "ByT5Tokenizer", "BertTokenizer")))


def start(python: str, folder):
    """Serve PYTHON from FOLDER (a Path): (the server, its stand-in FOLDER/bin/python). RuntimeError,
    naming the module, when PYTHON lacks one of SMOKE_MODULES."""
    # torch's OpenMP threads spin while they wait for work, by default: beside the suite's other workers
    # that was 4.5% of a run's CPU (perf: libgomp). PASSIVE has them sleep; the results are the same.
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ}
    server = fork_server.start(python, folder, required=SMOKE_MODULES, preload=PRELOAD, env=env)
    return server, server.program(folder / "bin" / "python")
