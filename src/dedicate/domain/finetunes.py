"""Whether weights are a fine-tune of a base model: the same architecture and shape, or an adapter of it.

Together tells its users that a fine-tuned model must be based on a supported base model; dedicate
checks it before it registers one. Full weights must have the base's architecture and every
dimension that decides which weights fit where (layers, heads, hidden and vocabulary sizes); where
the base's own ``config.json`` is at hand they are compared with it, else with the catalog's spec.
Adapter weights must name the base in their ``adapter_config.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dedicate.domain.errors import InvalidRequest
from dedicate.domain.models import ModelSpec

FULL = "WEIGHTS_TYPE_DEFAULT"
ADAPTER = "WEIGHTS_TYPE_ADAPTER"
KINDS = (FULL, ADAPTER)
SHAPE_KEYS = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "intermediate_size", "vocab_size")


def _mismatch(key: str, got: object, want: object, base: str) -> InvalidRequest:
    return InvalidRequest(f"these weights do not fit the base model {base}: config.json has {key} = {got!r}, the "
                          f"base has {want!r}; a fine-tune must keep its base's architecture and shape",
                          param="baseModelId")


def check_full_weights(base: ModelSpec, base_config: Mapping[str, Any] | None, config: Mapping[str, Any]) -> None:
    """Refuse weights whose ``config.json`` does not have ``base``'s architecture and shape."""
    if base_config is not None:
        for key in SHAPE_KEYS:
            if key in base_config and config.get(key) != base_config[key]:
                raise _mismatch(key, config.get(key), base_config[key], base.name)
        return
    heads = config.get("num_attention_heads")
    head_dim = config.get("head_dim") or (config.get("hidden_size", 0) // heads if isinstance(heads, int) and heads
                                          else None)
    for key, got, want in (("num_hidden_layers", config.get("num_hidden_layers"), base.num_layers),
                           ("num_key_value_heads", config.get("num_key_value_heads"), base.num_kv_heads),
                           ("head_dim", head_dim, base.head_dim)):
        if got != want:
            raise _mismatch(key, got, want, base.name)


def check_adapter(base: ModelSpec, adapter_config: Mapping[str, Any]) -> None:
    """Refuse an adapter whose ``adapter_config.json`` does not name ``base``."""
    named = adapter_config.get("base_model_name_or_path")
    if not isinstance(named, str) or not (named == base.name or named.rstrip("/").endswith(base.name)):
        raise InvalidRequest(f"this adapter is for {named!r}, not the base model {base.name}: its "
                             "adapter_config.json must name the base in base_model_name_or_path",
                             param="baseModelId")
