"""The vocabulary of the config schema: what a key accepts, as a :class:`Rule`.

``integer(lo, hi)``, ``number(lo, hi, lo_open=, hi_open=)``, ``boolean()``, ``string()``,
``choice(*values)`` and ``any_of(*rules)`` build the rules of :data:`ranking_reg.config.schema.
SCHEMA`; each carries the phrase its message uses ("an integer >= -1 (-1 = no limit)"). Types are
strict: ``true`` is not an integer, ``1`` is not a boolean, ``1.5`` is not an integer; an integer
is a number. ``null=...`` (what null means) also accepts null.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ranking_reg.utils.errors import ConfigError


def kind(value: Any) -> str:
    """The YAML name of ``value``'s type, as the messages say it ("got a float")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def describe(value: Any) -> str:
    """``value`` as it would be written on the command line (``true``, ``null``, ``[0.08, 1.0]``)."""
    if value is None:
        return "null"
    if value == "":
        return "''"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(describe(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in value.items()) + "}"
    return str(value)


@dataclass(frozen=True)
class Rule:
    """What one key accepts.

    ``accepts`` is the phrase after "expects" in the message. ``of_type(value)`` says whether the
    value has an accepted type and ``in_range(value)`` (called only then) whether it lies in the
    accepted range; a value failing the first is reported by its type ("got a float"), one failing
    the second by its value ("got -5").
    """

    accepts: str
    of_type: Callable[[Any], bool]
    in_range: Callable[[Any], bool] = lambda value: True

    def problem(self, value: Any) -> str | None:
        """None when ``value`` is accepted, else the end of the message."""
        if not self.of_type(value):
            return f"got {kind(value)}"
        if not self.in_range(value):
            return f"got {describe(value)}"
        return None


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bounds(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return ""


def _within(lo, hi, lo_open: bool = False, hi_open: bool = False) -> Callable[[Any], bool]:
    def check(value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if lo is not None and (value <= lo if lo_open else value < lo):
            return False
        return not (hi is not None and (value >= hi if hi_open else value > hi))

    return check


def _phrase(base: str, bounds: str, note: str, null: str | None) -> str:
    text = " ".join(part for part in (base, bounds) if part)
    if note:
        text += f" ({note})"
    if null is not None:
        text += f", or null ({null})" if null else ", or null"
    return text


def _nullable(rule: Rule, null: str | None) -> Rule:
    if null is None:
        return rule
    return Rule(
        rule.accepts,
        lambda v: v is None or rule.of_type(v),
        lambda v: v is None or rule.in_range(v),
    )


def integer(
    lo: int | None = None, hi: int | None = None, note: str = "", null: str | None = None
) -> Rule:
    """An integer in [lo, hi] (not a boolean, not a float); ``null`` (its meaning) allows null."""
    accepts = _phrase("an integer", _bounds(lo, hi, False, False), note, null)
    return _nullable(Rule(accepts, is_int, _within(lo, hi)), null)


def number(
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    note: str = "",
    null: str | None = None,
) -> Rule:
    """A finite integer or float in the given range (not a boolean)."""
    accepts = _phrase("a number", _bounds(lo, hi, lo_open, hi_open), note, null)
    return _nullable(Rule(accepts, is_number, _within(lo, hi, lo_open, hi_open)), null)


def boolean(note: str = "", null: str | None = None) -> Rule:
    accepts = _phrase("true or false", "", note, null)
    return _nullable(Rule(accepts, lambda v: isinstance(v, bool)), null)


def string(what: str = "a string", null: str | None = None) -> Rule:
    """Any non-empty string."""
    return _nullable(
        Rule(_phrase(what, "", "", null), lambda v: isinstance(v, str), lambda v: bool(v)), null
    )


def choice(*values: Any, note: str = "", null: str | None = None) -> Rule:
    """One of ``values`` (strings, or integers for e.g. precision 16/32/64)."""
    listed = "|".join(describe(v) for v in values)
    accepts = _phrase(f"one of {listed}", "", note, null)
    kinds = {type(v) for v in values}
    return _nullable(
        Rule(accepts, lambda v: type(v) in kinds, lambda v: v in values),
        null,
    )


def any_of(*rules: Rule, accepts: str) -> Rule:
    """A value any of ``rules`` accepts; reported by value if one of them takes its type."""
    return Rule(
        accepts,
        lambda v: any(r.of_type(v) for r in rules),
        lambda v: any(r.of_type(v) and r.in_range(v) for r in rules),
    )


def plain(value: Any) -> Any:
    """``value`` with OmegaConf containers turned into lists and dicts."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def check_value(key: str, value: Any, rule: Rule) -> None:
    """ConfigError naming ``key`` when ``value`` is outside ``rule``, in one sentence:
    ``key=value: expects <what it accepts>; got <its type, or the value>.``"""
    value = plain(value)
    problem = rule.problem(value)
    if problem is not None:
        raise ConfigError(f"{key}={describe(value)}: expects {rule.accepts}; {problem}.")
