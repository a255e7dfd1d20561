"""Our own embeddings: similar crystals rank above dissimilar ones; no model download."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from crystalforge.memory.cif import cif_to_record, parse_p1_cif
from crystalforge.memory.embeddings import (
    CRYSTAL_DIM,
    composition_vector,
    embed_structure,
    rank_by_similarity,
    record_to_structure,
    spec_vector,
    structure_fingerprint,
    structure_record,
    text_vector,
)


def rocksalt(a: float, cation: str = "Na", anion: str = "Cl") -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [cation, anion],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]])  # fmt: skip


def zincblende(a: float, cation: str = "Na", anion: str = "Cl") -> Structure:
    return Structure.from_spacegroup("F-43m", Lattice.cubic(a), [cation, anion],
                                     [[0, 0, 0], [0.25, 0.25, 0.25]])  # fmt: skip


def test_composition_vector_is_fractions_over_94_elements():
    v = composition_vector({"Li": 2, "O": 1})
    assert v.shape == (94,)
    assert v[2] == pytest.approx(2 / 3)
    assert v[7] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="Xx"):
        composition_vector({"Xx": 1})


def test_fingerprint_is_invariant_to_scale_supercell_and_site_order():
    base = rocksalt(5.64)
    fp = structure_fingerprint(base.lattice.matrix, base.frac_coords)
    scaled = rocksalt(6.2)
    assert np.allclose(
        fp[:20], structure_fingerprint(scaled.lattice.matrix, scaled.frac_coords)[:20]
    )
    sup = base.copy()
    sup.make_supercell([1, 1, 2])
    fp_sup = structure_fingerprint(sup.lattice.matrix, sup.frac_coords)
    assert np.allclose(fp[:20], fp_sup[:20], atol=1e-9)  # per-atom RDF


def test_similar_crystals_rank_above_dissimilar_ones():
    query = rocksalt(5.64)
    pool = {
        "NaCl rocksalt, strained 3%": rocksalt(5.64 * 1.03),
        "NaCl zincblende": zincblende(6.0),
        "KCl rocksalt": rocksalt(6.3, "K"),
        "MgO rocksalt": rocksalt(4.21, "Mg", "O"),
        "Si diamond": Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]]),
    }
    names = list(pool)
    order = rank_by_similarity(embed_structure(query), [embed_structure(s) for s in pool.values()])
    ranked = [names[i] for i in order]
    assert ranked[0] == "NaCl rocksalt, strained 3%"  # same formula, same packing
    assert ranked[1] == "NaCl zincblende"  # same formula, other packing
    assert ranked.index("KCl rocksalt") < ranked.index("MgO rocksalt")  # shares Cl
    assert ranked[-1] == "Si diamond"
    assert embed_structure(query).shape == (CRYSTAL_DIM,)


def test_structure_record_round_trips():
    s = zincblende(5.5)
    back = record_to_structure(structure_record(s))
    assert back.composition == s.composition
    assert np.allclose(back.lattice.matrix, s.lattice.matrix, atol=1e-5)
    with pytest.raises(ValueError, match="not a structure record"):
        record_to_structure('{"nope": 1}')


def test_fast_p1_reader_agrees_with_pymatgen():
    s = Structure(Lattice.from_parameters(4.1, 5.2, 6.3, 80, 95, 110), ["Li", "Mn", "O", "O"],
                  [[0, 0, 0], [0.5, 0.5, 0.5], [0.25, 0.1, 0.3], [0.75, 0.6, 0.8]])  # fmt: skip
    cif = s.to(fmt="cif")
    parsed = parse_p1_cif(cif)
    assert parsed is not None
    lattice, species, frac = parsed
    reference = Structure.from_str(cif, fmt="cif")
    assert species == [site.specie.symbol for site in reference]
    assert np.allclose(lattice, reference.lattice.matrix, atol=1e-5)
    assert np.allclose(frac, reference.frac_coords, atol=1e-6)
    # A non-P1 CIF goes to pymatgen and still gives a record.
    sym = rocksalt(5.64).to(fmt="cif", symprec=0.1)
    assert parse_p1_cif(sym) is None
    assert len(json.loads(cif_to_record(sym))["species"]) == 8


def test_unparsable_cif_is_a_clear_error():
    from crystalforge.memory.cif import CifError

    with pytest.raises(CifError, match="unreadable CIF"):
        cif_to_record("data_x\n_cell_length_a 3\nthis is not a cif")


def test_spec_and_text_vectors():
    li_mn_o = spec_vector({"chemical_system": ["Li", "Mn", "O"], "targets": [{"name": "band_gap"}]})
    li_mn_o_2 = spec_vector({"chemical_system": ["Li", "Mn", "O"], "targets": []})
    mg_si = spec_vector({"chemical_system": ["Mg", "Si"]})
    assert li_mn_o @ li_mn_o_2 > li_mn_o @ mg_si
    note = text_vector("too unstable, try fewer oxygen atoms")
    assert note @ text_vector("unstable: fewer oxygen") > note @ text_vector("band gap is great")
