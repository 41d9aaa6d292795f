"""Cases from our own exporter: the raw ``tiny`` Qwen3-ASR and Whisper bundles (``qgraph.export``).

Expected sites from each bundle's ``config.json`` (``L`` layers of the component's stack):

- Qwen3-ASR ``encoder``: ``skip-layer-norm 2L-1`` (the residual Add before each layer norm
  but the first, which follows the conv stem's Reshape; ``ln_post`` follows a Slice),
  ``gelu L+4`` (one per FFN, three in the conv stem, one in the
  projector), ``attention-encoder L``;
- Qwen3-ASR ``decoder_init`` / ``decoder_step``: Qwen3 decoder, ``rms-norm 4L+1``,
  ``skip-rms-norm 2L``, ``rotary 2L``, ``attention-decoder L``;
- Whisper ``encoder_model``: ``skip-layer-norm 2L+1`` (the first adds the position table),
  ``gelu L+2``, ``attention-encoder L``;
- Whisper ``decoder_model_merged``: an ``If`` on ``use_cache_branch`` whose two branches are a
  whole decoder each (with and without the cache): ``skip-layer-norm 2(3L+1)``, ``gelu 2L``,
  ``attention-decoder 2L``, ``attention-cross 2L``; the numeric check runs both branches.

``tests/conftest.py`` (``tiny_raw``) and ``tests/export/whisper_bundles.py`` (``tiny_whisper``)
export these bundles once per test session; the benchmark exports them into its work folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .cases import Case

SOURCE = "qgraph-export"


def qwen3_asr_cases(bundle: Path) -> list[Case]:
    config = json.loads((bundle / "config.json").read_text())
    enc, dec = config["encoder"], config["decoder"]
    le, ld = enc["num_layers"], dec["num_layers"]
    # encoder: conv stem -> layers (pre-norm) -> ln_post -> proj1 -> GELU -> proj2; every layer's
    # FFN has one GELU (with its bias) and the stem has one GELU per conv layer (3 convs).
    encoder_sites = {"skip-layer-norm": 2 * le - 1, "gelu": le + 4, "attention-encoder": le}
    decoder_sites = {
        "rms-norm": 4 * ld + 1,
        "skip-rms-norm": 2 * ld,
        "rotary": 2 * ld,
        "attention-decoder": ld,
    }
    common = dict(source=SOURCE, vocab=128)
    return [
        Case(
            "qwen3-asr/encoder",
            "encoder",
            path=bundle / "encoder.onnx",
            expected=encoder_sites,
            num_heads=enc["num_heads"],
            hidden_size=enc["hidden_size"],
            dims={"batch": 1, "time": 200},
            tolerance=2e-4,
            **common,
        ),
        *(
            Case(
                f"qwen3-asr/{name}",
                "decoder",
                path=bundle / f"{name}.onnx",
                expected=decoder_sites,
                num_heads=dec["num_attention_heads"],
                hidden_size=dec["hidden_size"],
                dims={"seq": 8, "audio_tokens": 4},
                fixed={"audio_offset": np.zeros(1, np.int64)},
                tolerance=2e-4,
                **common,
            )
            for name in ("decoder_init", "decoder_step")
        ),
    ]


def whisper_cases(bundle: Path) -> list[Case]:
    config = json.loads((bundle / "config.json").read_text())
    le, ld = config["encoder_layers"], config["decoder_layers"]
    branch = np.ones(1, np.bool_)
    return [
        Case(
            "whisper/encoder_model",
            "encoder",
            SOURCE,
            bundle / "onnx" / "encoder_model.onnx",
            {"skip-layer-norm": 2 * le + 1, "gelu": le + 2, "attention-encoder": le},
            num_heads=config["encoder_attention_heads"],
            hidden_size=config["d_model"],
            dims={"batch": 1},
            tolerance=2e-4,
        ),
        Case(
            "whisper/decoder_model_merged",
            "decoder",
            SOURCE,
            bundle / "onnx" / "decoder_model_merged.onnx",
            {
                "skip-layer-norm": 2 * (3 * ld + 1),
                "gelu": 2 * ld,
                "attention-decoder": 2 * ld,
                "attention-cross": 2 * ld,
            },
            num_heads=config["decoder_attention_heads"],
            hidden_size=config["d_model"],
            dims={"enc": 6},
            vocab=config["vocab_size"],
            tolerance=2e-4,
            variants=({"use_cache_branch": branch}, {"use_cache_branch": ~branch}),
        ),
    ]
