"""The tokenizer: SentencePiece pieces in GGUF metadata -> spiece_model; an external file wins."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tok(probe, patched_checkout, tmp_path_factory):
    """One probe run: the embedded rebuild, then each external location in turn.

    Lookup order of the patch (0004): next to the GGUF as <name>.tokenizer.model,
    <name without quant suffix>.tokenizer.model, tokenizer.model; then ComfyUI's text_encoders
    folders. A file with more pieces than the token embedding is ignored."""
    te_folder = patched_checkout / "models" / "text_encoders" / "tokenizer.model"
    return probe(patched_checkout, "tokenizer", "--gguf-dir", patched_checkout / "custom_nodes" / "ComfyUI-GGUF",
                 "--out", tmp_path_factory.mktemp("tok"),
                 "--external", "tokenizer.model",
                 "--external", "gemma-3-tok-Q8_0.tokenizer.model",
                 "--external", "gemma-3-tok.tokenizer.model",
                 "--external", f"{te_folder}",
                 "--external", "tokenizer.model@600")


def test_rebuilt_tokenizer_encodes_like_the_original(tok):
    e = tok["embedded"]
    assert e["has_spiece_model"]
    assert e["pieces"] == e["reference_pieces"] == 512
    assert e["n_differ"] == 0, e["differ"]
    assert e["n_texts"] > 200
    assert e["ids"] == e["reference_ids"] == {"bos": 2, "eos": 1, "pad": 0, "unk": 3}
    assert e["decode_roundtrip"]
    # ComfyUI's own SPieceTokenizer over the rebuilt model: BOS first, then the same ids
    assert e["comfy_bos_first"] and e["comfy_matches"]


@pytest.mark.parametrize("where", ["tokenizer.model", "gemma-3-tok-Q8_0.tokenizer.model",
                                   "gemma-3-tok.tokenizer.model", "text_encoders folder"])
def test_an_external_tokenizer_model_wins(tok, where):
    ext = tok["external"]
    key = next(k for k in ext if k.endswith("text_encoders/tokenizer.model")) if where == "text_encoders folder" \
        else where
    e = ext[key]
    assert e["has_spiece_model"] and e["pieces"] == 400
    assert e["bytes_equal_external"] and e["encodes_like_external"] and not e["encodes_like_embedded"]


def test_an_external_tokenizer_too_big_for_the_embedding_is_ignored(tok):
    e = tok["external"]["tokenizer.model@600"]
    assert e["has_spiece_model"] and e["pieces"] == 512
    assert not e["bytes_equal_external"] and e["encodes_like_embedded"]


def test_real_vocabulary_size_embedding_and_tokenizer(probe, patched_checkout, tmp_path):
    """262144 rows as in the real Gemma 3 GGUF: the loader dequantizes the embedding (>= 64K rows)
    and rebuilds a 262144-piece tokenizer (llama.cpp pads the 512 trained pieces with [PADn])."""
    r = probe(patched_checkout, "bigvocab", "--gguf-dir", patched_checkout / "custom_nodes" / "ComfyUI-GGUF",
              "--out", tmp_path)
    assert r["embed_shape"] == [262144, 128] and not r["embed_quantized"] and r["embed_dtype"] == "torch.float16"
    assert r["embed_max_diff"] < 2e-3 * r["embed_scale"]
    assert r["pieces"] == 262144 and r["pad_piece_unused"]
    assert r["encodes_like_original"]
