"""The demo model builds offline, reproducibly and atomically, and loads the standard way."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dedicate.engines import demo_model
from dedicate.engines.demo_model import COMPLETE_MARKER, build_demo_model, is_complete

from . import session_demo_model


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return session_demo_model(tmp_path_factory)


def test_same_seed_gives_identical_files(model_dir: Path, tmp_path: Path) -> None:
    again = build_demo_model(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (again / name).read_bytes() == (model_dir / name).read_bytes(), name


def test_other_seed_changes_weights_only(model_dir: Path, tmp_path: Path) -> None:
    rng_before = torch.random.get_rng_state()
    other = build_demo_model(tmp_path / "other", seed=1)
    assert torch.equal(torch.random.get_rng_state(), rng_before), "build must not reseed callers"
    assert (other / "model.safetensors").read_bytes() != (model_dir / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (model_dir / "tokenizer.json").read_bytes()


def test_build_is_small_and_marked_complete(model_dir: Path) -> None:
    assert is_complete(model_dir)
    marker = json.loads((model_dir / COMPLETE_MARKER).read_text())
    assert marker == {"model": "dedicate/tiny-chat", "seed": 0}
    total = sum(f.stat().st_size for f in model_dir.iterdir())
    assert total < 5 * 1024 * 1024
    leftovers = [p.name for p in model_dir.parent.iterdir() if ".building-" in p.name]
    assert leftovers == []


def test_complete_build_is_returned_untouched(model_dir: Path) -> None:
    weights = model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    started = time.monotonic()
    assert build_demo_model(model_dir, seed=0) == model_dir
    assert time.monotonic() - started < 0.5
    assert weights.stat().st_mtime_ns == before


def test_empty_destination_is_filled(tmp_path: Path) -> None:
    dest = tmp_path / "pre-made"
    dest.mkdir()
    assert is_complete(build_demo_model(dest))


def test_foreign_non_empty_destination_is_left_alone(tmp_path: Path) -> None:
    dest = tmp_path / "busy"
    dest.mkdir()
    (dest / "notes.txt").write_text("not a model")
    with pytest.raises(FileExistsError):
        build_demo_model(dest)
    assert (dest / "notes.txt").read_text() == "not a model"
    assert [p.name for p in tmp_path.iterdir()] == ["busy"]  # staging cleaned up


def test_loads_through_auto_classes(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert model.config.max_position_embeddings == 2048
    assert 1500 <= len(tokenizer) <= 2000 == model.config.vocab_size
    assert tokenizer.eos_token == "<|end|>"
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert tokenizer.pad_token_id == model.generation_config.pad_token_id
    for special in ("<|begin|>", "<|user|>", "<|assistant|>", "<|system|>"):
        assert len(tokenizer(special, add_special_tokens=False)["input_ids"]) == 1, special
    ids = torch.tensor([tokenizer("The weather is fine")["input_ids"]])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)


def test_tokenizer_round_trips_any_text(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = "Café au lait ☕, naïve 42 × 7 — 日本語 and emoji 🚂!\n\tTabs too."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(tokenizer("the weather in the valley")["input_ids"]) < 10  # merges learned


def test_chat_template_renders_turns(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Rain?"},
    ]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == (
        "<|begin|><|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n"
        "<|assistant|>\nHello.<|end|>\n<|user|>\nRain?<|end|>\n<|assistant|>\n"
    )
    plain = tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    assert plain == prompt.removesuffix("<|assistant|>\n")
    with pytest.raises(Exception, match="Unsupported role"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_cli_builds_and_prints_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "cli"
    assert demo_model.main([str(dest), "--seed", "3"]) == 0
    assert capsys.readouterr().out.strip() == str(dest)
    assert json.loads((dest / COMPLETE_MARKER).read_text())["seed"] == 3
