"""The generator registry: lazy lookup by name, clear errors, never None.

Pure unit tests of name resolution; nothing to record.
"""

from __future__ import annotations

import pytest

from crystalforge.core.errors import (
    ConfigError,
    MissingExtraError,
    SetupError,
    UnknownPluginError,
)
from crystalforge.generators import registry
from crystalforge.generators.base import Generator
from crystalforge.generators.fake import FakeGenerator
from crystalforge.generators.registry import available_generators, load_generator
from crystalforge.generators.symmetry import PyXtalGenerator


def test_available_generators() -> None:
    names = available_generators()
    assert names == sorted(names)
    assert {"fake", "pyxtal"} <= set(names)


@pytest.mark.parametrize(
    ("name", "cls", "family"),
    [("fake", FakeGenerator, "fake"), ("pyxtal", PyXtalGenerator, "wyckoff")],
)
def test_load_by_name(name: str, cls: type, family: str) -> None:
    generator = load_generator(name)
    assert isinstance(generator, cls)
    assert isinstance(generator, Generator)
    assert generator.name == name
    assert generator.family == family


def test_every_registered_generator_loads() -> None:
    for name in available_generators():
        generator = load_generator(name)
        assert generator is not None
        assert generator.name == name


def test_settings_are_passed_through() -> None:
    generator = load_generator("pyxtal", timeout_s=5.0, max_attempts_per_structure=3)
    assert isinstance(generator, PyXtalGenerator)
    assert generator.timeout_s == 5.0
    assert generator.max_attempts_per_structure == 3


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UnknownPluginError) as info:
        load_generator("mattergen-xl")
    message = str(info.value)
    assert "'mattergen-xl'" in message
    for name in available_generators():
        assert repr(name) in message
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, SetupError)


def test_unknown_setting_lists_valid_settings() -> None:
    with pytest.raises(ConfigError, match=r"no setting\(s\) \['timeout'\].*'timeout_s'"):
        load_generator("pyxtal", timeout=5)


def test_bad_setting_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="timeout_s"):
        load_generator("pyxtal", timeout_s="soon")
    with pytest.raises(ConfigError, match="max_attempts_per_structure"):
        load_generator("pyxtal", max_attempts_per_structure=0)


def test_missing_backend_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        registry._GENERATORS, "heavy", ("crystalforge_test_absent_backend", "Heavy", "heavy")
    )
    with pytest.raises(MissingExtraError) as info:
        load_generator("heavy")
    assert info.value.extra == "heavy"
    assert "pip install 'crystalforge[heavy]'" in str(info.value)
    assert isinstance(info.value, ImportError)
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_missing_core_module_is_not_blamed_on_an_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._GENERATORS, "broken", ("crystalforge_test_absent", "X", None))
    with pytest.raises(ModuleNotFoundError):
        load_generator("broken")
    monkeypatch.setitem(
        registry._GENERATORS, "ours", ("crystalforge.generators.absent", "X", "heavy")
    )
    with pytest.raises(ModuleNotFoundError) as info:
        load_generator("ours")
    assert not isinstance(info.value, MissingExtraError)
