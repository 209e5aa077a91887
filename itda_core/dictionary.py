"""The ITDA dictionary: unit-norm atoms that are real activations, each with its provenance.

On disk a dictionary is a folder with ``dictionary.safetensors`` (atoms, provenance columns, the error
each atom had when it was added) and ``config.json`` (everything needed to know what the atoms mean).
Nothing is pickled. Saving writes a temporary folder and renames it, so an interrupted save never leaves
a half-written dictionary behind; the leftovers of a killed save name their owner (:mod:`itda_core.leftovers`),
and the next save or load of that folder removes them, or puts the previous dictionary back when the kill
came between the two renames (:mod:`itda_core.dictionary_recovery`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from itda_core.dictionary_recovery import recover, recover_folder
from itda_core.errors import ITDAError
from itda_core.leftovers import current_owner, owned_folder
from itda_core.provenance import Provenance

if TYPE_CHECKING:
    from itda_core.mp import HalfGram

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
TENSOR_FILE = "dictionary.safetensors"


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a dictionary's contents, recorded in its config."""
    import transformers

    from itda_core import __version__

    return {"itda": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def evidence_mask(init_count: Any) -> Any:
    """Which atoms carry evidence, from their ``init_count`` (a tensor or numpy array): every atom the error rule
    added (0) and the initial atoms whose activation really repeated in its batch (>= 2: BOS, identical first
    tokens). Initial atoms seen once (1) or of unknown count (-1) are arbitrary picks among tied rows: two
    dictionaries sharing them is no evidence that they agree (see docs/similarity.md)."""
    return (init_count == 0) | (init_count >= 2)


@dataclass
class ITDAConfig:
    """What a dictionary was built from and how. Stored as ``config.json`` beside the tensors."""

    model_id: str
    model_name: str
    layer: int
    d_model: int
    site: str = ""
    architecture: str = ""
    family: str = "decoder"
    k: int = 40
    threshold: float = 0.0
    corpus_id: str = ""
    corpus_sha256: str = ""
    tokenizer: str = ""
    seq_len: int = 128
    skip_special_tokens: bool = False
    activation_dtype: str = ""  # precision the model computed the activations in (float32...; "" = not recorded)
    cache_dtype: str = ""  # precision an activation cache stored them in ("" = no cache, or not recorded)
    tokens_seen: int = 0
    documents_seen: int = 0  # whole training documents seen
    documents_sha256: str = ""  # which documents exactly (ids in order, and a cut one); "" = not recorded
    init_atoms: int = 0
    init_rule: str = ""  # how ties among initial rows were broken ("value", "first"; "" = before it was recorded)
    max_size: int | None = None
    dedupe: bool = True
    seed: int = 0
    interrupted: bool = False
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not self.site:
            self.site = f"blocks.{self.layer}.hook_resid_post"

    def to_json(self) -> str:
        """The config as the text of ``config.json`` (sorted keys, so equal configs are equal files)."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ITDAConfig:
        """A config from parsed JSON; unknown keys are dropped, the four required ones must be there."""
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [name for name in ("model_id", "model_name", "layer", "d_model") if name not in data]
        if missing:
            raise ITDAError(f"dictionary config lacks {missing}; the file is not an ITDA config")
        return cls(**{k: v for k, v in data.items() if k in known})


_REPAIR = "train it again with 'itda train' or restore the folder from a backup"
_REQUIRED_FIELDS = ("model_id", "model_name", "layer", "d_model")


def _type_ok(annotation: str, value: Any) -> bool:
    """Whether a JSON value fits a config field's annotation (bools are not numbers here)."""
    if annotation == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    checks: dict[str, Any] = {"str": str, "int": int, "float": (int, float), "int | None": (int, type(None))}
    if annotation in checks:
        return isinstance(value, checks[annotation])
    return isinstance(value, dict) if annotation.startswith("dict") else True


def config_problems(data: Any) -> list[str]:
    """What is wrong with a parsed config.json (empty when it is a valid ITDA config): not an object, missing,
    unknown (mistyped) or wrongly typed fields, a non-positive d_model or a negative layer."""
    if not isinstance(data, dict):
        return [f"config.json holds a JSON {type(data).__name__}, not an object"]
    fields = {f.name: str(f.type) for f in dataclasses.fields(ITDAConfig)}
    problems = []
    missing = [name for name in _REQUIRED_FIELDS if name not in data]
    if missing:
        problems.append(f"config.json lacks {', '.join(missing)}")
    for name in sorted(set(data) - set(fields)):
        close = difflib.get_close_matches(name, list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"config.json has an unknown field {name!r}{hint}")
    for name, value in data.items():
        if name in fields and not _type_ok(fields[name], value):
            problems.append(f"config field {name!r} should be {fields[name]}, not {json.dumps(value)[:40]}")
    for name, low in (("d_model", 1), ("layer", 0)):
        if isinstance(data.get(name), int) and not isinstance(data[name], bool) and data[name] < low:
            problems.append(f"config field {name!r} is {data[name]} (must be at least {low})")
    return problems


def _damaged(path: Path, problem: str, todo: str = _REPAIR) -> ITDAError:
    """The one-line error for a dictionary folder that cannot be read as it is."""
    return ITDAError(f"{path} is a damaged ITDA dictionary: {' '.join(problem.split())}; {todo}")


def _read_config(path: Path) -> ITDAConfig:
    """The folder's config.json, checked field by field (an unknown or mistyped field is an error, not ignored)."""
    try:
        data = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _damaged(path, f"{CONFIG_FILE} is not valid JSON ({err})") from err
    except OSError as err:
        raise _damaged(path, f"{CONFIG_FILE} cannot be read ({err.strerror or err})", "check its permissions") from err
    problems = config_problems(data)
    if problems:
        unknown_only = all("unknown field" in p for p in problems)
        todo = (f"fix the field name in {path / CONFIG_FILE}, or upgrade itda if a newer version wrote it"
                if unknown_only else _REPAIR)
        raise _damaged(path, "; ".join(problems[:4]) + (" ..." if len(problems) > 4 else ""), todo)
    config = ITDAConfig(**data)
    if config.format_version > FORMAT_VERSION:
        raise ITDAError(f"{path} uses format {config.format_version}; upgrade itda to read it")
    return config


def _tensor_problems(tensors: dict[str, Tensor], config: ITDAConfig) -> list[str]:
    """What is missing or inconsistent among a dictionary file's tensors (empty when they fit together)."""
    from itda_core.provenance import _INT_COLUMNS

    needed = ["atoms", *(f"prov.{c}" for c in (*_INT_COLUMNS, "token_bytes", "token_offsets"))]
    missing = [name for name in needed if name not in tensors]
    if missing:
        return [f"{TENSOR_FILE} has no {', '.join(repr(m) for m in missing)} tensor"]
    atoms = tensors["atoms"]
    if atoms.ndim != 2 or not atoms.is_floating_point():
        return [f"the 'atoms' tensor is {atoms.dtype} of shape {tuple(atoms.shape)}, not a float [atoms, d_model]"]
    m, width = atoms.shape
    problems = []
    if width != config.d_model:
        problems.append(f"the atoms have width {width} but config.json says d_model {config.d_model}")
    per_atom = [f"prov.{c}" for c in _INT_COLUMNS] + [n for n in ("add_error", "init_count") if n in tensors]
    wrong = [name for name in per_atom if tuple(tensors[name].shape) != (m,)]
    if wrong:
        problems.append(f"{', '.join(map(repr, wrong))} do not have one entry per atom ({m})")
    offsets = tensors["prov.token_offsets"]
    if tuple(offsets.shape) != (m + 1,) or (m and int(offsets[-1]) != tensors["prov.token_bytes"].numel()):
        problems.append("the token strings ('prov.token_offsets', 'prov.token_bytes') do not match the atoms")
    return problems


class ITDA:
    """A dictionary of unit-norm atoms with provenance.

    ``atoms`` [m, d]; ``provenance`` has m rows; ``add_error`` [m] is the normalised reconstruction error
    the activation had when it was added (NaN for the initial atoms, which are added without encoding);
    ``init_count`` [m] is, for an initial atom, how often its activation occurred in its batch (>= 1), 0 for
    an atom added by the error rule (or given without add errors), and -1 for an initial atom of a
    dictionary that did not record it (NaN add error).
    Atoms are kept in insertion order, which is what :meth:`crop` relies on.
    """

    def __init__(
        self, atoms: Tensor, provenance: Provenance, config: ITDAConfig, add_error: Tensor | None = None,
        init_count: Tensor | None = None,
    ) -> None:
        if atoms.ndim != 2:
            raise ValueError(f"atoms must be [m, d], got shape {tuple(atoms.shape)}")
        if len(provenance) != atoms.shape[0]:
            raise ValueError(f"{atoms.shape[0]} atoms but {len(provenance)} provenance rows")
        if atoms.shape[1] != config.d_model:
            raise ValueError(f"atoms have width {atoms.shape[1]} but config.d_model is {config.d_model}")
        self.atoms = atoms
        self.provenance = provenance
        self.config = config
        recorded = add_error is not None
        if add_error is None:
            add_error = torch.full((atoms.shape[0],), float("nan"))
        self.add_error = add_error.to(device="cpu", dtype=torch.float32)
        if init_count is None:
            # not recorded: in a trainer's file the initial atoms are those without an add error, of unknown
            # count; atoms given without add errors (made by hand) are not initial picks
            init_count = (torch.where(torch.isnan(self.add_error), -1, 0) if recorded
                          else torch.zeros(atoms.shape[0], dtype=torch.int32))
        if init_count.shape != (atoms.shape[0],):
            raise ValueError(f"init_count must have one entry per atom ({atoms.shape[0]}), got "
                             f"{tuple(init_count.shape)}")
        self.init_count = init_count.to(device="cpu", dtype=torch.int32)
        self._gram: Tensor | HalfGram | None = None
        # the atoms on the last other device encoded on, and the atoms' version then (kept for MP's reuse)
        self._moved: tuple[Tensor, int] | None = None

    def __len__(self) -> int:
        return self.atoms.shape[0]

    def __repr__(self) -> str:
        c = self.config
        return f"ITDA({c.model_name} {c.site}: {len(self)} atoms x {c.d_model}, k={c.k}, threshold={c.threshold:g})"

    @property
    def d_model(self) -> int:
        """The atoms' width: the model's residual width."""
        return self.atoms.shape[1]

    @property
    def evidence(self) -> Tensor:
        """bool [m]: the atoms that say something about the model (:func:`evidence_mask` of ``init_count``)."""
        return evidence_mask(self.init_count)

    def to(self, device: str | torch.device) -> ITDA:
        """This dictionary with its atoms on ``device`` (provenance stays on CPU)."""
        out = ITDA(self.atoms.to(device), self.provenance, self.config, self.add_error, self.init_count)
        return out

    def gram(self) -> Tensor | HalfGram | None:
        """The atoms' Gram matrix, computed once and kept (in float16 on CPU when float32 would not fit
        the memory budget), or None when it would not fit at all."""
        if self._gram is None:
            from itda_core.mp import GramCache

            self._gram = GramCache(self.atoms.device, self.atoms.dtype).update(self.atoms)
        return self._gram

    def encode(self, x: Tensor, k: int | None = None, method: str = "auto") -> tuple[Tensor, Tensor]:
        """Matching pursuit of raw activations ``x`` [n, d] with ``k`` steps (default: the config's k)."""
        from itda_core.mp import matching_pursuit

        if x.shape[-1] != self.d_model:
            raise ITDAError(f"activations have width {x.shape[-1]} but this dictionary expects {self.d_model}")
        atoms = self._atoms_on(x.device)
        gram = self.gram() if method in ("auto", "gram") and atoms is self.atoms else None
        return matching_pursuit(x.to(atoms.dtype), atoms, k or self.config.k, gram=gram, method=method)

    def _atoms_on(self, device: torch.device) -> Tensor:
        """The atoms on ``device``: one copy per other device is kept, so that repeated encodes there reuse
        their Gram matrix (matching pursuit recognises the same tensor) instead of building it every call."""
        if self.atoms.device == device:
            return self.atoms
        version = -1 if self.atoms.is_inference() else self.atoms._version  # an in-place edit is a new copy
        if self._moved is None or self._moved[0].device != device or self._moved[1] != version or version < 0:
            self._moved = (self.atoms.to(device), version)
        return self._moved[0]

    def decode(self, indices: Tensor, coefficients: Tensor) -> Tensor:
        """Reconstruction from MP codes."""
        from itda_core.mp import reconstruct

        return reconstruct(indices, coefficients, self._atoms_on(indices.device))

    def crop(self, n: int) -> ITDA:
        """The first ``n`` atoms in insertion order (how ITDAs are compared with fixed-width SAEs)."""
        if n < 1:
            raise ITDAError(f"crop size must be at least 1 (got {n})")
        n = min(n, len(self))
        config = dataclasses.replace(self.config, stats={**self.config.stats, "cropped_from": len(self)})
        return ITDA(self.atoms[:n].clone(), self.provenance.select(torch.arange(n)), config, self.add_error[:n],
                    self.init_count[:n])

    # ---- files -----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``path/`` (config.json + dictionary.safetensors) atomically; replaces an older one."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "atoms": self.atoms.detach().to("cpu", torch.float32).contiguous(),
            "add_error": self.add_error.contiguous(),
            "init_count": self.init_count.contiguous(),
        }
        tensors.update(self.provenance.to_tensors())
        if not self.config.created:
            self.config.created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if not self.config.versions:
            self.config.versions = library_versions()
        recover_folder(path.parent)
        tmp = owned_folder(path.parent, f".{path.name}.tmp-")
        try:
            save_file(tensors, str(tmp / TENSOR_FILE), metadata={"format": "itda", "version": str(FORMAT_VERSION)})
            (tmp / CONFIG_FILE).write_text(self.config.to_json())
            if path.exists():
                old = path.parent / f".{path.name}.old-{current_owner().tag}-{secrets.token_hex(3)}"
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path, *, model: Any = None, device: str | torch.device = "cpu") -> ITDA:
        """Read a dictionary folder. With ``model`` (a LoadedModel), refuse one built for another model.
        A damaged folder (bad JSON, unknown or mistyped config fields, missing or mis-shaped tensors, a cut
        file) is a one-line :class:`ITDAError` naming the folder, never a traceback."""
        path = Path(path)
        if path.is_file() and path.name in (CONFIG_FILE, TENSOR_FILE):
            path = path.parent
        recover(path)
        if not (path / CONFIG_FILE).is_file() or not (path / TENSOR_FILE).is_file():
            raise ITDAError(f"{path} is not an ITDA dictionary folder (needs {CONFIG_FILE} and {TENSOR_FILE})")
        config = _read_config(path)
        try:
            tensors = load_file(str(path / TENSOR_FILE))
        except (SafetensorError, OSError) as err:
            raise _damaged(path, f"{TENSOR_FILE} cannot be read ({err})") from err
        problems = _tensor_problems(tensors, config)
        if problems:
            raise _damaged(path, "; ".join(problems[:3]))
        try:
            provenance = Provenance.from_tensors(tensors)
            itda = cls(tensors["atoms"].to(device), provenance, config, tensors.get("add_error"),
                       tensors.get("init_count"))
        except (ValueError, UnicodeDecodeError, RuntimeError) as err:
            raise _damaged(path, str(err).splitlines()[0]) from err
        if model is not None:
            itda.check_model(model)
        return itda

    def check_model(self, model: Any) -> None:
        """Raise a clear error if ``model`` (a LoadedModel) is not the one this dictionary was built on."""
        if model.d_model != self.d_model:
            raise ITDAError(
                f"this dictionary is for {self.config.model_name} (d_model {self.d_model}), but {model.name} has "
                f"d_model {model.d_model}; load the matching model"
            )
        if model.model_id != self.config.model_id:
            raise ITDAError(
                f"this dictionary was built on {self.config.model_id}, not {model.model_id}; load that model"
            )
        if self.config.layer >= model.n_layers:
            raise ITDAError(f"dictionary layer {self.config.layer} does not exist in {model.name}")
