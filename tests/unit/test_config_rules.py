"""The config's choice rule: a value is one of the listed choices, of the same type (YAML's 1 is not true)."""

import pytest

from lorefine_mpi.config.schema import checked_value
from lorefine_mpi.errors import InputError


@pytest.mark.parametrize("value,expected", [("auto", "auto"), (True, True), (False, False), ("true", True), ("False", False)])
def test_ctf_choice_accepts_auto_and_booleans(value, expected):
    checked = checked_value("score.ctf", value)
    assert checked == expected and type(checked) is type(expected)


@pytest.mark.parametrize("path,value", [("score.ctf", 1), ("score.ctf", 0), ("score.ctf", "yes"), ("search.strategy", True),
                                        ("search.mean_motion", 1), ("score.mode", "Subtract")])
def test_choice_refuses_anything_else_naming_the_key(path, value):
    with pytest.raises(InputError, match=rf"^{path}: expected one of .*, got {value!r}$"):
        checked_value(path, value)
