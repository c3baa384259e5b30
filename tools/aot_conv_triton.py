"""Compile the Triton conv2d dual kernel ahead of time for sm_90 and sm_80 (no GPU needed) and report shared
memory, registers and spills (ptxas -v on the PTX), at the launcher's real GPU specialisation.

    python tools/aot_conv_triton.py

Run WITHOUT TRITON_INTERPRET (the interpreter replaces @triton.jit functions with Python ones).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget

from symkernels.jvp import conv_triton
from symkernels.jvp.triton import _ACT_CODES

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def compile_case(arch: int, dtype: str, seeded: bool, act: str, out_channels_per_group: int = 64):
    """The launcher's GPU specialisation for a 3x3 conv with bias, an x tangent and a loaded or seeded weight
    tangent. Non-constexpr arguments are pointers (``*dtype``) or int32 sizes/strides (the launcher's shapes
    stay below 2^31, where Triton would widen one to i64)."""
    fn = conv_triton._conv_dual_kernel
    cfg = conv_triton.launch_config(False, out_channels_per_group)
    options = dict(num_warps=cfg.pop("num_warps"), num_stages=cfg.pop("num_stages"))
    constexprs = dict(KH=3, KW=3, HAS_B=True, HAS_XT=True, HAS_WT=not seeded, SEEDED=seeded, GAUSSIAN=True,
                      HAS_BT=False, WRITE_T=True, ACT=_ACT_CODES[act], ACC_F64=False,
                      PREC="tf32" if dtype == "fp32" else "ieee", **cfg)
    sig = {name: "constexpr" if name in constexprs else f"*{dtype}" if name.endswith("_ptr") else "i32"
           for name in fn.arg_names}
    src = triton.compiler.ASTSource(fn, sig, {(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(kernel.asm["ptx"])
    # Triton emits PTX 9.x for sm_90, newer than the bundled ptxas 8.8 reads; its Blackwell ptxas reads both.
    # The PTX names its own target (sm_90a on Hopper: wgmma), which ptxas must be given.
    ptxas = PTXAS + ("-blackwell" if arch >= 90 else "")
    gpu = re.search(r"^\.target\s+(\w+)", kernel.asm["ptx"], re.M).group(1)
    log = subprocess.run([ptxas, "-v", f"--gpu-name={gpu}", f.name, "-o", os.devnull], capture_output=True,
                         text=True).stderr
    if "error" in log.lower() or "fatal" in log.lower():
        raise RuntimeError(f"ptxas failed for sm_{arch}: {log[-500:]}")
    os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return dict(arch=gpu, dtype=dtype, seeded=seeded, act=act, shared=kernel.metadata.shared,
                registers=int(regs.group(1)) if regs else None,
                spill_stores=sum(int(s) for s, _ in spill), spill_loads=sum(int(ld) for _, ld in spill))


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the interpreter does not compile kernels", file=sys.stderr)
        return 2
    print("| arch | dtype | weight tangent | act | shared bytes | registers | spill stores | spill loads |")
    print("|---|---|---|---|---|---|---|---|")
    spills = 0
    for arch in (90, 80):
        for dtype in ("fp32", "bf16"):
            for seeded, act in ((False, "gelu"), (True, "gelu"), (True, "tanh")):
                r = compile_case(arch, dtype, seeded, act)
                spills += r["spill_stores"] + r["spill_loads"]
                print(f"| {r['arch']} | {r['dtype']} | {'seeded' if r['seeded'] else 'loaded'} | {r['act']} | "
                      f"{r['shared']} | {r['registers']} | {r['spill_stores']} | {r['spill_loads']} |")
    return 1 if spills else 0


if __name__ == "__main__":
    sys.exit(main())
