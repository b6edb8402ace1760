"""The attribute cache of the stage runner and JobObjects (bindings/attribute.hpp): `_core.Attribute`.

It reads and writes `__slots__` members at their offsets once it has seen
the type; these tests hold it to what plain getattr/setattr do, above all
after the class changed under it.
"""

import dataclasses
import gc
import weakref

import pytest

import _portcullis_core as _core


class Slotted:
    __slots__ = ("a", "b")


class Other:
    __slots__ = ("b", "a")  # the same names at other offsets


def test_slots_read_and_written_as_getattr_and_setattr_do():
    a = _core.Attribute("a")
    o = Slotted()
    with pytest.raises(AttributeError):
        a.get(o)  # unset
    for value in (1, "two", None):
        a.set(o, value)  # (the first call fills the cache, the next use it)
        assert a.get(o) is value and o.a is value
    o.a = 5
    assert a.get(o) == 5


def test_types_met_in_turn_each_get_their_own_offset():
    a = _core.Attribute("a")
    s, t = Slotted(), Other()
    s.b, t.b = "s.b", "t.b"
    for _ in range(3):
        a.set(s, "s.a")
        a.set(t, "t.a")
        assert (a.get(s), a.get(t), s.b, t.b) == ("s.a", "t.a", "s.b", "t.b")


def test_a_class_changed_after_the_cache_is_read_anew():
    class C:
        __slots__ = ("x",)

    x = _core.Attribute("x")
    o = C()
    x.set(o, 1)
    assert x.get(o) == 1
    C.x = property(lambda self: "property", lambda self, v: setattr(self, "seen", v))
    C.seen = None
    with pytest.raises(AttributeError):
        x.set(o, 2)  # the property's setter runs (and cannot store "seen": no such slot)
    assert x.get(o) == "property"


def test_getattr_hooks_frozen_classes_and_dict_attributes_go_the_usual_way():
    class Lazy:
        __slots__ = ("v",)

        def __getattr__(self, name):
            return f"computed {name}"

    @dataclasses.dataclass(frozen=True)
    class Frozen:
        v: int = 0

    class Plain:
        pass

    v = _core.Attribute("v")
    lazy = Lazy()
    assert v.get(lazy) == "computed v"
    v.set(lazy, 3)
    assert v.get(lazy) == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.set(Frozen(), 1)
    assert v.get(Frozen(7)) == 7
    p = Plain()
    v.set(p, "in the dict")
    assert p.__dict__ == {"v": "in the dict"} and v.get(p) == "in the dict"


def test_values_are_owned_the_old_one_released():
    class Value:
        pass

    a = _core.Attribute("a")
    o = Slotted()
    first, second = Value(), Value()
    watch = weakref.ref(first)
    a.set(o, first)
    a.set(o, first)
    del first
    gc.collect()
    assert watch() is not None  # held by the slot
    a.set(o, second)
    gc.collect()
    assert watch() is None and a.get(o) is second
