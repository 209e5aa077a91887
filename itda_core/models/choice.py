"""A model loaded as a job's loading options ask (:class:`~itda_core.config.loading.LoadingConfig`,
:class:`~itda_core.config.loading.RemoteConfig`): truncated to the deepest layer of the job's layer spec, placed by
a device map, or built on the meta device for extraction on NDIF."""

from __future__ import annotations

from typing import TYPE_CHECKING

from itda_core.config.loading import LoadingConfig
from itda_core.errors import ITDAError
from itda_core.layers import parse_layers
from itda_core.models.loading import LoadedModel, load_model, model_depth

if TYPE_CHECKING:
    from itda_core.models.remote import NnsightSource


def load_for_layers(name: str, spec: str, device: str, loading: LoadingConfig) -> tuple[LoadedModel, list[int]]:
    """(model, layers of ``spec``): the model truncated to the deepest of those layers when ``loading.truncate``
    (its depth read from the config first), placed and in the precision ``loading`` says."""
    up_to = None
    if loading.truncate:
        layers = parse_layers(spec, model_depth(name))
        up_to = max(layers)
    lm = load_model(name, device=device, dtype=loading.dtype, device_map=loading.device_map,
                    offload_dir=loading.offload_dir, up_to_layer=up_to)
    return lm, parse_layers(spec, lm.n_layers)


def load_up_to(name: str, deepest: int | None, device: str, loading: LoadingConfig) -> LoadedModel:
    """The model for a job that reads layers up to ``deepest`` (None: not known, the whole model)."""
    up_to = deepest if loading.truncate else None
    return load_model(name, device=device, dtype=loading.dtype, device_map=loading.device_map,
                      offload_dir=loading.offload_dir, up_to_layer=up_to)


def open_remote(name: str, device: str, loading: LoadingConfig) -> NnsightSource:
    """The meta-device model for ``--remote`` (a Hugging Face id NDIF hosts), refusing the options that only place
    a local load."""
    from itda_core.models.remote import KEY_HELP, api_key, remote_model

    local = loading.local_only + (["--device"] if device != "auto" else [])
    if local:
        raise ITDAError(f"--remote runs the model on NDIF; {', '.join(local)} place a local load: drop them")
    if not api_key():  # before reading anything: a run without a key would fail at its first batch
        raise ITDAError(f"--remote needs an NDIF API key: {KEY_HELP}")
    return remote_model(name, remote=True)
