"""What the store tests share: the held-out fraction of their corpus and training tiny dictionaries on it."""

from __future__ import annotations

from typing import Any

from itda_core.config.train import TrainConfig
from itda_core.corpus import Corpus
from itda_core.dictionary import ITDA
from itda_core.models import LoadedModel
from itda_core.trainer import Trainer

HELD_OUT = 0.25


def train_layers(model: LoadedModel, corpus: Corpus, layers: list[int], **options: Any) -> dict[int, ITDA]:
    """Dictionaries of ``layers`` trained on the train split of ``corpus`` (k 4, every token; ``options`` override)."""
    train, _ = corpus.split(HELD_OUT)
    options = {"k": 4, "max_tokens": None, "progress": False, **options}
    config = TrainConfig(layers=layers, **options)
    return Trainer(model, train, config).run()
