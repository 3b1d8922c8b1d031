"""What the compiled Avro writer and reader share: the lines of one generated function, its constants,
fresh local names, and turning the lines into the function; the ranges of Avro's integer types."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

INT_RANGES = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
"""The lowest and highest value of each Avro integer type."""


class Unsupported(ValueError):
    """The schema uses a type a compiler does not cover (the codec keeps fastavro for it)."""


class CodeBuilder:
    """The body of one generated function, line by line, and the constants it reads."""

    def __init__(self, constants: dict[str, Any]) -> None:
        self.lines: list[str] = []
        self.constants = dict(constants)
        self.names = 0

    def fresh(self, stem: str) -> str:
        """A local name not used before in this function."""
        self.names += 1
        return f"_{stem}{self.names}"

    def emit(self, depth: int, line: str) -> None:
        """A line of the body, indented `depth` levels."""
        self.lines.append("    " * depth + line)

    def function(self, signature: str, head: list[str], tail: list[str], label: str) -> Callable[..., Any]:
        """`def <signature>:` with `head`, the emitted lines and `tail` as its body, compiled with the
        constants as its globals (`label` names it in tracebacks)."""
        source = "\n".join([f"def {signature}:", *head, *self.lines, *tail])
        namespace = dict(self.constants)
        exec(compile(source, f"<{label}>", "exec"), namespace)
        return namespace[signature.split("(")[0]]  # type: ignore[no-any-return]
