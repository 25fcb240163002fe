"""``python -m quartet_compile.export MODEL_DIR OUT_DIR``: the NVFP4 checkpoint of a
``transformers`` model directory trained with the backend (``quartet-export`` does the same)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from ..config import Recipe
from .checkpoint import export
from .formats import Format

_TOKENIZER_FILES = (
    "tokenizer*",
    "special_tokens_map.json",
    "generation_config.json",
    "*.model",
    "vocab*",
    "merges.txt",
)
"""Files besides the weights and the config that a model directory carries to the checkpoint."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path, help="a transformers model directory (save_pretrained)")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--format", choices=[f.value for f in Format], default=Format.COMPRESSED_TENSORS.value)
    parser.add_argument("--recipe", choices=[r.value for r in Recipe], default=Recipe.QUARTET2.value,
                        help="the recipe the model was trained with (default: %(default)s)")  # fmt: skip
    parser.add_argument("--seq-len", type=int, default=128, help="length of the example input that finds the layers")
    parser.add_argument("--no-fuse", action="store_true", help="one tensor scale per weight, also for q/k/v, gate/up")
    parser.add_argument("--calibration", type=Path, metavar="TOKENS_PT",
                        help="token ids [batches, length] saved with torch.save: W4A4, with static input scales "
                        "from these batches (needed for --format modelopt)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        import transformers
    except ImportError as error:
        raise SystemExit("quartet-export reads transformers model directories: pip install transformers") from error
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model_dir)
    tokens = torch.zeros(1, args.seq_len, dtype=torch.long)
    calibration = None
    if args.calibration is not None:
        calibration = [row[None] for row in torch.load(args.calibration)]
    report = export(
        model,
        args.out_dir,
        tokens,
        format=args.format,
        activations="none" if calibration is None else "calibrated",
        calibration=calibration,
        options={"recipe": args.recipe},
        fuse=not args.no_fuse,
    )
    for pattern in _TOKENIZER_FILES:
        for path in args.model_dir.glob(pattern):
            shutil.copy2(path, args.out_dir / path.name)
    print(report)


if __name__ == "__main__":
    main()
