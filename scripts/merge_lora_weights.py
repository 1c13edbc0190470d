"""Merge a LoRA run into its base model and save a full LLaVA checkpoint.

    python scripts/merge_lora_weights.py --model-path ./checkpoints/llava-v1.5-7b-prumerge-lora \\
        --model-base liuhaotian/llava-v1.5-7b --save-model-path ./checkpoints/llava-v1.5-7b-prumerge-merged

The LoRA folder is loaded the way inference loads it (``load_pretrained_model``: base weights, then
``non_lora_trainables.bin``, then the adapter, merged), on the CPU. The result is saved in the released layout:
config.json (with the run's ``mm_token_reduction``), weights in ``--save-dtype`` (float16 as released LLaVA
checkpoints, the default) without the CLIP weights (loaded from ``mm_vision_tower``), and the tokenizer. The
checkpoint is written to a temporary folder beside the target and renamed into place when complete.

Name the output folder with "llava" in it (and without "lora"): loaders pick the full-checkpoint path by name.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from llava.mm_utils import get_model_name_from_path, save_tokenizer
from llava.model.builder import load_pretrained_model
from llava.train.saving import release_tower_keys

logger = logging.getLogger("merge_lora_weights")

SAVE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
VISION_TOWER_PREFIX = "model.vision_tower."


def merge_lora(model_path: str, model_base: str, save_model_path: str, save_dtype: str = "float16") -> Path:
    """Load ``model_path`` (LoRA) on ``model_base``, merge, save a full checkpoint to ``save_model_path``."""
    model_name = get_model_name_from_path(model_path)
    if "lora" not in model_name.lower() and not (Path(model_path) / "adapter_config.json").is_file():
        raise ValueError(f"{model_path} is not a LoRA checkpoint (no adapter_config.json and no 'lora' in its name)")
    # The base's tokenizer comes back as the Llama tokenizer it declares (llava._tokenization.load_tokenizer) and
    # is saved with its tokenizer.model, so the merged checkpoint tokenizes as the run did.
    tokenizer, model, _, _ = load_pretrained_model(model_path, model_base, model_name, device_map="cpu", device="cpu")
    model.to(SAVE_DTYPES[save_dtype])
    state = model.state_dict()
    if model.config.unfreeze_mm_vision_tower:  # LLaVA-1.6: the finetuned CLIP is part of the checkpoint
        state = release_tower_keys({k: v for k, v in state.items() if not k.endswith("embeddings.position_ids")})
    else:  # the CLIP weights come from mm_vision_tower
        state = {k: v for k, v in state.items() if not k.startswith(VISION_TOWER_PREFIX)}

    target = Path(save_model_path).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, state_dict=state)
        save_tokenizer(tokenizer, tmp)
        tmp.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    logger.info("merged %s onto %s -> %s (%s)", model_path, model_base, target, save_dtype)
    return target


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", required=True, help="the LoRA run's output folder")
    parser.add_argument("--model-base", required=True, help="the model the LoRA run started from")
    parser.add_argument("--save-model-path", required=True, help="folder for the merged checkpoint")
    parser.add_argument("--save-dtype", choices=sorted(SAVE_DTYPES), default="float16",
                        help="dtype of the saved weights (default float16, as released LLaVA checkpoints)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    merge_lora(args.model_path, args.model_base, args.save_model_path, args.save_dtype)


if __name__ == "__main__":
    main()
