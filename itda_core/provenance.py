"""Provenance of activations: which document, position, token and characters each one came from.

Stored column-wise (tensors plus a list of token strings) so that batches concatenate cheaply and a
dictionary's provenance saves to safetensors without pickle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

_INT_COLUMNS = ("doc_id", "position", "token_id", "char_start", "char_end")


def _empty_long() -> Tensor:
    return torch.zeros(0, dtype=torch.int64)


@dataclass
class Provenance:
    """Columns describing n activations: ``doc_id``, ``position`` (token index in the document's
    tokenisation), ``token_id``, ``char_start``/``char_end`` (the token's span in the document text; equal
    for special tokens, which cover no characters) and ``token_str`` (the tokenizer's own token string)."""

    doc_id: Tensor = field(default_factory=_empty_long)
    position: Tensor = field(default_factory=_empty_long)
    token_id: Tensor = field(default_factory=_empty_long)
    char_start: Tensor = field(default_factory=_empty_long)
    char_end: Tensor = field(default_factory=_empty_long)
    token_str: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.token_str)
        for name in _INT_COLUMNS:
            col = getattr(self, name)
            if not isinstance(col, Tensor):
                col = torch.as_tensor(col, dtype=torch.int64)
            col = col.to(device="cpu", dtype=torch.int64).reshape(-1)
            if col.numel() != n:
                raise ValueError(f"provenance column {name} has {col.numel()} rows, token_str has {n}")
            setattr(self, name, col)

    def __len__(self) -> int:
        return len(self.token_str)

    def select(self, index: Tensor | Sequence[int]) -> Provenance:
        """Rows at ``index`` (an int tensor/list or a boolean mask), in that order."""
        idx = torch.as_tensor(index)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        idx = idx.to(device="cpu", dtype=torch.int64)
        strs = [self.token_str[i] for i in idx.tolist()]
        return Provenance(*(getattr(self, c)[idx] for c in _INT_COLUMNS), token_str=strs)

    @staticmethod
    def concat(parts: Sequence[Provenance]) -> Provenance:
        """One provenance with the rows of ``parts`` in order."""
        if not parts:
            return Provenance()
        cols = [torch.cat([getattr(p, c) for p in parts]) for c in _INT_COLUMNS]
        strs = [s for p in parts for s in p.token_str]
        return Provenance(*cols, token_str=strs)

    def keys(self) -> list[tuple[int, int]]:
        """(document id, token position) per row: the identity used by the Jaccard index."""
        return list(zip(self.doc_id.tolist(), self.position.tolist(), strict=True))

    def to_tensors(self, prefix: str = "prov.") -> dict[str, Tensor]:
        """Tensor-only form for safetensors; token strings become UTF-8 bytes plus offsets."""
        out = {prefix + c: getattr(self, c).contiguous() for c in _INT_COLUMNS}
        encoded = [s.encode("utf-8") for s in self.token_str]
        lengths = torch.tensor([len(b) for b in encoded], dtype=torch.int64)
        offsets = torch.zeros(len(encoded) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(lengths, 0)
        blob = b"".join(encoded)
        out[prefix + "token_bytes"] = (
            torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else (torch.zeros(0, dtype=torch.uint8))
        )
        out[prefix + "token_offsets"] = offsets
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], prefix: str = "prov.") -> Provenance:
        """Inverse of :meth:`to_tensors`."""
        blob = bytes(tensors[prefix + "token_bytes"].numpy().tobytes())
        offsets = tensors[prefix + "token_offsets"].tolist()
        strs = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(len(offsets) - 1)]
        return cls(*(tensors[prefix + c] for c in _INT_COLUMNS), token_str=strs)

    def to_frame(self):  # -> pandas.DataFrame (pandas imported lazily)
        """The rows as a pandas DataFrame (one column per field)."""
        import pandas as pd

        data = {c: getattr(self, c).numpy() for c in _INT_COLUMNS}
        data["token_str"] = self.token_str
        return pd.DataFrame(data)
