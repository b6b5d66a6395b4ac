"""SASS text (``nvdisasm -c``) to instructions, instruction classes and the hot loop.

Classes (what each instruction costs is the model's business, model.py):
``ldg``/``stg`` global loads/stores (by width: LDG.E.128 moves 16 bytes per thread), ``fp32`` (FFMA,
FADD, FMUL, FMNMX, FSETP, FSEL, FCHK, ... and the half-precision HADD2/HFMA2/...), ``int`` (integer
and address arithmetic, moves, selects, predicate logic, the uniform datapath), ``mufu`` (MUFU.RCP,
.RSQ, .EX2, ...), ``conv`` (F2F, I2F, F2I, F2FP, I2FP), ``fp64`` (DADD, DMUL, DFMA, DSETP, ... and every
conversion to or from F64), ``shared`` (LDS, STS, ATOMS), ``barrier`` (BAR), ``branch`` (BRA, CALL,
EXIT, BSSY, BSYNC, ...), ``local`` (LDL, STL: spills or stack arrays), ``other`` (S2R, LDC, NOP, ...).

The hot loop (``hot_loop``): among the loops (a backward branch and its target; several back edges to
one target make one loop), those holding the widest global accesses of the function; of them the
outermost, and among disjoint ones the one with the most such accesses. Its instructions are counted
along one path from its head to its back edge (``loop_paths``), not over its whole body: the
compiler lays out both sides of a runtime-uniform branch (torch's kernel has two copies of its math)
and slow-path calls (the division's and sqrt's ``CALL.REL.NOINC``) inside the loop, and only one side
runs. Of the paths, those with most accesses of the loop's widest width, then most bytes, then
fewest access instructions are the aligned path (the 8-bit kernel branches per thread between vector
and per-lane accesses inside one loop, and stores its codes and scales conditionally). Cold code is
taken as never run: blocks that hold a CALL, and the inlined Payne-Hanek argument
reduction of sinf/cosf (the code a ``@!P BRA`` skips when P = |x| >= 105615: a loop over a constant
table with a local array and FP64 arithmetic, reached only for huge arguments). The longest remaining
path is the estimate (the most expensive runtime options), the shortest is recorded beside it. Loops nested in the hot
loop are counted once per pass of the path and reported apart (``inner``), so that the caller can
scale them by their trip count."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

CLASSES = ("ldg", "stg", "fp32", "int", "mufu", "conv", "fp64", "shared", "barrier", "branch", "local", "other")

_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(?:\{\s*)?(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)\s*(.*?)\s*;")
_LABEL = re.compile(r"^(\.L_x_\d+|\.L_\w+):")
_TARGET = re.compile(r"`\((\.L_\w+)\)")

FP32 = {"FFMA", "FADD", "FMUL", "FMNMX", "FSETP", "FSEL", "FCHK", "FSET", "FRND", "FSWZADD", "FMNMX3",
        "HADD2", "HFMA2", "HMUL2", "HMNMX2", "HSETP2", "HSET2", "FADD32I", "FMUL32I", "FFMA32I"}
FP64 = {"DADD", "DMUL", "DFMA", "DSETP", "DMNMX", "DSET"}
CONV = {"F2F", "I2F", "F2I", "F2FP", "I2FP", "I2I", "F2IP"}
SHARED = {"LDS", "STS", "ATOMS", "LDSM", "STSM"}
BRANCH = {"BRA", "BRX", "JMP", "JMX", "CALL", "RET", "EXIT", "BSSY", "BSYNC", "BREAK", "WARPSYNC", "BPT", "KILL"}
OTHER = {"S2R", "CS2R", "S2UR", "LDC", "ULDC", "NOP", "DEPBAR", "YIELD", "MEMBAR", "ERRBAR", "CCTL", "VOTEU",
         "PMTRIG", "NANOSLEEP"}


@dataclass
class Instr:
    index: int
    addr: int
    pred: str  # '@P0', '@!P1' or ''
    opcode: str  # with modifiers: 'LDG.E.128'
    operands: str
    target: str | None  # a branch's label
    base: str = ""  # the opcode without modifiers: 'LDG'

    def __post_init__(self):
        self.base = self.opcode.split(".")[0]


def parse(text: str) -> tuple[list[Instr], dict[str, int]]:
    """Instructions in address order and {label: index of the instruction it labels}."""
    instrs: list[Instr] = []
    labels: dict[str, int] = {}
    pending: list[str] = []
    for line in text.splitlines():
        m = _LABEL.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = _LINE.match(line)
        if not m:
            continue
        for label in pending:
            labels[label] = len(instrs)
        pending = []
        target = _TARGET.search(m.group(4))
        instrs.append(Instr(len(instrs), int(m.group(1), 16), (m.group(2) or "").strip(), m.group(3), m.group(4),
                            target.group(1) if target else None))
    return instrs, labels


_CLASS_OF: dict[str, str] = {}


def classify(ins: Instr) -> str:
    cls = _CLASS_OF.get(ins.opcode)
    if cls is None:
        cls = _CLASS_OF[ins.opcode] = _classify(ins.base, ins.opcode)
    return cls


def _classify(base: str, op: str) -> str:
    if base == "LDG" or (base == "LD" and ".E" in op):
        return "ldg"
    if base in ("STG", "RED", "ATOMG", "ATOM") or (base == "ST" and ".E" in op):
        return "stg"
    if base in ("LDL", "STL"):
        return "local"
    if base in FP64 or ".F64" in op:
        return "fp64"
    if base in FP32:
        return "fp32"
    if base == "MUFU":
        return "mufu"
    if base in CONV:
        return "conv"
    if base in SHARED:
        return "shared"
    if base == "BAR":
        return "barrier"
    if base in BRANCH:
        return "branch"
    if base in OTHER:
        return "other"
    return "int"


def access_bytes(ins: Instr) -> int:
    """Bytes per thread of a global or local access: .128 -> 16, .64 -> 8, .U8/.S8 -> 1, .U16/.S16 -> 2,
    else 4."""
    mods = ins.opcode.split(".")[1:]
    for mod, size in (("128", 16), ("64", 8), ("U8", 1), ("S8", 1), ("U16", 2), ("S16", 2)):
        if mod in mods:
            return size
    return 4


def is_global(ins: Instr) -> bool:
    return classify(ins) in ("ldg", "stg")


@dataclass
class Loop:
    head: int  # index of the first instruction (the back edge's target)
    latch: int  # index of the last back edge

    def contains(self, other: "Loop") -> bool:
        return self.head <= other.head and other.latch <= self.latch and self != other


def loops(instrs: list[Instr], labels: dict[str, int]) -> list[Loop]:
    """Every loop: a branch whose target does not follow it, merged per target."""
    latest: dict[int, int] = {}
    for ins in instrs:
        if ins.target is not None and ins.base == "BRA" and ins.target in labels and labels[ins.target] <= ins.index:
            head = labels[ins.target]
            latest[head] = max(latest.get(head, ins.index), ins.index)
    return sorted((Loop(h, l) for h, l in latest.items()), key=lambda lp: (lp.head, -lp.latch))


def hot_loop(instrs: list[Instr], labels: dict[str, int]) -> tuple[Loop | None, int]:
    """The hot loop (module docstring) and the width in bytes of the accesses that chose it."""
    found = loops(instrs, labels)
    widths = {lp.head: max((access_bytes(i) for i in instrs[lp.head:lp.latch + 1] if is_global(i)), default=0)
              for lp in found}
    widest = max(widths.values(), default=0)
    if widest == 0:
        return None, 0
    chosen = [lp for lp in found if widths[lp.head] == widest]
    outer = [lp for lp in chosen if not any(o.contains(lp) for o in chosen)]

    def wide_count(lp: Loop) -> int:
        return sum(1 for i in instrs[lp.head:lp.latch + 1] if is_global(i) and access_bytes(i) == widest)

    return max(outer, key=wide_count), widest


@dataclass
class PathCount:
    """Instructions along one path through a loop: per class, global bytes, and the indices."""
    instructions: int
    classes: Counter
    indices: list[int] = field(repr=False)


def _blocks(instrs: list[Instr], labels: dict[str, int], lp: Loop) -> list[tuple[int, int]]:
    leaders = {lp.head, lp.latch + 1}
    for ins in instrs[lp.head:lp.latch + 1]:
        if ins.target is not None and ins.target in labels and lp.head <= labels[ins.target] <= lp.latch:
            leaders.add(labels[ins.target])
        if ins.base in BRANCH and ins.base not in ("BSSY", "BSYNC", "WARPSYNC", "CALL"):
            leaders.add(ins.index + 1)
    starts = sorted(s for s in leaders if lp.head <= s <= lp.latch + 1)
    return [(a, b - 1) for a, b in zip(starts, starts[1:])]


TRIG_SLOW_THRESHOLD = "105615"  # sinf/cosf take the Payne-Hanek reduction at |x| >= 105615


def cold(instrs: list[Instr], labels: dict[str, int]) -> set[int]:
    """Indices of instructions in the trig slow path: those between ``@!Pn BRA L`` and L where the
    last instruction to set Pn before the branch (within 64) is ``FSETP.GE.AND Pn, PT, |R|, 105615``."""
    out: set[int] = set()
    for ins in instrs:
        if ins.base != "BRA" or not ins.pred.startswith("@!P") or ins.target not in labels:
            continue
        pred = ins.pred[2:]
        for prev in reversed(instrs[max(0, ins.index - 64):ins.index]):
            if prev.operands.startswith(pred + ","):  # the predicate's last definition
                fields = [f.strip() for f in prev.operands.split(",")]
                if prev.base == "FSETP" and len(fields) >= 2 and "|" in prev.operands \
                        and fields[-2] == TRIG_SLOW_THRESHOLD:
                    out.update(range(ins.index + 1, labels[ins.target]))
                break
    return out


def _path(instrs, labels, lp: Loop, longest: bool, never: set[int] | None) -> list[int] | None:
    """Instruction indices of a path from the loop's head to its latch over forward edges inside the
    loop: the one with most accesses of the loop's widest global width, then most bytes accessed,
    then fewest access instructions (the aligned side of a branch between one vector access and
    per-lane ones moving the same bytes), then the longest (or shortest); cold blocks (a CALL, the
    trig slow path) left out unless ``never`` (the cold instructions, ``cold``) is None."""
    blocks = _blocks(instrs, labels, lp)
    skip_cold = never is not None
    width = max((access_bytes(i) for i in instrs[lp.head:lp.latch + 1] if is_global(i)), default=0)
    start_of = {a: k for k, (a, _) in enumerate(blocks)}
    preds: dict[int, list[int]] = {}
    for k in range(len(blocks)):
        for s in _successors(instrs, labels, blocks, start_of, k, lp):
            preds.setdefault(s, []).append(k)
    sign = 1 if longest else -1
    # block: (wide accesses, bytes accessed, -accesses, sign * length, indices), compared in that order
    best: dict[int, tuple[int, int, int, int, list[int]]] = {}
    for k, (a, b) in enumerate(blocks):  # forward edges only: address order is a topological order
        body = list(range(a, b + 1))
        if skip_cold and (a in never or any(instrs[i].base == "CALL" for i in body)):
            continue
        accesses = [access_bytes(instrs[i]) for i in body if is_global(instrs[i])]
        wide = accesses.count(width)
        here = (wide, sum(accesses), -len(accesses), sign * len(body), body)
        if k == 0:
            best[k] = here
            continue
        reached = [p for p in preds.get(k, []) if p in best]
        if reached:
            prev = max((best[p] for p in reached), key=lambda t: t[:4])
            best[k] = tuple(x + y for x, y in zip(prev, here))
    last = next((k for k, (a, b) in enumerate(blocks) if a <= lp.latch <= b), None)
    return best[last][4] if last in best else None


def _successors(instrs, labels, blocks, start_of, k, lp: Loop) -> set[int]:
    a, b = blocks[k]
    end = instrs[b]
    succ = set()
    unconditional = end.base in ("BRA", "EXIT", "RET", "BRX", "JMP") and not end.pred
    if not unconditional and k + 1 < len(blocks):
        succ.add(k + 1)
    if end.target is not None and end.target in labels:
        t = labels[end.target]
        if t > b and t in start_of:  # forward edges only: back edges close this loop or an inner one
            succ.add(start_of[t])
    return succ


def loop_paths(instrs: list[Instr], labels: dict[str, int], lp: Loop, never: set[int] | None = None
               ) -> dict[str, PathCount]:
    """{"longest": ..., "shortest": ...} paths through the loop, cold code (``never``, by default
    ``cold(instrs, labels)``) skipped where the latch stays reachable without it."""
    never = cold(instrs, labels) if never is None else never
    out = {}
    for name, longest in (("longest", True), ("shortest", False)):
        idx = _path(instrs, labels, lp, longest, never) or _path(instrs, labels, lp, longest, None) or []
        out[name] = PathCount(len(idx), Counter(classify(instrs[i]) for i in idx), idx)
    return out


def inner_loops(instrs: list[Instr], labels: dict[str, int], lp: Loop, path: list[int]) -> list[Loop]:
    """Loops nested in ``lp`` whose back edge lies on ``path`` (they run on that path)."""
    on_path = set(path)
    return [inner for inner in loops(instrs, labels) if lp.contains(inner) and inner.latch in on_path]


def global_bytes(instrs: list[Instr], indices: list[int]) -> dict[str, int]:
    """Bytes per thread read and written by the global accesses among ``indices``; an access that
    appears under complementary predicates with the same operands (both sides of a select) once."""
    seen: dict[tuple, int] = {}
    for i in indices:
        ins = instrs[i]
        if is_global(ins):
            seen[(classify(ins), ins.opcode, ins.operands)] = access_bytes(ins)
    read = sum(v for (c, _, _), v in seen.items() if c == "ldg")
    return {"read": read, "written": sum(seen.values()) - read}


def widths(instrs: list[Instr], indices: list[int]) -> dict[str, int]:
    """Global accesses by opcode (e.g. {'LDG.E.128': 6, 'STG.E.128': 4})."""
    return dict(Counter(instrs[i].opcode for i in indices if is_global(instrs[i])))
