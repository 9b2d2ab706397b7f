"""The smoke generation: a headless run of the field's Z-Image graph on a ComfyUI checkout.

``runner.run_smoke`` (no torch) starts ``harness.py`` under the smoke Python; ``writers.py``
writes the seeded synthetic models the harness uses when no real model files are given.
"""
