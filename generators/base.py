"""The Generator protocol and the request every generator takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pymatgen.core import Structure

    from crystalforge.core.candidate import Candidate, Scalar
    from crystalforge.core.spec import DesignSpec

Family = Literal["wyckoff", "substitution", "autoregressive", "diffusion", "external", "fake"]


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """What to generate. Frozen: generators never mutate it.

    Element tuples are sorted symbols. ``chemical_system`` means every structure contains all of
    its elements and nothing else; ``elements`` is a looser pool (any subset of it, with the
    ``required_elements``). ``compositions`` restricts sampling to these reduced formulae (the
    planner sets it to focus a round on compositions that worked). ``parents`` are structures to
    mutate or substitute into, e.g. retrieved references or the best near-miss of a previous
    round; generators that do not start from structures ignore them.
    """

    num_structures: int
    seed: int = 0
    chemical_system: tuple[str, ...] | None = None
    elements: tuple[str, ...] | None = None
    required_elements: tuple[str, ...] = ()
    excluded_elements: tuple[str, ...] = ()
    formula: str | None = None
    compositions: tuple[str, ...] = ()
    min_atoms: int = 1
    max_atoms: int = 20
    space_groups: tuple[int, ...] = ()
    round: int = 0
    # pymatgen Structures are unhashable: leave them out of the hash (equality still compares).
    parents: tuple[Structure, ...] = field(default=(), hash=False)
    """Structures to mutate or substitute into, e.g. retrieved references or the best near-miss
    of a previous round (``properties["material_id"]`` names each, when known)."""

    @classmethod
    def from_spec(
        cls, spec: DesignSpec, *, num_structures: int, seed: int = 0, round: int = 0
    ) -> GenerationRequest:
        """The request that samples the whole space a spec allows."""
        return cls(
            num_structures=num_structures,
            seed=seed,
            chemical_system=spec.chemical_system,
            elements=spec.element_pool(),
            required_elements=spec.required_elements,
            excluded_elements=spec.excluded_elements,
            formula=spec.formula,
            min_atoms=spec.min_atoms,
            max_atoms=spec.max_atoms,
            space_groups=spec.space_groups,
            round=round,
        )


@runtime_checkable
class Generator(Protocol):
    """A batched crystal generator.

    ``generate`` returns at most ``request.num_structures`` candidates (fewer only when the
    request admits fewer distinct structures, with the reason logged); the same request and seed
    give the same structures; the request is never mutated. A request that admits no structure
    at all raises :class:`~crystalforge.core.errors.GenerationFailed` naming why.
    """

    @property
    def name(self) -> str:
        """Registry name, e.g. ``pyxtal``."""
        ...

    @property
    def family(self) -> Family:
        """Generator family the router reasons about."""
        ...

    def generate(self, request: GenerationRequest) -> list[Candidate]:
        """Propose structures for ``request``."""
        ...


@dataclass
class UniqueCandidates:
    """The candidates of one ``generate`` call, each structure at most once.

    Every generator that draws structures one by one collects them here, so the provenance
    (generator name, request seed and round) and the duplicate rule are the same everywhere.
    """

    generator: str
    """Registry name written into each candidate."""
    request: GenerationRequest
    items: list[Candidate] = field(default_factory=list)
    """The kept candidates, in the order they were added."""
    duplicates: int = 0
    """Structures dropped because an identical one (same candidate id) was already kept."""
    _ids: set[str] = field(default_factory=set, repr=False)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, structure: Structure, parameters: Mapping[str, Scalar]) -> Candidate | None:
        """Keep ``structure`` as a new candidate; ``None`` (counted) when it is a duplicate."""
        from crystalforge.core.candidate import Candidate

        candidate = Candidate.create(
            structure,
            generator=self.generator,
            seed=self.request.seed,
            parameters=dict(parameters),
            round=self.request.round,
        )
        return candidate if self.keep(candidate) else None

    def keep(self, candidate: Candidate) -> bool:
        """Keep an already made candidate; ``False`` (counted) when it is a duplicate."""
        if candidate.id in self._ids:
            self.duplicates += 1
            return False
        self._ids.add(candidate.id)
        self.items.append(candidate)
        return True
