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


class _Walker:
    """FLOPs of one parsed program's computations, memoised: `count(name, repeat)` counts a
    computation, its fusions, calls and branches, and its while loops once (repeat=False) or
    `known_trip_count` times (repeat=True)."""

    def __init__(self, comps: dict):
        self.comps, self.memo = comps, {}

    def count(self, name: str, repeat: bool) -> float:
        if (name, repeat) in self.memo:
            return self.memo[name, repeat]
        self.memo[name, repeat] = 0.0  # no recursion through a cycle
        types = {n: t for n, t, *_ in self.comps.get(name, [])}
        total = sum(self.instruction(inst, types, repeat) for inst in self.comps.get(name, []))
        self.memo[name, repeat] = total
        return total

    def instruction(self, inst, types: dict, repeat: bool) -> float:
        _, type_, opcode, operands, attributes = inst
        if opcode == "dot":
            lhs = _dims(types.get(operands[0], "")) if operands else None
            m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", attributes)
            if lhs is not None and m:
                contracted = math.prod(lhs[int(d)] for d in m.group(1).split(",") if d)
                return 2.0 * _elements(type_) * contracted
            return 0.0
        if opcode in _ELEMENTWISE:
            return float(_elements(type_))
        if opcode == "reduce" and operands:
            return float(_elements(types.get(operands[0], "")))
        if opcode == "while":
            trips = 1
            m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', attributes)
            if repeat and m:
                trips = int(m.group(1))
            body = _callees(attributes, "body") + _callees(attributes, "condition")
            return trips * sum(self.count(c, repeat) for c in body)
        if opcode == "conditional":
            branches = (_callees(attributes, "branch_computations")
                        or _callees(attributes, "true_computation")
                        + _callees(attributes, "false_computation"))
            return max((self.count(c, repeat) for c in branches), default=0.0)
        if opcode in ("reduce", "reduce-window", "scatter", "sort", "map", "all-reduce",
                      "select-and-scatter", "reduce-scatter"):
            return 0.0
        # fusions, calls, custom calls with a called computation
        return sum(self.count(c, repeat)
                   for c in _callees(attributes, "calls") + _callees(attributes, "to_apply"))


def loop_flops(text: str) -> tuple[float, float]:
    """(FLOPs with every loop body times its trip count, FLOPs with each body once)."""
    comps, entry = parse(text)
    if entry is None:
        return 0.0, 0.0
    walker = _Walker(comps)
    return walker.count(entry, True), walker.count(entry, False)


_MOVES = {"copy", "transpose", "bitcast", "dynamic-slice", "dynamic-update-slice", "slice",
          "concatenate", "pad", "broadcast", "reshape", "parameter", "constant", "tuple",
          "get-tuple-element", "iota"}
_TRANSCENDENTAL = {"exponential", "log", "tanh", "logistic", "sqrt", "rsqrt", "power", "sine",
                   "cosine", "exponential-minus-one", "log-plus-one", "erf"}


def instruction_classes(text: str) -> dict[str, tuple[str, float]]:
    """{instruction: (class, FLOPs of one execution)} for every instruction, as a profiler names
    them: "container" (a loop, branch or call: its operations are instructions too), "products" (a dot or convolution, fused or not),
    "transcendental" (exp, log, tanh... without a product), "reductions", "data movement"
    (copies, transposes, slices and the like only) or "elementwise". Its FLOPs count the loops
    inside it once: a profile's events time one execution each."""
    comps, _ = parse(text)
    walker = _Walker(comps)

    def opcodes(name: str, seen: set) -> set:
        found = set()
        for _, _, opcode, _, attributes in comps.get(name, []):
            found.add(opcode)
            for c in _callees(attributes, "calls"):
                if c not in seen:
                    seen.add(c)
                    found |= opcodes(c, seen)
        return found

    out = {}
    for comp, instructions in comps.items():
        types = {n: t for n, t, *_ in instructions}
        for inst in instructions:
            name, _, opcode, _, attributes = inst
            if opcode in ("while", "conditional", "call"):
                out[name] = ("container", 0.0)  # its operations are profiled themselves
                continue
            ops = {opcode} | set().union(*(opcodes(c, {c}) for c in _callees(attributes, "calls")))
            if ops & {"dot", "convolution"}:
                kind = "products"
            elif ops & _TRANSCENDENTAL:
                kind = "transcendental"
            elif "reduce" in ops:
                kind = "reductions"
            elif ops - {"fusion"} <= _MOVES:
                kind = "data movement"
            else:
                kind = "elementwise"
            out[name] = (kind, walker.instruction(inst, types, False))
    return out
