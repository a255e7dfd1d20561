"""Generators by name, imported only when asked for.

Each entry maps a registry name to ``(module, class, extra)``; ``extra`` names the optional
dependency group that provides the backend (``None`` for the core install). Loading never
returns ``None``: an unknown name raises :class:`~crystalforge.core.errors.UnknownPluginError`
listing the valid names, a backend whose extra is not installed raises
:class:`~crystalforge.core.errors.MissingExtraError` naming the extra, and settings the
generator does not accept raise :class:`~crystalforge.core.errors.ConfigError`.

Example:
    >>> from crystalforge.generators.registry import load_generator
    >>> load_generator("pyxtal", timeout_s=30).name
    'pyxtal'
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Any

from crystalforge.core.errors import ConfigError, MissingExtraError, UnknownPluginError

if TYPE_CHECKING:
    from collections.abc import Callable

    from crystalforge.generators.base import Generator

_GENERATORS: dict[str, tuple[str, str, str | None]] = {
    "autoregressive": (
        "crystalforge.generators.autoregressive.generator",
        "AutoregressiveGenerator",
        "ml",
    ),
    "diffusion": ("crystalforge.generators.diffusion.generator", "DiffusionGenerator", "ml"),
    "fake": ("crystalforge.generators.fake", "FakeGenerator", None),
    "pyxtal": ("crystalforge.generators.symmetry", "PyXtalGenerator", None),
    "pyxtal-uniform": ("crystalforge.generators.symmetry", "UniformPyXtalGenerator", None),
    "substitution": ("crystalforge.generators.substitution", "SubstitutionGenerator", None),
    "wyckoff": ("crystalforge.generators.wyckoff", "WyckoffPriorGenerator", None),
    "mattergen": ("crystalforge.generators.external", "mattergen", None),
    "crystallm": ("crystalforge.generators.external", "crystallm", None),
    # Runs out of process in its own venv (python -m crystalforge.generators.wyformer setup).
    "wyformer": ("crystalforge.generators.wyformer", "WyFormerGenerator", None),
}


def available_generators() -> list[str]:
    """Registry names of all generators, sorted (whether or not their extra is installed)."""
    return sorted(_GENERATORS)


def load_generator(name: str, **config: Any) -> Generator:
    """The generator registered as ``name``, built with ``config`` as its settings.

    Args:
        name: Registry name, one of :func:`available_generators`.
        **config: Keyword settings of the generator class (e.g. ``timeout_s=30``).

    Returns:
        A new generator instance.

    Raises:
        UnknownPluginError: ``name`` is not registered; the message lists the valid names.
        MissingExtraError: The backend's optional dependencies are not installed.
        ConfigError: ``config`` has a setting the generator does not accept.
    """
    try:
        module_name, attr, extra = _GENERATORS[name]
    except KeyError:
        raise UnknownPluginError(
            f"unknown generator {name!r}; choose from {available_generators()}"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # A missing module of our own is a broken install, not a missing extra.
        if extra is None or (exc.name or "").startswith("crystalforge."):
            raise
        raise MissingExtraError(f"generator {name!r}", extra) from exc
    factory: Callable[..., Generator] = getattr(module, attr)
    valid = _settings(factory)
    if valid is not None and (unknown := sorted(set(config) - set(valid))):
        raise ConfigError(
            f"generator {name!r} has no setting(s) {unknown!r}; valid settings: {valid}"
        )
    try:
        return factory(**config)
    except TypeError as exc:  # e.g. a string where a number belongs
        raise ConfigError(f"invalid settings {config!r} for generator {name!r}: {exc}") from exc


def _settings(factory: object) -> list[str] | None:
    """Names of a dataclass generator's settings; ``None`` for other classes."""
    if not dataclasses.is_dataclass(factory):
        return None
    return sorted(f.name for f in dataclasses.fields(factory) if f.init)
