"""The symmetric hard-sphere push that spreads atoms out before CHGNet."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from crystalforge.core.errors import ConfigError
from crystalforge.generators.packing import contact_distances, push_apart
from crystalforge.generators.wyckoff import WyckoffPriorGenerator, scale_and_screen


def _min_distance(structure: Structure) -> float:
    matrix = structure.distance_matrix
    return float(matrix[np.triu_indices(len(structure), 1)].min())


def test_two_close_atoms_are_pushed_to_contact() -> None:
    cell = Structure(Lattice.cubic(8.0), ["Cu", "Cu"], [[0.5, 0.5, 0.5], [0.6, 0.5, 0.5]])
    contact = float(contact_distances(["Cu", "Cu"], scale=0.85)[0, 1])
    pushed, worst = push_apart(cell, scale=0.85)
    assert _min_distance(cell) == pytest.approx(0.8)
    assert worst <= 0.02
    assert _min_distance(pushed) == pytest.approx(contact, abs=0.03)
    assert cell[1].frac_coords[0] == pytest.approx(0.6)  # the input is not modified


def test_a_spread_out_cell_is_left_alone() -> None:
    rock_salt = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    pushed, worst = push_apart(rock_salt)
    assert worst == 0.0
    assert np.allclose(pushed.frac_coords, np.mod(rock_salt.frac_coords, 1.0))


def test_the_push_keeps_the_space_group() -> None:
    # Mg on 2a and O on a free 4f site of P4_2/mnm, squeezed too close.
    crowded = Structure.from_spacegroup(
        136, Lattice.tetragonal(4.2, 2.9), ["Ti", "O"], [[0, 0, 0], [0.12, 0.12, 0]]
    )
    assert _min_distance(crowded) < 0.8
    pushed, _ = push_apart(crowded)
    assert SpacegroupAnalyzer(pushed, symprec=1e-3).get_space_group_number() == 136
    assert _min_distance(pushed) > 1.5


def test_two_anions_keep_twice_apart_only_in_a_cell_with_a_metal() -> None:
    oxide = contact_distances(["Sr", "O", "O"], scale=1.0)
    no_metal = contact_distances(["C", "O", "O"], scale=1.0)
    assert no_metal[1, 2] == pytest.approx(2 * 0.66, rel=0.05)  # O's covalent radius
    assert oxide[1, 2] == pytest.approx(2.0 * no_metal[1, 2])
    assert oxide[0, 1] == pytest.approx(no_metal[1, 2] / 2 + 1.95, rel=0.05)  # Sr + O


def test_scale_and_screen_pushes_only_when_asked() -> None:
    cell = Structure(Lattice.cubic(8.0), ["Cu", "Cu"], [[0.5, 0.5, 0.5], [0.62, 0.5, 0.5]])
    kept = scale_and_screen(cell.copy(), None, min_distance_ratio=0.3)
    assert kept is not None
    assert _min_distance(kept) == pytest.approx(0.96)
    pushed = scale_and_screen(cell.copy(), None, min_distance_ratio=0.3, push_steps=50)
    assert pushed is not None
    assert _min_distance(pushed) > 2.0


@pytest.mark.parametrize(("steps", "scale"), [(-1, 0.85), (10, 0.0), (10, 3.0)])
def test_bad_push_settings_are_named(steps: int, scale: float) -> None:
    with pytest.raises(ConfigError, match="push_"):
        WyckoffPriorGenerator(push_steps=steps, push_scale=scale)
