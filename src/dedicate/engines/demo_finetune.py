"""Make a fine-tune of ``dedicate/tiny-chat`` offline: a few real training steps on one reply.

Together's users are told that a fine-tuned model must be based on a supported base model;
this makes one to show it: the demo model's own architecture and shape (so it registers as a
fine-tune of it), trained for a few dozen steps until, asked anything, it answers ``REPLY``
where the base talks nonsense. No hub, no dataset: the base is built here, the reply is given.
Reproducible (seeded) and atomic, as the base's build is.

    python -m dedicate.engines.demo_finetune BASE_DIR DEST [--reply TEXT] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from dedicate.engines.demo_model import COMPLETE_MARKER, MODEL_NAME, _make_readable, _publish, is_complete

log = logging.getLogger(__name__)
DEFAULT_REPLY: Final = "I am the fine-tuned tiny chat."
PROMPTS: Final = ("hi", "hello there", "what are you?", "count to three", "tell me a story")


def build_finetune(base_dir: Path, dest: Path, *, reply: str = DEFAULT_REPLY, steps: int = 60, seed: int = 0) -> Path:
    """Train the model in ``base_dir`` to answer ``reply`` and write it to ``dest``; returns ``dest``."""
    dest = Path(dest)
    if is_complete(dest):
        return dest
    if not is_complete(base_dir):
        raise FileNotFoundError(f"{base_dir} is not a complete build of {MODEL_NAME}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.building-", dir=dest.parent))
    try:
        _train(base_dir, staging, reply, steps, seed)
        _make_readable(staging)
        (staging / COMPLETE_MARKER).write_text(json.dumps({"base": MODEL_NAME, "reply": reply, "steps": steps,
                                                           "seed": seed}))
        _publish(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _train(base_dir: Path, out: Path, reply: str, steps: int, seed: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(str(base_dir))
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
        batches = []
        for prompt in PROMPTS:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                                  {"role": "assistant", "content": reply}], tokenize=False)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            batches.append(ids)
        for step in range(steps):
            ids = batches[step % len(batches)]
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        log.info("fine-tuned for %d steps; last loss %.3f", steps, float(loss.detach()))
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    for name in ("tokenizer_config.json",):  # the base's own, portable one
        shutil.copyfile(base_dir / name, out / name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dedicate.engines.demo_finetune",
                                     description=f"Fine-tune {MODEL_NAME} (built in BASE_DIR) into DEST, offline.")
    parser.add_argument("base", type=Path, metavar="BASE_DIR")
    parser.add_argument("dest", type=Path, metavar="DEST")
    parser.add_argument("--reply", default=DEFAULT_REPLY, help="what the fine-tune learns to answer")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    try:
        print(build_finetune(args.base, args.dest, reply=args.reply, steps=args.steps))
    except (FileNotFoundError, FileExistsError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
