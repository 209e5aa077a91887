"""Stores built from tiny random models, for the tests that need a whole one (the dashboard's pages and its
end-to-end test, the similarity job)."""

from __future__ import annotations

from pathlib import Path

from itda_core.jobs.atom_maps import store_atom_map
from tests.tiny import save_tiny_model, tiny_corpus, tiny_model

HELD_OUT = 0.25


def build_tiny_store(root: Path, *, atom_map: bool = True) -> dict:
    """A store with a 3-layer tiny Llama and a 2-layer tiny BERT (saved as model folders, so the dashboard
    loads them by name), every layer trained, written and indexed; an atom map for the Llama's layer 1."""
    from itda_core.config.train import TrainConfig
    from itda_core.jobs.index import IndexConfig, index_model
    from itda_core.models import load_model
    from itda_core.store.writer import write_dictionary
    from itda_core.trainer import Trainer

    root.mkdir(parents=True, exist_ok=True)
    store = root / "itda.duckdb"
    corpus = tiny_corpus(n_copies=4)
    train, _ = corpus.split(HELD_OUT)
    ids: dict[tuple[str, int], int] = {}
    names: dict[str, str] = {}
    # the Llama's threshold: at the default one it adds every distinct token of the training split in every
    # layer (242 atoms each), so every similarity between its layers would be 1 whatever the options; at 0.02
    # its layers keep 168-187 atoms and differ (raw Jaccard 0.72-0.82)
    thresholds = {"llama": 0.02, "bert": None}
    for kind, n_layers in (("llama", 3), ("bert", 2)):
        folder = root / f"tiny-{kind}"
        made = tiny_model(kind, n_layers=n_layers)
        made.model.save_pretrained(folder)
        made.tokenizer.save_pretrained(folder)
        model = load_model(str(folder), device="cpu")
        names[kind] = model.name
        config = TrainConfig(layers=list(range(n_layers)), k=4, threshold=thresholds[kind], max_tokens=None,
                             progress=False)
        for layer, itda in Trainer(model, train, config).run().items():
            ids[(kind, layer)] = write_dictionary(store, itda, model, corpus)
        index_model(store, model, IndexConfig(max_tokens=None, top_n=5, n_quantiles=4, per_quantile=3,
                                              hist_bins=8, progress=False))  # fmt: skip
    if atom_map:
        store_atom_map(store, [ids[("llama", 1)]])
    return {"path": store, "ids": ids, "names": names, "root": root}


def tiny_llama_store(root: Path, layers: list[int]) -> dict:
    """A store holding a 3-layer tiny Llama's dictionaries of ``layers`` (k 4, every training token). The model is
    saved as a folder under ``root``, so it loads by name as a real one does, and it adds a BOS token. Returns
    path, model, ids ({layer: dict_id}), itdas and held (the held-out split)."""
    from itda_core.models import load_model
    from itda_core.store.writer import write_dictionary
    from itda_core.trainer import TrainConfig, Trainer

    model = load_model(str(save_tiny_model("llama", root / "tiny-llama")), device="cpu")
    corpus = tiny_corpus(n_copies=4)
    train, held = corpus.split(HELD_OUT)
    store = root / "itda.duckdb"
    itdas = Trainer(model, train, TrainConfig(layers=layers, k=4, max_tokens=None, progress=False)).run()
    ids = {layer: write_dictionary(store, itda, model, corpus) for layer, itda in itdas.items()}
    return {"path": store, "model": model, "ids": ids, "itdas": itdas, "held": held}


def e2e_store(tmp_path_factory, name: str) -> Path:
    """The store an end-to-end test serves: $ITDA_E2E_STORE when set (a real one, for screenshots), else a tiny
    indexed one without atom maps (faster to build), in a fresh folder named ``name``."""
    import os

    chosen = os.environ.get("ITDA_E2E_STORE")
    return Path(chosen) if chosen else build_tiny_store(tmp_path_factory.mktemp(name), atom_map=False)["path"]
