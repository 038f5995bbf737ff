"""Build ``dedicate/tiny-chat``: a tiny chat model made offline from nothing.

The platform needs a real model to exercise replicas, the gateway and the
tests, but it must never download weights from a hub. So we make one: a
byte-level BPE tokenizer trained on a small corpus that ships with the
package, and a two-layer Llama with random weights. It talks nonsense, but it
loads through the standard ``AutoTokenizer`` / ``AutoModelForCausalLM`` path,
has a chat template and an end-of-turn token, and builds in a few seconds.

The build is reproducible (same seed, byte-identical weights) and atomic: it is
written into a temporary sibling directory, marked complete, then renamed into
place, so a crashed or concurrent build never leaves a half-written model
where a replica might load it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # imported lazily at run time: importing this module should stay cheap
    from transformers import PreTrainedTokenizerFast

MODEL_NAME: Final = "dedicate/tiny-chat"
COMPLETE_MARKER: Final = ".complete"
VOCAB_SIZE: Final = 2000
CONTEXT_LENGTH: Final = 2048

PAD_TOKEN: Final = "<|pad|>"
BOS_TOKEN: Final = "<|begin|>"
EOS_TOKEN: Final = "<|end|>"
SYSTEM_TOKEN: Final = "<|system|>"
USER_TOKEN: Final = "<|user|>"
ASSISTANT_TOKEN: Final = "<|assistant|>"
ROLE_TOKENS: Final = (SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN)
# Order fixes the ids: pad=0, begin=1, end=2, then the role markers.
SPECIAL_TOKENS: Final = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, *ROLE_TOKENS)

# Each turn is "<|role|>\ncontent<|end|>\n"; a generation prompt opens an
# assistant turn so the model's reply ends with <|end|>, which is eos.
CHAT_TEMPLATE: Final = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('Unsupported role: ' ~ message['role']) -}}"
    "{%- endif -%}"
    "{{- '<|' ~ message['role'] ~ '|>\\n' ~ message['content'] ~ '<|end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)

log = logging.getLogger(__name__)


def build_demo_model(dest: Path, seed: int = 0) -> Path:
    """Build the demo model into ``dest`` unless a complete build is already there.

    Returns ``dest``. Safe to call from several processes at once: each builds
    privately and only one rename wins; the others find the winner's build.
    """
    dest = Path(dest)
    if is_complete(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.building-", dir=dest.parent))
    try:
        _write_model(staging, seed)
        _make_readable(staging)
        (staging / COMPLETE_MARKER).write_text(json.dumps({"model": MODEL_NAME, "seed": seed}))
        _publish(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _make_readable(directory: Path) -> None:
    """Give the build ordinary permissions: mkdtemp and safetensors create owner-only ones.

    Replicas may run as another user than the builder; the model is no secret.
    """
    os.chmod(directory, 0o755)
    for item in directory.iterdir():
        os.chmod(item, 0o644)


def is_complete(path: Path) -> bool:
    """A build counts only once its marker exists; the marker is written last."""
    return (path / COMPLETE_MARKER).is_file()


def _publish(staging: Path, dest: Path) -> None:
    """Move the finished build into place, tolerating a concurrent builder.

    An empty ``dest`` (say, created by a caller ahead of time) is replaced; a
    non-empty one that is not a complete build is left alone rather than
    deleted, since it may hold somebody's files.
    """
    if dest.is_dir() and not any(dest.iterdir()):
        dest.rmdir()
    try:
        os.rename(staging, dest)
    except OSError:
        if is_complete(dest):
            return  # another process won the race with an equivalent build
        raise FileExistsError(f"{dest} exists and is not a complete demo model build") from None


def _write_model(out: Path, seed: int) -> None:
    """Write tokenizer and weights into ``out`` (an empty directory)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the build is a few seconds; bars only clutter logs
    tokenizer = _build_tokenizer()
    tokenizer.save_pretrained(out)
    _make_tokenizer_config_portable(out / "tokenizer_config.json")
    _save_weights(out, seed, tokenizer)


def corpus_text() -> str:
    """The training text that ships with the package (original prose, no downloads)."""
    return (resources.files("dedicate.engines") / "data" / "corpus.txt").read_text("utf-8")


def _corpus_paragraphs() -> Iterator[str]:
    """Paragraphs as training units, so merges never span paragraph breaks."""
    for paragraph in corpus_text().split("\n\n"):
        if paragraph.strip():
            yield paragraph


def _build_tokenizer() -> PreTrainedTokenizerFast:
    """Train a byte-level BPE and wrap it as a transformers fast tokenizer.

    Byte-level means any input string can be encoded (no unknown tokens), so
    the server never has to reject text the corpus did not contain.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_corpus_paragraphs(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=list(ROLE_TOKENS),
        model_max_length=CONTEXT_LENGTH,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _make_tokenizer_config_portable(path: Path) -> None:
    """Rewrite tokenizer_config.json so older transformers (e.g. in other engines) load it too.

    transformers 5 names its class ``TokenizersBackend`` and stores the extra
    special tokens as ``extra_special_tokens``; 4.x knows neither. The classic
    names are understood by both, and an inline chat template by every version.
    """
    config = json.loads(path.read_text("utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = config.pop("extra_special_tokens", list(ROLE_TOKENS))
    config["additional_special_tokens"] = extra
    config["chat_template"] = CHAT_TEMPLATE
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", "utf-8")


def _save_weights(out: Path, seed: int, tokenizer: PreTrainedTokenizerFast) -> None:
    """Create the random-weight Llama from ``seed`` and save it as safetensors."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,  # tied random weights just echo the last token
    )
    # fork_rng keeps the caller's global RNG untouched by our seeding.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dedicate.engines.demo_model",
        description=f"Build the {MODEL_NAME} demo model offline into DEST.",
    )
    parser.add_argument("dest", type=Path, metavar="DEST", help="directory to build into")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: build (or find) the model and print where it is."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    try:
        path = build_demo_model(args.dest, seed=args.seed)
    except FileExistsError as exc:
        log.error("%s", exc)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
