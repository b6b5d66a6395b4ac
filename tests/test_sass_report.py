"""The static SASS report (``python -m noisefuse.bench.sass``): its parser, classifier, hot-loop
heuristic and model on hand-written SASS (always run), then the invariants of issue #21 on every
kernel variant of the CUDA-built module (where cuobjdump/nvdisasm and a CUDA build are here)."""
import math
import os
import stat

import pytest

from noisefuse.bench.sass import analyze, checks, extract, model, parse, report, tools
from noisefuse.bench.sass.variants import Variant, algorithm_bytes, decode

# A kernel with a scalar tail loop and an aligned loop: in the aligned loop a uniform branch with
# two sides of different length, a division slow-path call, and predicated stores under P1 / !P1.
SNIPPET = """
        /*0000*/                   S2R R0, SR_TID.X ;
.L_x_1:
        /*0010*/                   LDG.E R2, desc[UR4][R4.64] ;
        /*0020*/                   FADD R2, R2, 1 ;
        /*0030*/                   STG.E desc[UR4][R4.64], R2 ;
        /*0040*/              @P0 BRA `(.L_x_1) ;
.L_x_2:
        /*0050*/                   LDG.E.128 R8, desc[UR4][R16.64] ;
        /*0060*/                   LDG.E.128 R12, desc[UR4][R18.64] ;
        /*0070*/              @P2 BRA `(.L_x_3) ;
        /*0080*/                   FFMA R8, R12, R9, R8 ;
        /*0090*/                   FMUL R9, R9, R13 ;
        /*00a0*/                   DADD R20, R20, R22 ;
        /*00b0*/                   BRA `(.L_x_4) ;
.L_x_3:
        /*00c0*/                   FADD R8, R8, R12 ;
.L_x_4:
        /*00d0*/                   MUFU.RCP R3, R9 ;
        /*00e0*/                   FCHK P3, R8, R9 ;
        /*00f0*/              @!P3 BRA `(.L_x_5) ;
        /*0100*/                   MOV R30, 0x120 ;
        /*0110*/                   CALL.REL.NOINC `($__internal_0_$__cuda_sm3x_div_rn_noftz_f32_slowpath) ;
.L_x_5:
        /*0120*/                   IMAD.WIDE R16, R0, 0x10, R16 ;
        /*0130*/               @P1 STG.E.128 desc[UR4][R16.64], R8 ;
        /*0140*/              @!P1 STG.E.128 desc[UR4][R16.64], R8 ;
        /*0150*/                   ISETP.GE.AND P4, PT, R0, R1, PT ;
        /*0160*/              @!P4 BRA `(.L_x_2) ;
        /*0170*/                   EXIT ;
"""


def snippet():
    return parse.parse(SNIPPET)


def test_parse_reads_addresses_predicates_and_labels():
    instrs, labels = snippet()
    assert len(instrs) == 24 and instrs[0].opcode == "S2R"
    assert labels == {".L_x_1": 1, ".L_x_2": 5, ".L_x_3": 12, ".L_x_4": 13, ".L_x_5": 18}
    bra = instrs[4]
    assert (bra.pred, bra.base, bra.target, bra.addr) == ("@P0", "BRA", ".L_x_1", 0x40)
    assert instrs[17].base == "CALL" and instrs[17].target is None  # a call's target is not a label


@pytest.mark.parametrize("opcode,cls", [
    ("LDG.E.128", "ldg"), ("LDG.E.U8", "ldg"), ("STG.E.64", "stg"), ("FFMA", "fp32"), ("FMNMX", "fp32"),
    ("FSETP.GEU.AND", "fp32"), ("HFMA2.MMA", "fp32"), ("IMAD.WIDE.U32", "int"), ("LOP3.LUT", "int"),
    ("IADD3", "int"), ("MOV", "int"), ("UIADD3", "int"), ("MUFU.RSQ", "mufu"), ("F2F.BF16.F32", "conv"),
    ("F2FP.BF16.F32.PACK_AB", "conv"), ("I2F.U32", "conv"), ("DADD", "fp64"), ("DFMA", "fp64"),
    ("F2F.F64.F32", "fp64"), ("I2F.F64", "fp64"), ("LDS", "shared"), ("STS.128", "shared"),
    ("BAR.SYNC.DEFER_BLOCKING", "barrier"), ("BRA", "branch"), ("BSSY", "branch"), ("EXIT", "branch"),
    ("LDL.64", "local"), ("STL", "local"), ("S2R", "other"), ("LDC.64", "other")])
def test_classify(opcode, cls):
    assert parse.classify(parse.Instr(0, 0, "", opcode, "", None)) == cls


@pytest.mark.parametrize("opcode,size", [("LDG.E.128", 16), ("STG.E.64", 8), ("LDG.E", 4), ("LDG.E.U8", 1),
                                         ("LDG.E.U16", 2), ("STL.128", 16)])
def test_access_bytes(opcode, size):
    assert parse.access_bytes(parse.Instr(0, 0, "", opcode, "", None)) == size


def test_the_hot_loop_is_the_one_with_the_widest_accesses():
    instrs, labels = snippet()
    assert [(lp.head, lp.latch) for lp in parse.loops(instrs, labels)] == [(1, 4), (5, 22)]
    lp, width = parse.hot_loop(instrs, labels)
    assert (lp.head, lp.latch, width) == (5, 22, 16)


def test_paths_skip_the_slow_path_call_and_take_one_side_of_a_branch():
    instrs, labels = snippet()
    lp, _ = parse.hot_loop(instrs, labels)
    paths = parse.loop_paths(instrs, labels, lp)
    # head block (3) + long side (4: FFMA FMUL DADD BRA) + 3 (MUFU FCHK BRA) + 5 (IMAD STG STG ISETP BRA)
    assert paths["longest"].instructions == 3 + 4 + 3 + 5
    assert paths["shortest"].instructions == 3 + 1 + 3 + 5  # the FADD side
    assert paths["longest"].classes["fp64"] == 1 and paths["shortest"].classes["fp64"] == 0
    assert not any(instrs[i].base == "CALL" for i in paths["longest"].indices)
    assert paths["longest"].classes["stg"] == 2  # both predicated stores issue


def test_global_bytes_count_an_access_under_both_predicates_once():
    instrs, labels = snippet()
    lp, _ = parse.hot_loop(instrs, labels)
    idx = parse.loop_paths(instrs, labels, lp)["longest"].indices
    assert parse.global_bytes(instrs, idx) == {"read": 32, "written": 16}
    assert parse.widths(instrs, idx) == {"LDG.E.128": 2, "STG.E.128": 2}


# One loop whose threads choose between a vector load and per-lane loads (the 8-bit kernel), with
# a conditional narrow store after it and an inlined trig slow path (|x| >= 105615) before it.
LANES = """
.L_x_0:
        /*0000*/                   FSETP.GE.AND P1, PT, |R35|, 105615, PT ;
        /*0010*/              @!P1 BRA `(.L_x_9) ;
        /*0020*/                   I2F.F64.S64 R10, R12 ;
        /*0030*/                   DMUL R10, R10, UR6 ;
        /*0040*/                   STL [R1], R10 ;
.L_x_9:
        /*0050*/              @P2 BRA `(.L_x_1) ;
        /*0060*/                   LDG.E.U16 R2, desc[UR4][R10.64] ;
        /*0070*/                   LDG.E.U16 R3, desc[UR4][R10.64+0x2] ;
        /*0080*/                   LDG.E.U16 R4, desc[UR4][R10.64+0x4] ;
        /*0090*/                   LDG.E.U16 R5, desc[UR4][R10.64+0x6] ;
        /*00a0*/                   BRA `(.L_x_2) ;
.L_x_1:
        /*00b0*/                   LDG.E.64 R2, desc[UR4][R10.64] ;
.L_x_2:
        /*00c0*/                   FADD R2, R2, R3 ;
        /*00d0*/              @P3 BRA `(.L_x_3) ;
        /*00e0*/                   STG.E desc[UR4][R8.64], R2 ;
.L_x_3:
        /*00f0*/              @P4 BRA `(.L_x_0) ;
        /*0100*/                   EXIT ;
"""


def test_the_aligned_path_takes_the_vector_side_the_stores_and_not_the_trig_slow_path():
    instrs, labels = parse.parse(LANES)
    assert parse.cold(instrs, labels) == {2, 3, 4}
    lp, width = parse.hot_loop(instrs, labels)
    assert width == 8
    path = parse.loop_paths(instrs, labels, lp)["longest"]
    assert parse.widths(instrs, path.indices) == {"LDG.E.64": 1, "STG.E": 1}
    assert path.classes["fp64"] == 0 and path.classes["local"] == 0
    v = Variant("noisefuse", "blockwise_step", "bfloat16", "8-bit", "single", "none", "isotropic", "none")
    hot = analyze.hot_loop_stats(extract.Kernel("noisefuse", "sm_90", "k", "k", 32, 0, 0, 0, 0, LANES), v, 32)
    assert hot["body"] == {"instructions": 16, "fp64": 2, "local": 1, "calls": 0, "trig_slow_path": 3}


NESTED = """
.L_x_0:
        /*0000*/                   LDG.E.128 R8, desc[UR4][R16.64] ;
.L_x_1:
        /*0010*/                   LDG.E.128 R12, desc[UR4][R18.64] ;
        /*0020*/                   FADD R8, R8, R12 ;
        /*0030*/              @P0 BRA `(.L_x_1) ;
        /*0040*/                   STG.E.128 desc[UR4][R16.64], R8 ;
        /*0050*/              @P1 BRA `(.L_x_0) ;
        /*0060*/                   EXIT ;
"""


def test_an_inner_rows_loop_is_scaled_by_its_trip_count():
    instrs, labels = parse.parse(NESTED)
    lp, _ = parse.hot_loop(instrs, labels)
    assert (lp.head, lp.latch) == (0, 5)  # the outermost loop with 128-bit accesses
    v = Variant("noisefuse", "fused_step", "float32", "float32", "single", "none", "multiplicative", "none")
    hot = analyze.hot_loop_stats(extract.Kernel("noisefuse", "sm_90", "k", "k", 32, 0, 0, 0, 0, NESTED), v, rows=8)
    # one pass: 6 instructions; the inner loop (3) runs 8 rows / 1 load = 8 times, 7 more than the path's
    assert hot["per_element"]["total"] == (6 + 7 * 3) / 4
    assert hot["inner_loops"][0]["trips"] == 8
    assert hot["sass_bytes_per_element"] == {"read": (16 + 8 * 16) / 4, "written": 4.0}


@pytest.mark.parametrize("regs,shared,threads,arch,blocks,limit", [
    (64, 0, 512, "sm_90", 2, "registers"), (65, 0, 512, "sm_90", 1, "registers"), (32, 0, 512, "sm_90", 4, "threads"),
    (40, 0, 512, "sm_90", 3, "registers"), (128, 0, 512, "sm_90", 1, "registers"),
    (32, 100 * 1024, 256, "sm_80", 1, "shared"), (32, 100 * 1024, 256, "sm_90", 2, "shared"),
    (16, 0, 32, "sm_90", 32, "blocks")])
def test_blocks_per_sm(regs, shared, threads, arch, blocks, limit):
    occ = model.blocks_per_sm(regs, shared, threads, arch)
    assert (occ["blocks"], occ["limited_by"]) == (blocks, limit)


def test_the_estimate_balances_issue_against_bandwidth():
    # H100: 132 SMs x 4 x 32 lanes x 1.98 GHz = 33.45 thread-instructions per ps; 28 B at 3.35 TB/s = 8.36 ps.
    balanced = 28 / 3.35 * 132 * 4 * 32 * 1.98e-3
    e = model.estimate({"total": balanced}, 28, model.H100)
    assert math.isclose(e["core_ps"], 28 / 3.35) and math.isclose(e["frac_bandwidth"], 1.0)
    e = model.estimate({"total": 2 * balanced}, 28, model.H100)
    assert math.isclose(e["frac_bandwidth"], 0.5) and e["bound_by"] == "issue"
    assert math.isclose(model.estimate({"total": balanced}, 28, model.H200)["frac_bandwidth"], 3.35 / 4.8)
    # FP64 at half the issue rate and MUFU at an eighth become the floor when they dominate.
    e = model.estimate({"total": 10, "fp64": 10}, 28, model.H100)
    assert math.isclose(e["pipes_ps"]["fp64"], 2 * e["pipes_ps"]["issue"]) and e["core_ps"] == e["pipes_ps"]["fp64"]
    e = model.estimate({"total": 10, "slow": 10}, 28, model.H100)
    assert math.isclose(e["core_ps"], 8 * e["pipes_ps"]["issue"])


def test_decode_reads_template_parameters():
    v = decode("noisefuse", "void noisefuse::cuda::fused_step_kernel<float, c10::BFloat16, true, 2, 7, 1, 2>"
                            "(noisefuse::cuda::TensorTable<7, true>, noisefuse::StepHyper)")
    assert (v.param_dtype, v.state_dtype, v.momentum, v.second_moment, v.noise, v.rounding) == (
        "float32", "bfloat16", "pn", "v+amsgrad", "isotropic", "state")
    assert v.label() == "f32/bf16 pn v+ams iso sr:state"
    v = decode("noisefuse", "void noisefuse::cuda::blockwise_step_kernel<c10::BFloat16, false, 1, 4, 0, 1>(...)")
    assert (v.kernel, v.state_dtype, v.eight_bit, v.second_moment, v.rounding) == (
        "blockwise_step", "8-bit", True, "v", "params")
    v = decode("torch", "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous "
                        "namespace)::FusedOptimizerTensorListMetadata<5>, at::native::(anonymous namespace)::"
                        "FusedAdamMathFunctor<float, 5, (at::native::ADAM_MODE)1, true>, float const*>(...)")
    assert v.label() == "torch AdamW amsgrad f32"
    assert decode("torch", "multi_tensor_apply_kernel<X, at::native::FusedSgdMathFunctor<float, 2>, double>") is None
    v = decode("noisefuse", "void noisefuse::cuda::advance_counters_kernel<noisefuse::cuda::TensorTable<10, true> >"
                            "(noisefuse::cuda::TensorTable<10, true>, noisefuse::StepHyper, float const*)")
    assert (v.is_step, v.label()) == (False, "advance_counters (10 lists, offsets)")


def test_algorithm_bytes_match_the_hand_counts_of_docs_benchmarks():
    def step(p, s, pn, second, noise="none"):
        return algorithm_bytes(Variant("noisefuse", "fused_step", p, s, pn, second, noise, "none"), 32, 256)

    assert step("float32", "float32", "pn", "v+amsgrad") == 40  # AdaPNM
    assert step("float32", "float32", "pn", "none") == 24  # PNM
    assert step("float32", "float32", "single", "v") == 28  # Adam
    assert step("float32", "bfloat16", "pn", "v+amsgrad") == 26
    assert step("float32", "float32", "pn", "none", "multiplicative") == 4 * (3 + 32 + 2)
    eight = Variant("noisefuse", "blockwise_step", "float32", "8-bit", "pn", "v+amsgrad", "none", "none")
    assert math.isclose(algorithm_bytes(eight, 32, 256), 4 + 4 + 4 * (1 + 4 / 256) + 4 + 3 * (1 + 4 / 256))


def _row(label="f32/f32 single v", regs=40, noise="none", rounding="none", state="float32", fp64=0, local=0,
         widest=16, ratio=0.3, param="float32"):
    v = Variant("noisefuse", "fused_step", param, state, "single", "v", noise, rounding).as_dict()
    v["label"] = label
    hot = {"fp64_in_loop": fp64, "local_in_loop": local, "widest_access_bytes": widest,
           "global_accesses": {"LDG.E.128": 4, **({"LDG.E.U16": 4} if label == "split" else {})}}
    return {"variant": v, "arch": {"sm_90": {"registers": regs, "hot_loop": hot}, "sm_80": {"registers": regs}},
            "estimate": {"H100 SXM": {"core_over_memory": ratio}}}


def test_checks_name_each_violation():
    rows = [_row(), _row("big", regs=72), _row("noisy big", regs=100, noise="isotropic"),
            _row("sr big", regs=100, rounding="params"), _row("slow", ratio=0.9), _row("f16 slow", ratio=0.9,
                                                                                         state="float16"),
            _row("dbl", fp64=12, param="float64", state="float64"), _row("fp64", fp64=2), _row("spill", local=3),
            _row("narrow", widest=8), _row("split")]
    bad, checked = checks.violations(rows)
    names = {k: [b["label"] for b in v] for k, v in bad.items()}
    assert names["at_most_64_registers"] == ["big"]  # noise and stochastic rounding are exempt
    assert names["bandwidth_bound_h100"] == ["slow"]  # float16 state is exempt
    assert names["no_fp64_in_hot_loop"] == ["fp64"]  # float64 math is exempt
    assert names["no_local_memory_in_hot_loop"] == ["spill"]
    assert names["vector_128bit_on_aligned_path"] == ["narrow"]
    assert names["full_vectors_on_aligned_path"] == ["split"]
    assert checked["at_most_64_registers"] == 9 and bad["at_most_64_registers"][0]["value"].startswith("72 (sm_90)")


def test_tools_are_found_in_cuda_home(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in tools.PACKAGES:
        exe = bin_dir / name
        exe.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 99.1, V99.1.1'\n")
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    assert tools.find("cuobjdump") == bin_dir / "cuobjdump"
    assert tools.version(bin_dir / "nvdisasm").endswith("V99.1.1")


def test_resource_usage_and_function_split():
    usage = extract.parse_resources(
        "Resource usage:\n Common:\n  GLOBAL:0\n Function _Z1kPf:\n  REG:64 STACK:16 SHARED:1024 LOCAL:0 "
        "CONSTANT[0]:896 TEXTURE:0 SURFACE:0 SAMPLER:0\n")
    assert usage == {"_Z1kPf": {"REG": 64, "STACK": 16, "SHARED": 1024, "LOCAL": 0, "CONSTANT": 896, "TEXTURE": 0,
                                "SURFACE": 0, "SAMPLER": 0}}
    text = "//--------------------- .text._Z1kPf --------------------------\nbody1\n" \
           "//--------------------- .text._Z1gPf --------------------------\nbody2\n"
    assert extract.split_functions(text) == {"_Z1kPf": "\nbody1\n", "_Z1gPf": "\nbody2\n"}


# ---- the invariants on the CUDA-built module -------------------------------------------------------

@pytest.fixture(scope="session")
def sass_rows():
    try:
        paths = tools.tools(allow_install=not os.environ.get("NOISEFUSE_NO_PIP"))
    except tools.ToolMissing as e:
        pytest.skip(f"cuobjdump/nvdisasm cannot be had here: {e}")
    try:
        module = extract.module_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    from noisefuse.bench.sass.__main__ import collect

    rows = collect(module, None, ("sm_90", "sm_80"), paths, extract.DEFAULT_CACHE, 32, 256)
    if not any(r["variant"]["kernel"] == "fused_step" for r in rows):
        pytest.skip(f"{module.name} holds no CUDA kernels (a build without CUDA)")
    return rows


def _violations(rows, name):
    bad, checked = checks.violations(rows)
    assert checked[name] > 0
    return bad[name], checked[name]


@pytest.mark.parametrize("invariant", ["hot_loop_found", "no_fp64_in_hot_loop", "no_local_memory_in_hot_loop",
                                       "vector_128bit_on_aligned_path", "full_vectors_on_aligned_path",
                                       "at_most_64_registers", "bandwidth_bound_h100"])
def test_invariant_holds_for_every_variant_but_the_known_ones(sass_rows, invariant):
    """Every variant meets the invariant but those checks.KNOWN_VIOLATIONS lists, and each of those
    still fails it: a kernel change that breaks the invariant fails here, and so does one that
    fixes a listed variant until the list says so."""
    bad, n = _violations(sass_rows, invariant)
    known = checks.KNOWN_VIOLATIONS.get(invariant, set())
    new = [b for b in bad if b["label"] not in known]
    assert not new, f"{len(new)} of {n} variants newly violate {invariant}:\n" + "\n".join(
        f"  {b['label']}: {b['value']}" for b in new)
    fixed = known - {b["label"] for b in bad}
    assert not fixed, f"now meet {invariant}, drop them from checks.KNOWN_VIOLATIONS: {sorted(fixed)}"


def test_every_variant_family_is_in_the_report(sass_rows):
    labels = {r["variant"]["label"] for r in sass_rows}
    assert "f32/f32 pn v+ams" in labels and "bf16/8bit single v" in labels
    assert len([r for r in sass_rows if r["variant"]["kernel"] == "fused_step"]) == 12 * 6 * 4
    assert len([r for r in sass_rows if r["variant"]["kernel"] == "blockwise_step"]) == 3 * 6 * 4
    assert report.table(sass_rows).count("\n") == len(sass_rows) + 1
