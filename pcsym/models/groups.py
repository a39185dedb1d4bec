"""The symmetry groups pcsym supports, as subgroups of O(3) acting on R^3 (z is "up").

One row per group (:data:`GROUPS`): a frozen :class:`GroupSpec` carrying its escnn constructor and
arguments, whether it is band-limited, and its membership test. The table needs no escnn import, so
``pcsym groups`` is instant; :func:`resolve` turns a name into a :class:`Group` — the escnn objects
the layers are built from. Every group is a restriction of O(3), so one code path (restricting O(3)
representations to the subgroup) serves all of them.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import io
import logging
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np

from ..errors import PcsymError

log = logging.getLogger("pcsym")
_EZ = np.array([0.0, 0.0, 1.0])


def _fixes_z(M, det, atol):
    return np.allclose(M @ _EZ, _EZ, atol=atol)


@dataclass(frozen=True)
class GroupSpec:
    name: str
    description: str
    escnn: str  # constructor in escnn.gspaces
    kwargs: tuple[tuple[str, object], ...] = ()  # its arguments (besides the band limit)
    order: int = 0  # number of elements; 0 = continuous (infinite)
    default_max_freq: int = 0  # band limit of hidden features (continuous groups)
    # membership of an orthogonal matrix M (det = det M); None: compare with the finite group's elements
    member: Callable[[np.ndarray, float, float], bool] | None = field(default=None, compare=False, repr=False)

    @property
    def continuous(self) -> bool:
        return self.order == 0

    @property
    def constructor(self) -> str:
        """The escnn call, as the code makes it (band limit left out)."""
        return f"{self.escnn}({', '.join(f'{k}={v!r}' for k, v in self.kwargs)})"

    def band_limit(self, max_freq: int | None = None) -> int:
        """The band limit L of hidden fields: ``max_freq`` when given, else the group's default."""
        return self.default_max_freq if max_freq is None else max_freq

    def build(self, max_freq: int | None = None):
        """The escnn GSpace3D. Tensor products of hidden fields (kernel ⊗ input) reach frequency
        ~3L, so continuous groups instantiate irreps up to 4L + 2 (at least 4)."""
        from escnn import gspaces

        kwargs = dict(self.kwargs)
        if self.continuous:
            kwargs["maximum_frequency"] = max(4, self.band_limit(max_freq) * 4 + 2)
        return getattr(gspaces, self.escnn)(**kwargs)

    def contains(self, M, atol: float = 1e-6) -> bool:
        """Whether the 3x3 matrix M acts as an element of this group."""
        M = np.asarray(M, dtype=float)
        if not np.allclose(M @ M.T, np.eye(3), atol=atol):
            return False  # not even an isometry
        if self.member is not None:
            return bool(self.member(M, float(np.linalg.det(M)), atol))
        gs = gspace(self.name)
        return any(np.allclose(gs.basespace_action(g), M, atol=atol) for g in gs.fibergroup.elements)


_SPECS = [
    GroupSpec("trivial", "no symmetry (plain point network baseline)", "trivialOnR3", order=1),
    GroupSpec("so2", "rotations about the z axis", "rot2dOnR3", default_max_freq=2,
              member=lambda M, det, atol: det > 0 and _fixes_z(M, det, atol)),
    GroupSpec("o2", "rotations about z + mirror planes containing z", "conicalOnR3", default_max_freq=2,
              member=_fixes_z),
    GroupSpec("so3", "all 3D rotations", "rot3dOnR3", default_max_freq=1, member=lambda M, det, atol: det > 0),
    GroupSpec("o3", "all 3D rotations and reflections", "flipRot3dOnR3", default_max_freq=1,
              member=lambda M, det, atol: True),
    GroupSpec("m", "mirror x -> -x", "mirOnR3", order=2),
    GroupSpec("f", "rotation by pi about the x axis", "dihedralOnR3", (("n", 1), ("axis", 0.0)), order=2),
    GroupSpec("inv", "point inversion x -> -x (all axes)", "invOnR3", order=2),
    GroupSpec("mxinv", "M x Inv = {e, mirror x, pi-rotation about x, inversion}", "fullCylindricalOnR3",
              (("n", 1), ("axis", 0.0)), order=4),
    GroupSpec("so2xinv", "rotations about z x inversion", "cylindricalOnR3", default_max_freq=2,
              member=lambda M, det, atol: np.allclose(M @ _EZ, det * _EZ, atol=atol)),
    GroupSpec("o2xinv", "O(2) about z (with pi-flips about horizontal axes) x inversion", "fullCylindricalOnR3",
              default_max_freq=2, member=lambda M, det, atol: np.allclose(np.abs(M @ _EZ), _EZ, atol=atol)),
    GroupSpec("c4", "rotations by multiples of 90 degrees about z", "rot2dOnR3", (("n", 4),), order=4),
    GroupSpec("d4", "C4 about z + pi-rotations about horizontal axes", "dihedralOnR3", (("n", 4),), order=8),
]
GROUPS: dict[str, GroupSpec] = {s.name: s for s in _SPECS}


def get_group(name: str) -> GroupSpec:
    """Look a group up by name; unknown names raise a PcsymError suggesting the closest one."""
    key = name.strip().lower().replace("(", "").replace(")", "").replace("×", "x").replace("_", "")
    if key in GROUPS:
        return GROUPS[key]
    close = difflib.get_close_matches(key, list(GROUPS), n=1, cutoff=0.4)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise PcsymError(f"unknown group '{name}'.{hint} Known groups: {', '.join(GROUPS)} (see `pcsym groups`).")


@contextlib.contextmanager
def quiet_stdout():
    """escnn prints stray lines on stdout when building some groups (and torch warns about its
    ``jit.script`` use): both are kept off the user's stdout and logged at debug level instead."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=DeprecationWarning)
        yield
    if buf.getvalue().strip():
        log.debug("escnn: %s", buf.getvalue().strip())


@lru_cache(maxsize=None)
def gspace(name: str, max_freq: int | None = None):
    """The escnn GSpace3D of a registered group (cached)."""
    spec = get_group(name)
    with quiet_stdout():
        return spec.build(max_freq)


def o3_group():
    with quiet_stdout():
        from escnn.group import o3_group as _o3

        return _o3()


class Group:
    """A registered group resolved to escnn objects: what layers are built from.

    ``gspace`` is the group's default-band-limit GSpace3D (every field type lives on its fibre
    group); ``max_freq`` is the band limit of hidden fields of continuous groups.
    """

    def __init__(self, spec: GroupSpec, max_freq: int | None = None):
        self.spec, self.name, self.max_freq = spec, spec.name, max_freq
        self.gspace = gspace(spec.name)
        self.fibergroup = self.gspace.fibergroup
        self.trivial = self.gspace.trivial_repr
        self.vector = self.gspace.basespace_action  # how G acts on R^3 (positions, normals)

    def __repr__(self) -> str:
        return f"Group({self.name!r}, max_freq={self.max_freq})"

    def restrict(self, rep):
        """Restrict an O(3) representation to this subgroup."""
        with quiet_stdout():
            return rep.restrict(self.gspace._sg_id)

    def harmonic_rep(self, lmax: int):
        """Harmonic polynomials of degree <= lmax (O(3)'s bl_sphere rep) restricted to G."""
        return self.restrict(o3_group().bl_sphere_representation(lmax))

    def field_type(self, reps):
        """escnn FieldType over the 0-dimensional gspace of G (what escnn's Linear acts on)."""
        from escnn import gspaces
        from escnn import nn as enn

        return enn.FieldType(gspaces.no_base_space(self.fibergroup), list(reps))

    @lru_cache(maxsize=None)
    def hidden_fields(self) -> tuple[list, str]:
        """The representation of one hidden *channel* and its nonlinearity kind.

        Finite groups: one regular field (pointwise ELU is exactly equivariant on permutation
        representations). Continuous groups: the distinct irreps that occur in O(3)'s irreps of
        degree <= max_freq restricted to G, one field each, with gated nonlinearities (exactly
        equivariant, unlike sampled Fourier nonlinearities).
        """
        G = gspace(self.name, self.max_freq).fibergroup
        if not self.spec.continuous:
            return [G.regular_representation], "regular"
        L = self.spec.band_limit(self.max_freq)
        o3 = o3_group()
        seen: dict[str, object] = {}
        for l in range(L + 1):
            for j in (0, 1):
                for irr_id in self.restrict(o3.irrep(j, l)).irreps:
                    irr = G.irrep(*irr_id)
                    seen.setdefault(irr.name, irr)
        return sorted(seen.values(), key=lambda r: (not r.is_trivial(), r.size, r.name)), "gated"


@lru_cache(maxsize=None)
def resolve(name: str, max_freq: int | None = None) -> Group:
    """The resolved :class:`Group` of a registered name (cached: one per name and band limit)."""
    return Group(get_group(name), max_freq)


def private_copy(module):
    """Deep-copy an escnn module's torch state while sharing escnn's (immutable, cached) group,
    representation and gspace objects. escnn shares basis modules between layers, so without
    this ``.double()`` on one model would change the dtype of another."""
    from escnn.group import Group, GroupElement, Representation
    from escnn.gspaces import GSpace

    classes = (Group, GroupElement, Representation, GSpace)
    saved = {c: c.__dict__.get("__deepcopy__") for c in classes}
    try:
        for c in classes:
            c.__deepcopy__ = lambda self, memo: self
        return copy.deepcopy(module)
    finally:
        for c, fn in saved.items():
            if fn is None:
                del c.__deepcopy__
            else:
                c.__deepcopy__ = fn
