"""``train.py`` with flash-attention 2 (upstream's entry point for its recipes).

    deepspeed llava/train/train_mem.py --deepspeed ./scripts/zero3.json ...

Without the ``flash-attn`` package or a CUDA device, the run uses sdpa attention and says so.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from llava.train.train import train


def main(argv: Sequence[str] | None = None) -> None:
    train(attn_implementation="flash_attention_2", argv=argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
