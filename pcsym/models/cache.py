"""On-disk cache of what escnn derives for the layers, so a second model build skips it.

Building an :class:`~pcsym.models.layers.EquivLinear` asks escnn for the equivariant basis of
every pair of field types, and the implicit conv's contraction first needs the tensor products
ρ_h ⊗ ρ_in (Clebsch–Gordan coefficients for SO(3)/O(3): most of a model's build time). Both end
in a few plain arrays (:func:`~pcsym.models.layers.linear_spec`), stored here as one ``.npz`` per
layer under the user cache folder:

* ``$PCSYM_CACHE_DIR`` if set (``off`` or an empty value disables the cache), else
  ``$XDG_CACHE_HOME/pcsym``, else ``~/.cache/pcsym``; entries live in ``layers/``.
* The file name is a hash of everything an entry depends on: the kind of entry, the group name and
  band limit, every representation's identity (fibre group, name, size, in order), the bias flag,
  the escnn version and :data:`CACHE_VERSION` (bump it when ``linear_spec`` changes).
* Entries are written atomically (:func:`pcsym.files.atomic_write_bytes`); an unreadable or
  inconsistent entry is rebuilt and rewritten silently, and a cache folder that cannot be written
  only costs the rebuild — the cache is never fatal.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Callable

import numpy as np

from ..files import atomic_write_bytes, user_cache_dir

CACHE_VERSION = 1


def cache_dir() -> Path | None:
    """The folder of the layer cache, or None when disabled (``PCSYM_CACHE_DIR=off`` or empty)."""
    root = user_cache_dir()
    return None if root is None else root / "layers"


def rep_id(rep) -> str:
    return f"{rep.group.name}|{rep.name}|{rep.size}"


def entry_key(kind: str, group, parts: dict, bias: bool) -> str:
    import escnn

    desc = {"kind": kind, "group": group.name, "max_freq": group.max_freq, "bias": bool(bias),
            "reps": {k: [rep_id(r) for r in v] for k, v in parts.items()},
            "escnn": getattr(escnn, "__version__", "?"), "cache_version": CACHE_VERSION}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:32]


def _encode(spec: dict) -> bytes:
    arrays = {k: np.asarray(v) for k, v in spec.items() if k not in ("names", "blocks")}
    arrays["names"] = np.array(json.dumps(spec["names"]))
    arrays["blocks"] = np.asarray(spec["blocks"], dtype=np.int64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _decode(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        spec = {k: z[k] for k in z.files}
    spec["names"] = json.loads(str(spec["names"]))
    spec["blocks"] = [int(b) for b in spec["blocks"]]
    for k in ("in_size", "out_size", "dim"):
        spec[k] = int(spec[k])
    n = len(spec["names"])
    # consistency: the parts a damaged or foreign file could get wrong
    if len(spec["blocks"]) != n or any(f"basis_{j}" not in spec for j in range(n)):
        raise ValueError("incomplete entry")
    dim = sum(b * spec[f"basis_{j}"].shape[0] for j, b in enumerate(spec["blocks"]))
    total = sum(b * spec[f"basis_{j}"][0].size for j, b in enumerate(spec["blocks"]))
    index = spec["index"]
    if (dim != spec["dim"] or index.shape != (spec["in_size"] * spec["out_size"],)
            or (index.size and (index.min() < 0 or index.max() > total))):
        raise ValueError("inconsistent entry")
    if "bias_expansion" in spec and spec["bias_expansion"].shape[0] != spec["out_size"]:
        raise ValueError("inconsistent bias")
    return spec


def cached(kind: str, group, parts: dict, bias: bool, build: Callable[[], dict]) -> dict:
    """The spec of key (kind, group, parts, bias) from the cache, else ``build()`` (and store it)."""
    folder = cache_dir()
    if folder is None:
        return build()
    path = folder / f"{kind}-{entry_key(kind, group, parts, bias)}.npz"
    if path.is_file():
        try:
            return _decode(path)
        except Exception:  # noqa: BLE001 - a damaged entry is rebuilt below
            pass
    spec = build()
    try:
        atomic_write_bytes(path, _encode(spec))
    except Exception:  # noqa: BLE001 - read-only or full cache folder: just no cache
        pass
    return spec

