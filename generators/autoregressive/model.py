"""A small decoder-only transformer over Wyckoff token sequences (~0.5 M parameters)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from collections.abc import Mapping


@dataclass(frozen=True)
class ModelConfig:
    """Shape of :class:`WyckoffTransformer`.

    Attributes:
        vocab_size: Number of tokens.
        max_len: Longest sequence, tokens (positions beyond it have no embedding).
        d_model: Width of the residual stream.
        n_heads: Attention heads (``d_model`` must be divisible by it).
        n_layers: Transformer blocks.
        d_ff: Hidden width of the feed-forward layers.
        dropout: Dropout probability during training.
    """

    vocab_size: int
    max_len: int = 64
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 3
    d_ff: int = 384
    dropout: float = 0.1

    def to_json(self) -> dict[str, Any]:
        """The config as a JSON object."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelConfig:
        """The config written by :meth:`to_json`."""
        return cls(**data)


class WyckoffTransformer(nn.Module):
    """Causal transformer: token + position embeddings, pre-norm blocks, tied output layer."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.token = nn.Embedding(config.vocab_size, config.d_model)
        self.position = nn.Embedding(config.max_len, config.d_model)
        layer = nn.TransformerEncoderLayer(
            config.d_model,
            config.n_heads,
            config.d_ff,
            config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.head.weight = self.token.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits.

        Args:
            ids: Token ids, shape ``(batch, length)``, ``length <= max_len``.

        Returns:
            Logits, shape ``(batch, length, vocab_size)``; position ``t`` predicts token ``t+1``.
        """
        length = ids.shape[1]
        positions = torch.arange(length, device=ids.device)
        x = self.token(ids) + self.position(positions)[None]
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=ids.device)
        x = self.blocks(x, mask=mask, is_causal=True)
        return self.head(self.norm(x))

    def num_parameters(self) -> int:
        """Trainable parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
