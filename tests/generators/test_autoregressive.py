"""The autoregressive generator: tokenizer, model, masked sampling, fallback, and the contract
on the checkpoint shipped in the package."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from crystalforge.core.errors import ConfigError, GenerationFailed
from crystalforge.generators.autoregressive.generator import (
    DEFAULT_CHECKPOINT,
    AutoregressiveGenerator,
    _load,
    build_from_gene,
)
from crystalforge.generators.autoregressive.tokenizer import WyckoffGene, build_vocabulary
from crystalforge.generators.base import GenerationRequest
from crystalforge.generators.registry import load_generator
from tests.contracts.generator import CONTRACT_REQUEST, make_generator_contract_tests

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.skipif(
    not DEFAULT_CHECKPOINT.exists(), reason=f"checkpoint {DEFAULT_CHECKPOINT} not shipped"
)

ROCK_SALT = WyckoffGene.of(225, [("Cl", "4b"), ("Na", "4a")])


def test_gene_is_canonical_and_round_trips() -> None:
    assert ROCK_SALT.sites == (("Na", "4a"), ("Cl", "4b"))  # by atomic number
    vocab = build_vocabulary([ROCK_SALT])
    ids = vocab.encode(ROCK_SALT)
    assert ids[0] == vocab.bos
    assert ids[-1] == vocab.eos
    assert vocab.decode(ids) == ROCK_SALT
    assert ROCK_SALT.pyxtal_inputs() == (["Na", "Cl"], [4, 4], [["4a"], ["4b"]])


def test_unknown_token_and_bad_sequence_are_named() -> None:
    vocab = build_vocabulary([ROCK_SALT])
    with pytest.raises(KeyError, match="'K'"):
        vocab.encode(WyckoffGene.of(225, [("K", "4a"), ("Cl", "4b")]))
    with pytest.raises(ValueError, match="space-group token"):
        vocab.decode([vocab.index["Na"]])


def test_build_from_gene_gives_primitive_rock_salt() -> None:
    structure = build_from_gene(ROCK_SALT, seed=0)
    assert structure is not None
    assert len(structure) == 2
    assert structure.composition.reduced_formula == "NaCl"


def test_model_is_causal() -> None:
    import torch

    model = _load(str(DEFAULT_CHECKPOINT)).model
    ids = torch.tensor([[1, 5, 240, 245, 2]])
    changed = ids.clone()
    changed[0, 4] = 3
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.allclose(a[0, :4], b[0, :4], atol=1e-5)
    assert 1e5 < model.num_parameters() < 2e6


@pytest.fixture(scope="module")
def autoregressive_generator() -> AutoregressiveGenerator:
    return AutoregressiveGenerator(fallback="none")


TestAutoregressiveContract = make_generator_contract_tests("autoregressive_generator")


def test_space_group_is_forced(autoregressive_generator: AutoregressiveGenerator) -> None:
    request = GenerationRequest(
        num_structures=3, seed=0, chemical_system=("Cl", "Na"), space_groups=(225,)
    )
    out = autoregressive_generator.generate(request)
    assert out
    for candidate in out:
        assert candidate.parameters["space_group"] == 225
        assert str(candidate.parameters["wyckoff_gene"]).startswith("225 ")
        assert "fallback" not in candidate.parameters


def test_unseen_element_falls_back_and_says_so() -> None:
    vocab = _load(str(DEFAULT_CHECKPOINT)).vocab
    unseen = next(e for e in ("Tc", "Pm", "Pa", "Np", "Ac", "Pu", "Am") if e not in vocab.index)
    request = GenerationRequest(num_structures=2, seed=0, chemical_system=("O", unseen))
    with pytest.raises(GenerationFailed, match=rf"\['{unseen}'\] never occur"):
        AutoregressiveGenerator(fallback="none").generate(request)
    out = AutoregressiveGenerator().generate(request)
    assert out
    for candidate in out:
        assert candidate.generator == "autoregressive"
        assert candidate.parameters["fallback"] == "wyckoff"
        assert unseen in str(candidate.parameters["fallback_reason"])


def test_unsupported_space_group_is_named() -> None:
    counts = _load(str(DEFAULT_CHECKPOINT)).space_group_counts
    rare = next(sg for sg in range(230, 0, -1) if counts.get(sg, 0) == 0)
    request = dataclasses.replace(CONTRACT_REQUEST, space_groups=(rare,), min_atoms=1)
    with pytest.raises(GenerationFailed, match=rf"space group\(s\) \[{rare}\] have too little"):
        AutoregressiveGenerator(fallback="none").generate(request)


def test_temperature_changes_samples_and_is_checked() -> None:
    with pytest.raises(ConfigError, match="temperature"):
        AutoregressiveGenerator(temperature=0)
    cold = AutoregressiveGenerator(temperature=0.5, fallback="none").generate(CONTRACT_REQUEST)
    assert {c.parameters["temperature"] for c in cold} == {0.5}


def test_space_group_temperature_spreads_the_groups_and_leaves_the_sites() -> None:
    """A hot space-group step draws more groups for one composition, and every finished
    sequence still writes exactly that composition (the masks, not the temperature, keep it)."""
    import torch

    loaded = _load(str(DEFAULT_CHECKPOINT))
    request = GenerationRequest(num_structures=1, seed=0, chemical_system=("Ag", "Lu", "Pb"))
    groups = tuple(sorted(g for g, n in loaded.space_group_counts.items() if n > 0))
    target = [{"Ag": 2, "Lu": 2, "Pb": 2}] * 256

    def drawn(generator: AutoregressiveGenerator) -> list[int]:
        genes, _ = generator._sample_batch(  # pyright: ignore[reportPrivateUsage]
            loaded, torch.Generator().manual_seed(0), len(target), {"Ag", "Lu", "Pb"},
            {"Ag", "Lu", "Pb"}, groups, request, target,
        )  # fmt: skip
        finished = [g for g in genes if g is not None]
        assert all(g.primitive_counts() == {"Ag": 2, "Pb": 2, "Lu": 2} for g in finished)
        return [g.space_group for g in finished]

    def entropy(values: list[int]) -> float:
        counts = torch.tensor(list(Counter(values).values()), dtype=torch.float64)
        p = counts / counts.sum()
        return float(-(p * p.log()).sum())

    base = drawn(AutoregressiveGenerator(fallback="none", space_group_temperature=None))
    hot = drawn(AutoregressiveGenerator(fallback="none", space_group_temperature=2.0))
    assert entropy(hot) > entropy(base) + 0.3
    with pytest.raises(ConfigError, match="space_group_temperature must be positive"):
        AutoregressiveGenerator(space_group_temperature=0.0)


def test_registry_entry() -> None:
    generator = load_generator("autoregressive", temperature=0.8)
    assert isinstance(generator, AutoregressiveGenerator)
    assert generator.family == "autoregressive"


def test_unconditional_request_samples_charge_balanced_trained_elements() -> None:
    from crystalforge.generators.compositions import charge_balance_of

    generator = AutoregressiveGenerator(fallback="none")
    request = GenerationRequest(num_structures=4, seed=2, max_atoms=12, excluded_elements=("O",))
    out = generator.generate(request)
    assert len(out) == 4
    trained = _load(str(DEFAULT_CHECKPOINT)).elements
    for candidate in out:
        symbols = {el.symbol for el in candidate.structure.composition.elements}
        assert symbols <= trained
        assert "O" not in symbols
        assert charge_balance_of(candidate.formula) != "none"
        assert len(candidate.structure) <= 12
        assert candidate.parameters["volume_prior"] is True
    with pytest.raises(GenerationFailed, match="no cell size fits"):
        generator.generate(GenerationRequest(num_structures=1, min_atoms=5, max_atoms=4))


def test_volume_prior_sets_the_learned_cell_volume() -> None:
    from crystalforge.generators.autoregressive.generator import place_gene
    from crystalforge.generators.priors import load_priors

    placed = place_gene(ROCK_SALT, seed=0)
    assert placed is not None
    learned = load_priors(None).cell_volume({"Na": 1.0, "Cl": 1.0})
    assert learned is not None
    assert placed.volume == pytest.approx(learned, rel=1e-6)
    raw = place_gene(ROCK_SALT, seed=0, volume_prior=False, min_distance_ratio=0)
    assert raw is not None
    assert raw.volume != pytest.approx(learned, rel=1e-3)


def test_time_budget_is_checked_between_placements() -> None:
    request = GenerationRequest(num_structures=3, seed=0, chemical_system=("Li", "Mn", "O"))
    with pytest.raises(GenerationFailed, match="produced no structure"):
        AutoregressiveGenerator(timeout_s=1e-6, fallback="none").generate(request)


def test_fillable_counts_wyckoff_multiplicities() -> None:
    from crystalforge.generators.autoregressive.generator import _fillable

    # Fm-3m: fixed 4a, 4b, 8c, 24d; free 24e, 32f, 48g, ...
    assert [n for n in range(1, 13) if _fillable(225, n)] == [4, 8, 12]
    assert all(_fillable(1, n) for n in range(1, 9))  # P1: 1a repeats


def test_composition_prior_writes_exactly_the_drawn_atoms() -> None:
    from crystalforge.generators.autoregressive.tokenizer import WyckoffGene
    from crystalforge.generators.symmetry import centering_multiplicity
    from crystalforge.generators.wyckoff import WyckoffPriorGenerator

    request = GenerationRequest(
        num_structures=6, seed=1, chemical_system=("Br", "Cl", "K"), max_atoms=12
    )
    wyckoff = WyckoffPriorGenerator()
    allowed = {
        c.choice.formula
        for c in wyckoff._pool(request, wyckoff.priors).cells  # pyright: ignore[reportPrivateUsage]
    }
    out = AutoregressiveGenerator(fallback="none").generate(request)  # "prior" is the default
    assert len(out) == 6
    for candidate in out:
        assert candidate.parameters["composition"] == "prior"
        assert candidate.structure.composition.reduced_formula in allowed
        group, *sites = str(candidate.parameters["wyckoff_gene"]).split()
        gene = WyckoffGene(int(group), tuple(tuple(x.split(":")) for x in sites))  # type: ignore[misc]
        centering = centering_multiplicity(gene.space_group)
        primitive = {e: n // centering for e, n in gene.conventional_counts().items()}
        composition = candidate.structure.composition
        assert primitive == {el.symbol: int(n) for el, n in composition.items()}
    free = AutoregressiveGenerator(composition="model", fallback="none").generate(request)
    assert {c.parameters["composition"] for c in free} == {"model"}
    with pytest.raises(ConfigError, match="composition must be 'prior', 'model' or 'auto'"):
        AutoregressiveGenerator(composition="exact")  # type: ignore[arg-type]


def test_composition_prior_never_crowds_a_special_position() -> None:
    """Exact counts once forced seven atoms onto one line of Pmm2 (PyXtal spent 70 s failing)."""
    from crystalforge.generators.autoregressive.generator import (
        MAX_SPECIAL_REPEATS,
        _wyckoff_table,
    )

    request = GenerationRequest(
        num_structures=20, seed=0, chemical_system=("Mg", "Sr", "Y"), max_atoms=20
    )
    out = AutoregressiveGenerator(fallback="none", timeout_s=60).generate(request)
    assert len(out) == 20
    for candidate in out:
        group, *sites = str(candidate.parameters["wyckoff_gene"]).split()
        table = _wyckoff_table(int(group))
        labels = [site.split(":")[1] for site in sites]
        for label, fixed in table[1:]:
            assert labels.count(label) <= (1 if fixed else MAX_SPECIAL_REPEATS)


def test_resampling_keeps_finished_genes_by_importance_weight() -> None:
    import torch

    from crystalforge.generators.autoregressive.generator import _resample
    from crystalforge.generators.autoregressive.tokenizer import WyckoffGene

    genes = [WyckoffGene(225, (("Na", "4a"), ("Cl", "4b"))), None, WyckoffGene(1, (("Na", "1a"),))]
    genes += [WyckoffGene(2, (("Cl", "2i"),)), None, WyckoffGene(221, (("Cs", "1a"),))]
    weights = [0.0, 99.0, 40.0, 0.0, 99.0, 0.0]  # dead ends (None) never count
    kept = _resample(genes, weights, 3, torch.Generator().manual_seed(0))
    assert len(kept) == 2
    assert kept[0] is genes[2]  # e^40 outweighs the rest
    assert None not in kept
    with pytest.raises(ConfigError, match="resample must be >= 1"):
        AutoregressiveGenerator(resample=0)


def test_sequence_weight_is_the_mass_on_allowed_tokens() -> None:
    """With nothing masked but the space group, the weight is the log mass on that group."""
    import math

    import torch

    generator = AutoregressiveGenerator(fallback="none")
    loaded = _load(str(DEFAULT_CHECKPOINT))
    request = GenerationRequest(num_structures=1, seed=0, chemical_system=("Cl", "Na"))
    genes, log_mass = generator._sample_batch(  # pyright: ignore[reportPrivateUsage]
        loaded, torch.Generator().manual_seed(0), 4, {"Na", "Cl"}, {"Na", "Cl"}, (225,),
        request, [{"Na": 1, "Cl": 1}] * 4,
    )  # fmt: skip
    assert all(g is not None and g.space_group == 225 for g in genes)
    assert all(w < 0 and math.isfinite(w) for w in log_mass)  # SG 225 alone holds < all mass


def test_auto_composition_asks_the_model_first() -> None:
    """Ionic Br-Cl-K: the model's own sequences rarely balance, so the prior's are used; an
    intermetallic system keeps the model's own compositions."""
    auto = AutoregressiveGenerator(composition="auto", fallback="none")
    ionic = GenerationRequest(num_structures=3, seed=0, chemical_system=("Br", "Cl", "K"))
    metallic = GenerationRequest(num_structures=3, seed=0, chemical_system=("Ag", "Lu", "Pb"))
    assert {c.parameters["composition"] for c in auto.generate(ionic)} == {"prior"}
    assert {c.parameters["composition"] for c in auto.generate(metallic)} == {"model"}


def test_composition_prefix_encodes_primitive_counts() -> None:
    vocab = build_vocabulary([ROCK_SALT])
    assert vocab.composition_prefix
    words = [vocab.tokens[i] for i in vocab.encode(ROCK_SALT)]
    # Fm-3m's conventional cell holds four primitive cells: one Na and one Cl each.
    assert words == ["<bos>", "Na", "#1", "Cl", "#1", "SG225", "Na", "4a", "Cl", "4b", "<eos>"]
    assert vocab.decode(vocab.encode(ROCK_SALT)) == ROCK_SALT
    old = build_vocabulary([ROCK_SALT], composition_prefix=False)
    assert not old.composition_prefix
    assert [old.tokens[i] for i in old.encode(ROCK_SALT)][:3] == ["<bos>", "SG225", "Na"]
    with pytest.raises(ValueError, match="does not divide into primitive cells"):
        vocab.encode(WyckoffGene(225, (("Na", "2a"),)))  # F-centred: 2 atoms are half a cell


@pytest.mark.parametrize("composition_prefix", [True, False])
def test_tiny_checkpoints_of_both_formats_sample_what_they_learned(
    tmp_path: Path, composition_prefix: bool
) -> None:
    """A model trained on rock salt alone writes rock salt, with and without the prefix, and
    with the composition its own or drawn from the prior."""
    import math

    import torch

    from crystalforge.generators.autoregressive.train import score, train

    rows = [
        {"material_id": f"r{i}", "space_group": 225, "sites": [["Na", "4a"], ["Cl", "4b"]],
         "num_atoms": 2}
        for i in range(64)
    ]  # fmt: skip
    checkpoint, metrics = train(
        rows, epochs=25, batch_size=16, lr=5e-3, seed=0, device="cpu", d_model=16,
        n_layers=1, time_budget_s=120, composition_prefix=composition_prefix,
    )  # fmt: skip
    assert checkpoint["format"] == (2 if composition_prefix else 1)
    assert metrics["best_val_loss"] < 0.5
    path = tmp_path / "tiny.pt"
    torch.save(checkpoint, path)
    nll = score(path, [*rows[:8], {**rows[0], "sites": [["K", "4a"], ["Cl", "4b"]]}])
    assert nll["rows"] == 8  # K has no token: left out
    assert nll["space_group"] < 0.2 < math.log(230)  # it learned Fm-3m (uniform: 5.4 nats)
    request = GenerationRequest(num_structures=3, seed=0, chemical_system=("Cl", "Na"))
    for mode in ("model", "prior"):
        generator = AutoregressiveGenerator(
            checkpoint_path=str(path),
            composition=mode,
            fallback="none",  # type: ignore[arg-type]
        )
        out = generator.generate(request)
        assert out, mode
        for candidate in out:
            assert candidate.parameters["composition"] == mode
            assert candidate.structure.composition.reduced_formula == "NaCl"
            assert str(candidate.parameters["wyckoff_gene"]).startswith("225 ")


def test_prefix_model_writes_its_own_balanced_composition_within_the_atom_range() -> None:
    from crystalforge.generators.autoregressive.generator import _element_pool
    from crystalforge.generators.compositions import enumerate_compositions

    loaded = _load(str(DEFAULT_CHECKPOINT))
    if not loaded.composition_prefix:
        pytest.skip("the shipped checkpoint has no composition prefix")
    request = GenerationRequest(
        num_structures=8, seed=3, chemical_system=("Li", "Mn", "O"), min_atoms=4, max_atoms=10
    )
    allowed = {c.formula for c in enumerate_compositions(request)}
    out = AutoregressiveGenerator(composition="model", fallback="none").generate(request)
    assert len(out) == 8
    pool, required = _element_pool(request)
    for candidate in out:
        composition = candidate.structure.composition
        assert composition.reduced_formula in allowed
        assert {el.symbol for el in composition.elements} == pool == required
        assert 4 <= len(candidate.structure) <= 10


def test_a_gene_without_free_coordinates_is_proposed_once() -> None:
    """Rock-salt KCl twice is one crystal after relaxation: a rigid gene is taken once, any
    other at most ``max_gene_repeats`` times."""
    from collections import Counter

    from crystalforge.generators.autoregressive.generator import _fixed

    request = GenerationRequest(
        num_structures=12, seed=0, chemical_system=("Br", "Cl", "K"), max_atoms=6
    )
    out = AutoregressiveGenerator(fallback="none", max_gene_repeats=2).generate(request)
    genes = Counter(str(c.parameters["wyckoff_gene"]) for c in out)
    assert len(out) == 12
    for text, times in genes.items():
        group, *sites = text.split()
        rigid = all(_fixed(int(group), site.split(":")[1]) for site in sites)
        assert times <= (1 if rigid else 2), text
    with pytest.raises(ConfigError, match="max_gene_repeats must be >= 1"):
        AutoregressiveGenerator(max_gene_repeats=0)


def test_substitution_swaps_one_element_within_its_family_and_keeps_the_sites() -> None:
    import numpy as np

    from crystalforge.generators.autoregressive.train import SUBSTITUTION_FAMILIES, substitute

    row = {"material_id": "x", "space_group": 221, "num_atoms": 5,
           "sites": [["Sr", "1a"], ["Ti", "1b"], ["O", "3c"]]}  # fmt: skip
    known = {"Sr", "Ba", "Ca", "Ti", "Zr", "O", "S"}
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(60):
        out = substitute(row, rng, known)
        old, new = out["substituted"].split("->")
        assert old in {"Sr", "Ti"}  # O has no family: oxides stay oxides
        family = next(f for f in SUBSTITUTION_FAMILIES if old in f)
        assert new in family
        assert new in known
        assert new != old
        assert out["space_group"] == 221
        assert out["num_atoms"] == 5
        sites = [tuple(s) for s in out["sites"]]
        assert tuple(sites) == WyckoffGene.of(221, sites).sites  # canonical order again
        assert sorted(w for _, w in sites) == ["1a", "1b", "3c"]
        assert sorted(e for e, _ in out["sites"]) == sorted(
            new if e == old else e for e, _ in row["sites"]
        )
        seen.add(out["substituted"])
    assert seen == {"Sr->Ba", "Sr->Ca", "Ti->Zr"}
    assert row["sites"][0] == ["Sr", "1a"]  # the input row is not modified
    lone = {**row, "sites": [["Sr", "1a"], ["Ti", "1b"], ["O", "3c"]]}
    assert substitute(lone, rng, {"Sr", "Ti", "O"}) is lone  # no partner known: unchanged


def test_training_with_substitution_learns_the_structure_type_for_family_members(
    tmp_path: Path,
) -> None:
    """Rock salt seen as NaCl, KCl and NaBr: augmentation also shows KBr, which the model then
    scores as well as the real rows; a share outside [0, 1] is named."""
    import torch

    from crystalforge.generators.autoregressive.train import score, train

    pairs = [("Na", "Cl"), ("K", "Cl"), ("Na", "Br")]
    rows = [
        {"material_id": f"r{i}", "space_group": 225, "num_atoms": 2,
         "sites": [[a, "4a"], [x, "4b"]]}
        for i in range(96)
        for a, x in [pairs[i % 3]]
    ]  # fmt: skip
    kbr = {"material_id": "kbr", "space_group": 225, "num_atoms": 2,
           "sites": [["K", "4a"], ["Br", "4b"]]}  # fmt: skip
    with pytest.raises(ValueError, match="substitution_share must be in"):
        train(rows, epochs=1, batch_size=16, lr=5e-3, seed=0, device="cpu", d_model=16,
              n_layers=1, time_budget_s=60, substitution_share=1.5)  # fmt: skip
    nll = {}
    for share in (0.0, 0.5):
        checkpoint, metrics = train(
            rows, epochs=25, batch_size=16, lr=5e-3, seed=0, device="cpu", d_model=16,
            n_layers=1, time_budget_s=120, substitution_share=share,
        )  # fmt: skip
        assert metrics["substitution_share"] == share
        path = tmp_path / f"tiny-{share}.pt"
        torch.save(checkpoint, path)
        nll[share] = score(path, [kbr])["per_structure"]
    assert nll[0.5] < nll[0.0] - 1.0  # KBr (never a real row) is far more likely with it
