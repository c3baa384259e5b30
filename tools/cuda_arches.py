#!/usr/bin/env python3
"""Which CUDA architectures symkernels is compiled for: the one resolver that CMakeLists.txt calls.

    python tools/cuda_arches.py                      # what a build here would compile for, and why
    python tools/cuda_arches.py --arch-list "8.0;9.0a"   # as if TORCH_CUDA_ARCH_LIST were set
    python tools/cuda_arches.py --capability 9.0     # as if an sm_90 GPU were visible (no GPU needed)
    python tools/cuda_arches.py --cmake              # the bare list, for CMake

The list is, in order of precedence:
  1. TORCH_CUDA_ARCH_LIST from the environment, as given ("8.0;9.0a", "8.6+PTX" ...);
  2. the visible GPUs' architectures, so a build on the GPU machine compiles one arch (quick), with
     Hopper as 9.0a like the default list;
  3. DEFAULT_ARCH_LIST (a GPU-less builder producing a binary for the usual data-centre GPUs).

Why a resolver of our own: torch's CMake (share/cmake/Caffe2/public/cuda.cmake, run by find_package(Torch)
for a CUDA build of torch) sets CMAKE_CUDA_ARCHITECTURES to OFF, with a warning that it ignores it, and
appends its own `-gencode` flags to CMAKE_CUDA_FLAGS from the *CMake variable* TORCH_CUDA_ARCH_LIST, else
the environment variable, else "Auto" (the GPUs a test program finds at configure time, else torch's
"Common" list, which starts at sm_50 and which nvcc 13 no longer accepts). So CMAKE_CUDA_ARCHITECTURES
alone never chose anything. CMakeLists.txt sets the CMake variable TORCH_CUDA_ARCH_LIST to this
resolver's answer before find_package(Torch): torch's macro then emits exactly these arches, and the build
embeds the list torch reports back (NVCC_FLAGS_EXTRA_readable) in build_info().

Pure Python apart from the optional GPU query (torch.cuda, imported only to look for a device) and
`torch_gencode_flags`, which runs torch's own cuda_select_nvcc_arch_flags in `cmake -P` to show the nvcc
flags torch derives from a list, without a GPU or a CUDA build of torch.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Ampere (A100, A10/A40/RTX 30xx), Ada (L4/L40), Hopper with its arch-specific features (H100/H200).
DEFAULT_ARCH_LIST = ("8.0", "8.6", "8.9", "9.0a")

# An entry as torch's cuda_select_nvcc_arch_flags accepts it in numeric form: major.minor, an optional
# arch-specific ("a") or family ("f") suffix, and "+PTX" to embed PTX for later GPUs as well. torch's
# names ("Ampere", "Auto", ...) are refused: they expand differently across torch versions.
_ENTRY = re.compile(r"^(\d+)\.(\d)([af]?)(\+PTX)?$")


@dataclasses.dataclass(frozen=True)
class ArchSelection:
    arches: tuple[str, ...]
    source: str  # why these: the environment variable, the visible GPUs, or the default

    def cmake_list(self) -> str:
        return ";".join(self.arches)


def parse_arch_list(text: str) -> tuple[str, ...]:
    """'8.0;9.0a 8.6+PTX' -> ('8.0', '9.0a', '8.6+PTX'): split on ';', ',' or spaces, order kept, no repeats."""
    entries = []
    for item in re.split(r"[;,\s]+", text.strip()):
        if not item:
            continue
        if not _ENTRY.match(item):
            raise ValueError(f"TORCH_CUDA_ARCH_LIST entry {item!r} is not of the form 8.0, 9.0a or 8.6+PTX")
        if item not in entries:
            entries.append(item)
    if not entries:
        raise ValueError("TORCH_CUDA_ARCH_LIST is set but names no architecture")
    return tuple(entries)


def arch_for_capability(major: int, minor: int) -> str:
    """The list entry for a GPU of compute capability major.minor: Hopper (9.0) gets its 9.0a variant,
    as in DEFAULT_ARCH_LIST, so a build for the visible H100/H200 is the same code as the default build's."""
    return f"{major}.{minor}" + ("a" if (major, minor) == (9, 0) else "")


def visible_capabilities() -> list[tuple[int, int]]:
    """Compute capabilities of the GPUs torch can see (honours CUDA_VISIBLE_DEVICES); [] without any."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]


def resolve(env_arch_list: str | None, capabilities: list[tuple[int, int]]) -> ArchSelection:
    """The architectures to compile for, given TORCH_CUDA_ARCH_LIST (None if unset) and the visible GPUs."""
    if env_arch_list is not None and env_arch_list.strip():
        return ArchSelection(parse_arch_list(env_arch_list), "TORCH_CUDA_ARCH_LIST")
    if capabilities:
        arches = tuple(dict.fromkeys(arch_for_capability(*cc) for cc in sorted(capabilities)))
        shown = ", ".join(f"{major}.{minor}" for major, minor in sorted(set(capabilities)))
        return ArchSelection(arches, f"visible GPU compute capability {shown}")
    return ArchSelection(DEFAULT_ARCH_LIST, "default: neither TORCH_CUDA_ARCH_LIST nor a visible GPU")


def torch_cmake_dir() -> Path:
    import torch.utils

    return Path(torch.utils.cmake_prefix_path) / "Caffe2"


def torch_gencode_flags(arches: tuple[str, ...], cuda_version: str = "13.0") -> list[str]:
    """The nvcc arch flags torch's CMake derives from `arches` (its cuda_select_nvcc_arch_flags, run as is)."""
    select = torch_cmake_dir() / "Modules_CUDA_fix" / "upstream" / "FindCUDA" / "select_compute_arch.cmake"
    cmake = shutil.which("cmake")
    if cmake is None or not select.is_file():
        raise FileNotFoundError(f"needs cmake on PATH and torch's {select}")
    script = (f'set(CUDA_VERSION "{cuda_version}")\n'
              f'include("{select.as_posix()}")\n'
              f'cuda_select_nvcc_arch_flags(flags {" ".join(arches)})\n'
              'message("${flags}")\n')
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gencode.cmake"
        path.write_text(script)
        done = subprocess.run([cmake, "-P", str(path)], capture_output=True, text=True, check=True)
    # message() writes to stderr; the flags are a CMake list: "-gencode;arch=compute_90a,code=sm_90a;..."
    return [flag for flag in done.stderr.strip().split(";") if flag]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch-list", default=None,
                        help="resolve as if TORCH_CUDA_ARCH_LIST had this value (default: the environment's)")
    parser.add_argument("--capability", action="append", default=None, metavar="MAJOR.MINOR",
                        help="resolve as if a GPU of this compute capability were visible (repeatable); "
                             "'none' for no GPU. Default: ask torch")
    parser.add_argument("--cmake", action="store_true", help="print only the ';'-separated list (for CMake)")
    args = parser.parse_args(argv)

    env_value = args.arch_list if args.arch_list is not None else os.environ.get("TORCH_CUDA_ARCH_LIST")
    if args.capability is None:
        capabilities = [] if env_value else visible_capabilities()
    else:
        capabilities = [tuple(int(p) for p in cc.split(".")) for cc in args.capability if cc != "none"]
    try:
        selection = resolve(env_value, capabilities)
    except ValueError as exc:
        print(f"cuda_arches: {exc}", file=sys.stderr)
        return 2
    if args.cmake:
        print(selection.cmake_list())
        return 0
    print(f"TORCH_CUDA_ARCH_LIST={selection.cmake_list()}  ({selection.source})")
    try:
        print("torch's CMake turns it into: " + " ".join(torch_gencode_flags(selection.arches)))
    except (FileNotFoundError, ImportError, subprocess.CalledProcessError) as exc:
        print(f"(cannot show torch's nvcc flags here: {exc})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
