"""4-D vs 5-D: a 4-D latent and the same latent unsqueezed decode to the same images."""
from __future__ import annotations


def test_4d_and_unsqueezed_latent_decode_identically(probe, patched_checkout, tiny_models):
    r = probe(patched_checkout, "vae", "--vae", tiny_models / "wan21_vae_synthetic.safetensors")
    assert r["latent_dim"] == 3
    assert r["unsqueezed_shape"] == [1, 16, 1, 8, 8] and r["unsqueeze_is_view_of_same_values"]
    assert r["estimate_4d"] > 0 and r["estimate_4d"] == r["estimate_5d"]
    # a 4-D latent decodes to an image batch (B, H, W, C), as from a 2-D VAE (patch 0001);
    # the 5-D one to (B, T, H, W, C): the same pixels
    assert r["decode_shapes"] == [[1, 64, 64, 3], [1, 1, 64, 64, 3]]
    assert r["decode_max_diff"] == 0.0
    assert r["tiled_shapes"] == [[1, 64, 64, 3], [1, 1, 64, 64, 3]] and r["tiled_max_diff"] == 0.0
    assert r["node_shapes"] == [[1, 64, 64, 3], [1, 64, 64, 3]] and r["node_max_diff"] == 0.0
    assert r["decode_std"] > 1e-3


def test_pristine_vae_fails_on_a_4d_latent(probe, pristine_checkout, tiny_models):
    """The same probe on pristine upstream: both decode paths hit the field's IndexError."""
    r = probe(pristine_checkout, "vae", "--vae", tiny_models / "wan21_vae_synthetic.safetensors", "--plain")
    assert r["latent_dim"] == 3
    for name in ("decode", "decode_tiled"):
        assert r[name + "_4d_error"] == "IndexError: tuple index out of range"
        assert r[name + "_4d_where"].replace("\\", "/").endswith("comfy/sd.py")
