"""Provenance check: re-extract the activation at each atom's (document, position) and compare.

An atom's label is only as good as its provenance; this catches atoms and indices that drifted out of
step (a bug the reference implementation once shipped), a wrong corpus, or a different tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from itda_core.corpus import Corpus
from itda_core.dictionary import ITDA
from itda_core.errors import ITDAError
from itda_core.extraction import residual_stream, tokenize_documents
from itda_core.models import LoadedModel


@dataclass
class ProvenanceCheck:
    """Cosine between each checked atom and its re-extracted source activation."""

    atom_index: Tensor  # [n] atoms checked
    cosine: Tensor  # [n]
    token_match: Tensor  # [n] bool: the re-tokenised token id equals the stored one
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool((self.cosine >= 1 - self.tolerance).all() and self.token_match.all())

    def failures(self) -> Tensor:
        return self.atom_index[(self.cosine < 1 - self.tolerance) | ~self.token_match]

    def summary(self) -> str:
        n = self.atom_index.numel()
        worst = float(self.cosine.min()) if n else float("nan")
        bad = self.failures()
        verdict = "OK" if self.ok else f"FAILED for {bad.numel()} atoms, e.g. {bad[:10].tolist()}"
        return (
            f"provenance check of {n} atoms: min cosine {worst:.6f}, token ids match: "
            f"{int(self.token_match.sum())}/{n} -> {verdict}"
        )


def check_provenance(
    itda: ITDA,
    model: LoadedModel,
    corpus: Corpus,
    *,
    max_atoms: int | None = None,
    batch_size: int = 16,
    tolerance: float = 1e-3,
) -> ProvenanceCheck:
    """Re-run the model on each atom's source document and compare the activation with the atom."""
    itda.check_model(model)
    prov = itda.provenance
    n = len(itda) if max_atoms is None else min(max_atoms, len(itda))
    if n == 0:
        raise ITDAError("the dictionary has no atoms to check")
    index = torch.arange(n)
    docs_needed = sorted(set(prov.doc_id[:n].tolist()))
    known = {doc.doc_id for doc in corpus.documents}
    missing = [d for d in docs_needed if d not in known]
    if missing:
        raise ITDAError(f"documents {missing[:5]} are not in corpus {corpus.corpus_id}; pass the training corpus")
    cos = torch.empty(n)
    match = torch.zeros(n, dtype=torch.bool)
    rows_of_doc: dict[int, list[int]] = {}
    for i, d in enumerate(prov.doc_id[:n].tolist()):
        rows_of_doc.setdefault(d, []).append(i)
    layer = itda.config.layer
    for start in range(0, len(docs_needed), batch_size):
        doc_ids = docs_needed[start : start + batch_size]
        documents = [corpus.by_id(d) for d in doc_ids]
        tb = tokenize_documents(model, documents, itda.config.seq_len)
        hidden = residual_stream(model, tb.input_ids, tb.attention_mask, [layer])[layer].float().cpu()
        for b, d in enumerate(doc_ids):
            rows = torch.tensor(rows_of_doc[d])
            pos = prov.position[rows]
            length = int(tb.attention_mask[b].sum())
            valid = pos < length
            got = torch.zeros(rows.numel(), itda.d_model)
            got[valid] = hidden[b, pos[valid]]
            atoms = itda.atoms[rows].float().cpu()
            cos[rows] = torch.nn.functional.cosine_similarity(got, atoms, dim=-1)
            ids = torch.full((rows.numel(),), -1, dtype=torch.long)
            ids[valid] = tb.input_ids[b, pos[valid]]
            match[rows] = ids == prov.token_id[rows]
    return ProvenanceCheck(index, cos, match, tolerance)
