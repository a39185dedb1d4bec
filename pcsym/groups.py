"""The symmetry groups pcsym supports, as subgroups of O(3) acting on R^3 (z is "up").

The table is static so ``pcsym groups`` needs no escnn import; :func:`gspace` builds the escnn
``GSpace3D`` lazily. Every group is a restriction of O(3), so a single code path (restricting
O(3) representations to the subgroup) serves all of them.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import sys
from dataclasses import dataclass
from functools import lru_cache

from .errors import PcsymError


@dataclass(frozen=True)
class GroupSpec:
    name: str
    description: str
    constructor: str  # escnn call, for the docs and the table
    order: int  # number of elements; 0 = continuous (infinite)
    default_max_freq: int  # band limit of hidden features for continuous groups

    @property
    def continuous(self) -> bool:
        return self.order == 0


_SPECS = [
    GroupSpec("trivial", "no symmetry (plain point network baseline)", "trivialOnR3()", 1, 0),
    GroupSpec("so2", "rotations about the z axis", "rot2dOnR3()", 0, 2),
    GroupSpec("o2", "rotations about z + mirror planes containing z", "conicalOnR3()", 0, 2),
    GroupSpec("so3", "all 3D rotations", "rot3dOnR3()", 0, 1),
    GroupSpec("o3", "all 3D rotations and reflections", "flipRot3dOnR3()", 0, 1),
    GroupSpec("m", "mirror x -> -x", "mirOnR3()", 2, 0),
    GroupSpec("f", "rotation by pi about the x axis", "dihedralOnR3(n=1, axis=0)", 2, 0),
    GroupSpec("inv", "point inversion x -> -x (all axes)", "invOnR3()", 2, 0),
    GroupSpec("mxinv", "M x Inv = {e, mirror x, pi-rotation about x, inversion}", "fullCylindricalOnR3(n=1, axis=0)", 4, 0),
    GroupSpec("so2xinv", "rotations about z x inversion", "cylindricalOnR3()", 0, 2),
    GroupSpec("o2xinv", "O(2) about z (with pi-flips about horizontal axes) x inversion", "fullCylindricalOnR3()", 0, 2),
    GroupSpec("c4", "rotations by multiples of 90 degrees about z", "rot2dOnR3(n=4)", 4, 0),
    GroupSpec("d4", "C4 about z + pi-rotations about horizontal axes", "dihedralOnR3(n=4)", 8, 0),
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
    """escnn prints stray lines on stdout when building some groups; send them to stderr-free void."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield
    out = buf.getvalue()
    if out.strip() and "--debug" in sys.argv:
        sys.stderr.write(out)


@lru_cache(maxsize=None)
def gspace(name: str, max_freq: int | None = None):
    """The escnn GSpace3D of a registered group (cached)."""
    spec = get_group(name)
    with quiet_stdout():
        from escnn import gspaces as g

        # Tensor products of hidden fields (kernel ⊗ input) reach frequency ~3L; escnn must have
        # instantiated enough irreps to decompose them.
        mf = max(4, (max_freq if max_freq is not None else spec.default_max_freq) * 4 + 2)
        builders = {
            "trivial": lambda: g.trivialOnR3(),
            "so2": lambda: g.rot2dOnR3(maximum_frequency=mf),
            "o2": lambda: g.conicalOnR3(maximum_frequency=mf),
            "so3": lambda: g.rot3dOnR3(maximum_frequency=mf),
            "o3": lambda: g.flipRot3dOnR3(maximum_frequency=mf),
            "m": lambda: g.mirOnR3(),
            "f": lambda: g.dihedralOnR3(n=1, axis=0.0),
            "inv": lambda: g.invOnR3(),
            "mxinv": lambda: g.fullCylindricalOnR3(n=1, axis=0.0),
            "so2xinv": lambda: g.cylindricalOnR3(maximum_frequency=mf),
            "o2xinv": lambda: g.fullCylindricalOnR3(maximum_frequency=mf),
            "c4": lambda: g.rot2dOnR3(n=4),
            "d4": lambda: g.dihedralOnR3(n=4),
        }
        return builders[spec.name]()


def o3_group():
    with quiet_stdout():
        from escnn.group import o3_group as _o3

        return _o3()


def restrict_o3_rep(name: str, rep):
    """Restrict an O(3) representation to the subgroup of the registered group ``name``."""
    gs = gspace(name)
    with quiet_stdout():
        return rep.restrict(gs._sg_id)


def harmonic_rep(name: str, lmax: int):
    """Representation of harmonic polynomials of degree <= lmax (O(3)'s bl_sphere rep) restricted to G."""
    return restrict_o3_rep(name, o3_group().bl_sphere_representation(lmax))


def hidden_fields(name: str, max_freq: int | None = None) -> tuple[list, str]:
    """The representation of one hidden *channel* of group ``name`` and its nonlinearity kind.

    Finite groups: one regular field (pointwise ELU is exactly equivariant on permutation
    representations). Continuous groups: the distinct irreps that occur in O(3)'s irreps of
    degree <= max_freq restricted to G, one field each, with gated nonlinearities (exactly
    equivariant, unlike sampled Fourier nonlinearities).
    """
    spec = get_group(name)
    gs = gspace(name, max_freq)
    G = gs.fibergroup
    if not spec.continuous:
        return [G.regular_representation], "regular"
    L = spec.default_max_freq if max_freq is None else max_freq
    o3 = o3_group()
    seen: dict[str, object] = {}
    for l in range(L + 1):
        for j in (0, 1):
            rep = restrict_o3_rep(name, o3.irrep(j, l))
            for irr_id in rep.irreps:
                irr = G.irrep(*irr_id)
                seen.setdefault(irr.name, irr)
    irreps = sorted(seen.values(), key=lambda r: (not r.is_trivial(), r.size, r.name))
    return irreps, "gated"


def contains(name: str, M, atol: float = 1e-6) -> bool:
    """Whether the orthogonal 3x3 matrix M acts as an element of group ``name``."""
    import numpy as np

    M = np.asarray(M, dtype=float)
    if not np.allclose(M @ M.T, np.eye(3), atol=atol):
        return False  # not even an isometry
    spec = get_group(name)
    det = np.linalg.det(M)
    ez = np.array([0.0, 0.0, 1.0])
    if spec.continuous:
        rules = {
            "so2": lambda: det > 0 and np.allclose(M @ ez, ez, atol=atol),
            "o2": lambda: np.allclose(M @ ez, ez, atol=atol),
            "so3": lambda: det > 0,
            "o3": lambda: True,
            "so2xinv": lambda: np.allclose(M @ ez, det * ez, atol=atol),
            "o2xinv": lambda: np.allclose(np.abs(M @ ez), ez, atol=atol),
        }
        return bool(rules[spec.name]())
    gs = gspace(name)
    return any(np.allclose(gs.basespace_action(g), M, atol=atol) for g in gs.fibergroup.elements)
