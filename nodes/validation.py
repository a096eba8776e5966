"""The pack's validate_inputs: ComfyUI's own range and option checks for the inputs a node validates itself, then the
pack's rules (svi/validation.py), refused once before anything runs.

ComfyUI v0.33.0 skips its min/max and option checks for every input a node's validate_inputs takes, so they are
repeated here from the node's schema (and NaN, which passes any min/max, is refused). A refusal is raised rather than
returned: ComfyUI attaches a returned refusal to each input validate_inputs takes (one bad width was reported four
times, on unrelated inputs), while a raised one is reported once for the node, one line per bad input naming it.
Values ComfyUI could not convert ("wide" for an INT) are left to ComfyUI's own message; rules that need them wait.
Linked inputs arrive as None during validation and are checked when the node runs.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

from comfy_api.latest import io

from ..svi.validation import InputProblem, number_in_range, raise_if_any

Rule = tuple[Sequence[str], Callable[..., list[InputProblem]]]


def _declared_problems(node_class, values: dict) -> tuple[list[InputProblem], set[str]]:
    """Problems of the declared inputs by their schema, and the names whose values no rule may use."""
    problems: list[InputProblem] = []
    unusable: set[str] = set()
    for spec in node_class.define_schema().inputs:
        name = spec.id
        if name not in values or values[name] is None:
            continue
        value = values[name]
        if isinstance(spec, (io.Int.Input, io.Float.Input)):
            if isinstance(value, str) or isinstance(value, bool):  # ComfyUI already said it could not convert it
                unusable.add(name)
                continue
            found = number_in_range(name, value, spec.min, spec.max)
        elif isinstance(spec, io.Combo.Input):
            found = [] if value in spec.options else [InputProblem(name, f"{value!r} is not one of {list(spec.options)}")]
        else:
            found = []
        if found:
            problems += found
            unusable.add(name)
    return problems, unusable


def refuse_bad_inputs(node_class, values: dict, rules: Iterable[Rule] = ()) -> bool:
    """True, or raises InvalidInputs listing every bad input. Each rule runs once all the inputs it names are usable."""
    problems, unusable = _declared_problems(node_class, values)
    for names, rule in rules:
        if all(values.get(name) is not None and name not in unusable for name in names):
            found = rule(*(values[name] for name in names))
            problems += found
            unusable.update(problem.input for problem in found)
    raise_if_any(problems)
    return True


def value_error_rule(name: str, check: Callable) -> Callable[..., list[InputProblem]]:
    """A rule from a check that raises ValueError with its reason."""

    def rule(*args) -> list[InputProblem]:
        try:
            check(*args)
        except ValueError as error:
            message = str(error)  # "filename_prefix '..' would ..." reads "filename_prefix: '..' would ..." once named
            return [InputProblem(name, message[len(name):].lstrip(": ") if message.startswith(name) else message)]
        return []

    return rule
