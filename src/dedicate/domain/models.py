"""Models that can be deployed, and what they need from hardware."""

from __future__ import annotations

from dataclasses import dataclass

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "fp8": 1}


@dataclass(frozen=True)
class ModelSpec:
    """A deployable base model.

    ``source`` says where weights come from: ``builtin:tiny-chat`` (built by
    dedicate offline), a local directory path, or ``hub`` (the engine fetches
    them itself; only engines with network access can do that).
    """

    name: str
    family: str
    params_b: float  # billions of parameters
    context_length: int
    dtype: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    engines: tuple[str, ...]  # engines able to run it, in order of preference
    source: str = "hub"

    @property
    def weight_bytes(self) -> int:
        return round(self.params_b * 1e9 * DTYPE_BYTES[self.dtype])

    def kv_bytes_per_token(self) -> int:
        """Keys and values for every layer: 2 × layers × kv heads × head dim × dtype."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * DTYPE_BYTES[self.dtype]

    @property
    def size_class(self) -> str:
        if self.params_b < 1:
            return "tiny"
        if self.params_b < 15:
            return "small"
        if self.params_b < 40:
            return "medium"
        return "large"


TINY_CHAT = "dedicate/tiny-chat"
