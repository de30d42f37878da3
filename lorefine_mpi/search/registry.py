"""`Registry` and `Option`: the options of one config key as small objects (`search.options` holds the registries)."""

from __future__ import annotations


class Registry:
    """The options of one config key: name → option object, in the order they are documented (the first is not
    necessarily the default: the schema's dataclasses hold the defaults)."""

    def __init__(self, key: str, *options):
        self.key = key
        self._options = {o.name: o for o in options}

    def __iter__(self):
        return iter(self._options)

    def __len__(self) -> int:
        return len(self._options)

    def __contains__(self, name) -> bool:
        return name in self._options

    def __getitem__(self, name: str):
        """The option called ``name``; ValueError naming the key and the allowed values otherwise."""
        try:
            return self._options[name]
        except (KeyError, TypeError):
            raise ValueError(f"{self.key}: expected {self.expected()}, got {name!r}") from None

    def names(self) -> tuple:
        return tuple(self._options)

    def expected(self) -> str:
        return "one of " + ", ".join(self._options)


class Option:
    """An option: its config name, equal to any other instance of its class."""

    name = ""

    def __repr__(self) -> str:
        return f"<{self.name}>"

    def __eq__(self, other) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))
