"""Tests for spatialspec.registry and the method registry."""

from __future__ import annotations

import re

import pytest

from spatialspec.methods import METHODS, SpatialMethod, get_method
from spatialspec.registry import Registry


def test_register_get_names_and_contains() -> None:
    reg: Registry[object] = Registry("widget")

    @reg.register("zeta")
    class Zeta:
        pass

    @reg.register("alpha")
    def alpha() -> int:
        return 1

    assert reg.get("zeta") is Zeta
    assert reg.get("alpha") is alpha
    assert reg.names() == ["alpha", "zeta"]  # sorted, not insertion order
    assert list(reg) == ["alpha", "zeta"]
    assert "zeta" in reg
    assert "beta" not in reg


def test_decorator_returns_the_object_unchanged() -> None:
    reg: Registry[type] = Registry("widget")

    class Thing:
        pass

    assert reg.register("thing")(Thing) is Thing


def test_name_of_object_and_subclass() -> None:
    reg: Registry[type] = Registry("widget")

    @reg.register("base")
    class Base:
        pass

    class Child(Base):
        pass

    class GrandChild(Child):
        pass

    assert reg.name_of(Base) == "base"
    assert reg.name_of(Child) == "base"
    assert reg.name_of(GrandChild) == "base"


def test_name_of_prefers_the_exact_registration() -> None:
    reg: Registry[type] = Registry("widget")

    @reg.register("base")
    class Base:
        pass

    @reg.register("child")
    class Child(Base):
        pass

    assert reg.name_of(Child) == "child"
    assert reg.name_of(Base) == "base"


def test_name_of_unregistered_raises() -> None:
    reg: Registry[type] = Registry("widget")
    with pytest.raises(KeyError, match="is not a registered widget"):
        reg.name_of(int)


def test_duplicate_registration_raises() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("one")(1)
    with pytest.raises(ValueError, match=r"widget 'one' is already registered"):
        reg.register("one")(2)
    assert reg.get("one") == 1  # the first registration is kept


def test_unknown_name_lists_valid_names() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("b")(2)
    reg.register("a")(1)
    with pytest.raises(KeyError, match=re.escape("unknown widget 'c'; valid names: a, b")):
        reg.get("c")


def test_unknown_name_in_empty_registry() -> None:
    reg: Registry[int] = Registry("widget")
    with pytest.raises(KeyError, match=re.escape("(none registered)")):
        reg.get("anything")


def test_methods_registry_holds_the_three_methods() -> None:
    assert {"binary", "bbox", "seg"} <= set(METHODS.names())
    for name in METHODS.names():
        cls = get_method(name)
        assert issubclass(cls, SpatialMethod)
        assert METHODS.name_of(cls) == name


def test_get_method_unknown_name_lists_valid_names() -> None:
    with pytest.raises(KeyError) as err:
        get_method("segg")
    message = str(err.value)
    assert "unknown method 'segg'" in message
    assert f"valid names: {', '.join(METHODS.names())}" in message
    for name in ("binary", "bbox", "seg"):
        assert name in message


def test_method_registered_twice_is_rejected() -> None:
    with pytest.raises(ValueError, match="method 'seg' is already registered"):
        METHODS.register("seg")(get_method("binary"))
    assert METHODS.get("seg").__name__ == "SegMethod"
