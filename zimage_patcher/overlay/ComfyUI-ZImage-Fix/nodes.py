# ComfyUI-ZImage-Fix: nodes for running Z-Image with a Wan 2.1 / Qwen-Image VAE.
# Copyright (C) 2026 zimage-patcher maintainers
#
# This program is free software: you can redistribute it and/or modify it under the terms of
# the GNU General Public License as published by the Free Software Foundation, either
# version 3 of the License, or (at your option) any later version.
#
# This program is distributed in the hope that it will be useful, but WITHOUT ANY WARRANTY;
# without even the implied warranty of MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.
# See the GNU General Public License for more details.
#
# You should have received a copy of the GNU General Public License along with this program.
# If not, see <https://www.gnu.org/licenses/>.
#
# SPDX-License-Identifier: GPL-3.0-or-later


class LatentUnsqueeze:
    """Turn an image latent (B, C, H, W) into a one-frame video latent (B, C, 1, H, W).

    Video VAEs such as the Wan 2.1 VAE (and the Qwen-Image VAE, which has its shape) decode
    (B, C, T, H, W). Image samplers such as Lumina 2 / Z-Image emit (B, C, H, W), which an
    unpatched ComfyUI fails to decode with "IndexError: tuple index out of range". A 5-D latent
    passes through unchanged; every other key of the LATENT dict (noise_mask, batch_index, ...)
    is kept as it is.
    """

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "samples": ("LATENT", {"tooltip": "An image latent (B, C, H, W) or a video latent (B, C, T, H, W)."}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The latent as (B, C, T, H, W), with T = 1 for an image latent.",)
    FUNCTION = "unsqueeze"
    CATEGORY = "latent"
    DESCRIPTION = "Adds a time axis of length 1 to an image latent so that a video VAE (Wan 2.1, Qwen-Image) can decode it."

    def unsqueeze(self, samples):
        latent = samples["samples"]
        if latent.ndim == 5:
            return (samples,)
        if latent.ndim != 4:
            raise ValueError(
                f"LatentUnsqueeze expects a (B, C, H, W) or (B, C, T, H, W) latent, got shape {tuple(latent.shape)}"
            )
        out = samples.copy()
        out["samples"] = latent.unsqueeze(2)
        return (out,)


NODE_CLASS_MAPPINGS = {
    "LatentUnsqueeze": LatentUnsqueeze,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LatentUnsqueeze": "Latent Unsqueeze (image -> 1-frame video)",
}
