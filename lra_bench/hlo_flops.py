"""FLOPs of a compiled program with its loops counted as many times as they run.

XLA's cost analysis counts a while loop's body once (a `lax.scan` of K matrix products reports
one product): the CPU attention blocks, top-k's chunks and every other scanned kernel were
understated by their trip counts (issue 29: 44.8 GFLOP recorded for a ListOps Transformer step
whose attention alone is ~200 GFLOP by hand). `loop_flops` walks the optimised HLO text and
counts every computation as XLA's model does for the common cases (a dot: 2 x output elements x
contracted size; an elementwise or compare/select op: one per output element, transcendentals
not counted; a reduce: one per input element), a fusion as its fused computation, a call as its
callee, a conditional as its costliest branch, and a while loop as `known_trip_count` times its
body and condition (XLA's own annotation; a loop without one counts once). It returns the count
with loops repeated and the count with each body once; `measure.cost_flops` adds the difference,
the work XLA's figure leaves out, to XLA's figure.
"""

from __future__ import annotations

import math
import re

_ELEMENTWISE = {
    "add", "subtract", "multiply", "divide", "maximum", "minimum", "compare", "select", "and",
    "or", "xor", "not", "negate", "abs", "sign", "clamp", "remainder", "convert", "floor", "ceil",
    "round-nearest-even", "round-nearest-afz", "is-finite", "shift-left", "shift-right-logical",
    "shift-right-arithmetic",
}
_HEADER = re.compile(r"^(?:ENTRY\s+)?%(\S+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%(\S+)\s*=\s*(.*)$")
_SHAPE = re.compile(r"^[a-z]+\d*\[([\d,]*)\]")


def _split_type(rest: str) -> tuple[str, str]:
    """'f32[2,3]{1,0} dot(...)' -> ('f32[2,3]{1,0}', 'dot(...)'); tuple types kept whole."""
    if rest.startswith("("):
        depth = 0
        for i, c in enumerate(rest):
            depth += c == "("
            depth -= c == ")"
            if depth == 0:
                return rest[:i + 1], rest[i + 1:].strip()
    head, _, tail = rest.partition(" ")
    return head, tail


def _dims(type_: str) -> list[int] | None:
    m = _SHAPE.match(type_)
    if not m:
        return None
    return [int(d) for d in m.group(1).split(",") if d]


def _elements(type_: str) -> int:
    dims = _dims(type_)
    return math.prod(dims) if dims is not None else 0


def parse(text: str) -> tuple[dict, str | None]:
    """{computation: [(name, type, opcode, operands, attributes)]} and the entry's name."""
    comps, entry, current = {}, None, None
    for line in text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m:
                current = m.group(1)
                comps[current] = []
                if line.startswith("ENTRY"):
                    entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        type_, call = _split_type(m.group(2))
        opcode, _, args = call.partition("(")
        depth, i = 1, 0
        while i < len(args) and depth:
            depth += args[i] == "("
            depth -= args[i] == ")"
            i += 1
        operands = re.findall(r"%([^\s,()]+)", args[:i - 1])
        comps[current].append((m.group(1), type_, opcode.strip(), operands, args[i:]))
    return comps, entry


def _callees(attributes: str, key: str) -> list[str]:
    m = re.search(rf"{key}=\{{([^}}]*)\}}", attributes) or re.search(rf"{key}=%([^\s,]+)",
                                                                        attributes)
    if not m:
        return []
    return re.findall(r"%?([^\s,{}]+)", m.group(1))


def loop_flops(text: str) -> tuple[float, float]:
    """(FLOPs with every loop body times its trip count, FLOPs with each body once)."""
    comps, entry = parse(text)
    if entry is None:
        return 0.0, 0.0
    memo: dict = {}

    def walk(name: str, repeat: bool) -> float:
        if (name, repeat) in memo:
            return memo[name, repeat]
        memo[name, repeat] = 0.0  # no recursion through a cycle
        types = {n: t for n, t, *_ in comps.get(name, [])}
        total = 0.0
        for _, type_, opcode, operands, attributes in comps.get(name, []):
            if opcode == "dot":
                lhs = _dims(types.get(operands[0], "")) if operands else None
                m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", attributes)
                if lhs is not None and m:
                    contracted = math.prod(lhs[int(d)] for d in m.group(1).split(",") if d)
                    total += 2.0 * _elements(type_) * contracted
            elif opcode in _ELEMENTWISE:
                total += _elements(type_)
            elif opcode == "reduce" and operands:
                total += _elements(types.get(operands[0], ""))
            elif opcode == "while":
                trips = 1
                m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', attributes)
                if repeat and m:
                    trips = int(m.group(1))
                body = _callees(attributes, "body") + _callees(attributes, "condition")
                total += trips * sum(walk(c, repeat) for c in body)
            elif opcode == "conditional":
                branches = (_callees(attributes, "branch_computations")
                            or _callees(attributes, "true_computation")
                            + _callees(attributes, "false_computation"))
                total += max((walk(c, repeat) for c in branches), default=0.0)
            else:  # fusions, calls, custom calls with a called computation
                for c in _callees(attributes, "calls") + _callees(attributes, "to_apply"):
                    if opcode not in ("reduce", "reduce-window", "scatter", "sort", "map",
                                      "all-reduce", "select-and-scatter", "reduce-scatter"):
                        total += walk(c, repeat)
        memo[name, repeat] = total
        return total

    return walk(entry, True), walk(entry, False)
