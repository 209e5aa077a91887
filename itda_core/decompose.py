"""Decomposing typed text with a dictionary, token by token, and an atom's logit effect.

:func:`decompose` runs a text through the model up to the dictionary's layer and encodes every token with
matching pursuit (per token: its k atoms, coefficients and the cosine of activation and reconstruction);
:func:`token_atoms`, :func:`atom_coefficients`, :func:`atoms_used` and :func:`summary` read a result.
:func:`logit_effect` says which tokens an atom's direction promotes and suppresses through the final norm
and unembedding. What the dashboard's live page and atom pages show; plain functions of a LoadedModel and an
ITDA, no front-end needed. Texts are bounded (:data:`MAX_CHARS`, :data:`MAX_TOKENS`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from itda_core.errors import ITDAError
from itda_core.extraction import residual_stream
from itda_core.tokenize import token_pieces

if TYPE_CHECKING:
    from itda_core.dictionary import ITDA
    from itda_core.models import LoadedModel

MAX_CHARS = 4000  # longer text is refused with a message, never truncated silently
MAX_TOKENS = 256  # tokens (special tokens included) decomposed at once


@dataclass
class Decomposition:
    """A text decomposed at one layer: per token its text, k atoms with coefficients and the cosine between
    the activation and its reconstruction (NaN for tokens that were not encoded)."""

    text: str
    token_strs: list[str]
    gaps: list[str]
    pieces: list[str]
    special: list[bool]
    spans: list[tuple[int, int]]
    indices: np.ndarray  # [n, k] int64, -1 where a token was not encoded
    coefs: np.ndarray  # [n, k] float32
    cosine: np.ndarray  # [n] float64
    norms: np.ndarray  # [n] activation norms
    k: int
    seconds: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.token_strs)

    @property
    def encoded(self) -> np.ndarray:
        """Boolean mask of the tokens that were encoded."""
        return np.isfinite(self.cosine)


def length_problem(text: str, n_tokens: int | None = None) -> str | None:
    """A message when the text is empty or over the limits, else None."""
    if not text.strip():
        return "Type some text to decompose."
    if len(text) > MAX_CHARS:
        return (
            f"The text has {len(text):,} characters; live decomposition takes at most {MAX_CHARS:,} "
            f"characters and {MAX_TOKENS} tokens. Shorten it."
        )
    if n_tokens is not None and n_tokens > MAX_TOKENS:
        return (
            f"The text has {n_tokens:,} tokens; live decomposition takes at most {MAX_TOKENS} tokens "
            f"(and {MAX_CHARS:,} characters). Shorten it."
        )
    return None


def tokenize_text(model: LoadedModel, text: str) -> dict[str, Any]:
    """Token ids, offsets, token strings and special-token mask of ``text`` (special tokens added, as in
    training), without truncation so the length check sees the real count."""
    enc = model.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True)
    ids = list(enc["input_ids"])
    return {
        "ids": ids,
        "offsets": [(int(s), int(e)) for s, e in enc["offset_mapping"]],
        "special": [bool(x) for x in enc["special_tokens_mask"]],
        "token_strs": model.tokenizer.convert_ids_to_tokens(ids),
    }


def decompose(model: LoadedModel, itda: ITDA, text: str, k: int | None = None) -> Decomposition:
    """Run ``text`` through ``model`` up to the dictionary's layer and encode every token with ``k`` steps
    of matching pursuit (special tokens are skipped when the dictionary was built without them)."""
    problem = length_problem(text)
    if problem:
        raise ITDAError(problem)
    k = int(k or itda.config.k)
    start = time.perf_counter()
    tok = tokenize_text(model, text)
    n = len(tok["ids"])
    problem = length_problem(text, n)
    if problem:
        raise ITDAError(problem)
    spans = [(0, 0) if sp else off for sp, off in zip(tok["special"], tok["offsets"], strict=True)]
    layer = itda.config.layer
    input_ids = torch.tensor([tok["ids"]], dtype=torch.long)
    hidden = residual_stream(model, input_ids, torch.ones_like(input_ids), [layer])[layer][0]
    t_forward = time.perf_counter()
    x = hidden.to(device="cpu", dtype=torch.float32)
    keep = np.ones(n, dtype=bool)
    if itda.config.skip_special_tokens:
        keep = ~np.asarray(tok["special"], dtype=bool)
    indices = np.full((n, k), -1, dtype=np.int64)
    coefs = np.zeros((n, k), dtype=np.float32)
    cosine = np.full(n, np.nan)
    rows = np.flatnonzero(keep)
    if len(rows):
        xs = x[torch.from_numpy(rows)]
        idx, coef = itda.encode(xs, k)
        recon = itda.decode(idx, coef)
        cos = torch.nn.functional.cosine_similarity(xs, recon.to(xs.dtype), dim=-1)
        indices[rows] = idx.cpu().numpy()
        coefs[rows] = coef.float().cpu().numpy()
        cosine[rows] = cos.double().cpu().numpy()
    t_encode = time.perf_counter()
    parts = token_pieces(text, spans, tok["token_strs"])
    return Decomposition(
        text=text,
        token_strs=list(tok["token_strs"]),
        gaps=[g for g, _, _ in parts],
        pieces=[p for _, p, _ in parts],
        special=[s for _, _, s in parts],
        spans=spans,
        indices=indices,
        coefs=coefs,
        cosine=cosine,
        norms=x.norm(dim=-1).double().numpy(),
        k=k,
        seconds={"forward": t_forward - start, "encode": t_encode - t_forward, "total": t_encode - start},
    )


def token_atoms(dec: Decomposition, i: int) -> pd.DataFrame:
    """Token ``i``'s atoms with their summed coefficients (an atom picked at several MP steps counts once)
    and the step it was first picked, largest |coefficient| first."""
    idx, coef = dec.indices[i], dec.coefs[i]
    rows: dict[int, list[float]] = {}
    for step, (a, c) in enumerate(zip(idx.tolist(), coef.tolist(), strict=True)):
        if a < 0:
            continue
        entry = rows.setdefault(a, [0.0, step])
        entry[0] += c
    df = pd.DataFrame([(a, c, int(s)) for a, (c, s) in rows.items()], columns=["atom", "coef", "first_step"])
    if df.empty:
        return df
    return df.reindex(df["coef"].abs().sort_values(ascending=False).index).reset_index(drop=True)


def atom_coefficients(dec: Decomposition, atom: int) -> np.ndarray:
    """The summed coefficient of ``atom`` at every token (0 where it was not used)."""
    return np.where(dec.indices == int(atom), dec.coefs, 0.0).sum(axis=1)


def atoms_used(dec: Decomposition) -> pd.DataFrame:
    """Every atom used anywhere in the text: tokens it appears in and its total |coefficient|."""
    mask = dec.indices >= 0
    if not mask.any():
        return pd.DataFrame(columns=["atom", "tokens", "total_abs"])
    df = pd.DataFrame(
        {
            "atom": dec.indices[mask],
            "row": np.nonzero(mask)[0],
            "abs": np.abs(dec.coefs[mask]),
        }
    )
    out = df.groupby("atom").agg(tokens=("row", "nunique"), total_abs=("abs", "sum")).reset_index()
    return out.sort_values("total_abs", ascending=False).reset_index(drop=True)


def summary(dec: Decomposition, worst: int = 5) -> dict[str, Any]:
    """Mean / median / minimum cosine over the encoded tokens and the ``worst`` tokens."""
    enc = dec.encoded
    cos = dec.cosine[enc]
    order = np.flatnonzero(enc)[np.argsort(dec.cosine[enc])][:worst]
    return {
        "tokens": len(dec),
        "encoded": int(enc.sum()),
        "mean_cosine": float(cos.mean()) if len(cos) else float("nan"),
        "median_cosine": float(np.median(cos)) if len(cos) else float("nan"),
        "min_cosine": float(cos.min()) if len(cos) else float("nan"),
        "worst": [int(i) for i in order],
    }


# ---- logit effect ------------------------------------------------------------------------------------------


def final_norm(model: LoadedModel) -> torch.nn.Module | None:
    """The norm before the unembedding (Llama/Gemma ``norm``, GPT-2 ``ln_f``), or None."""
    for name in ("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm"):
        module = getattr(model.base, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    return None


def logit_effect(model: LoadedModel, vector: np.ndarray | torch.Tensor, top: int = 12) -> dict[str, Any] | None:
    """Tokens the direction most promotes and suppresses: the unit vector, scaled to the typical norm
    sqrt(d_model), through the final norm and the unembedding. None for models without an LM head."""
    if model.family != "decoder":
        return None
    head = model.model.get_output_embeddings() if hasattr(model.model, "get_output_embeddings") else None
    if head is None:
        return None
    v = torch.as_tensor(np.asarray(vector), dtype=torch.float32).reshape(1, 1, -1)
    v = v / v.norm().clamp_min(1e-12) * float(v.shape[-1]) ** 0.5
    norm = final_norm(model)
    with torch.inference_mode():
        param = next(head.parameters())
        h = v.to(device=param.device, dtype=param.dtype)
        if norm is not None:
            h = norm(h)
        logits = head(h).float().reshape(-1).cpu()
    vocab = len(logits)
    top = min(top, vocab)
    centred = logits - logits.mean()
    up = torch.topk(centred, top)
    down = torch.topk(-centred, top)

    def frame(ids: torch.Tensor, values: torch.Tensor) -> pd.DataFrame:
        """Tokens, ids and centred logits as a table."""
        strs = model.tokenizer.convert_ids_to_tokens(ids.tolist())
        return pd.DataFrame({"token": strs, "token_id": ids.numpy(), "logit": values.numpy()})

    return {
        "promoted": frame(up.indices, up.values),
        "suppressed": frame(down.indices, -down.values),
        "normed": norm is not None,
    }
