"""Builds symkernels._C by running CMakeLists.txt with Ninja.

    pip install -e . --no-build-isolation      # torch must already be installed; setup never installs it

CUDA kernels are built when torch is a CUDA build *and* nvcc is found — never decided by
torch.cuda.is_available(), which is False on GPU-less builders. Environment switches:
    SYMKERNELS_FORCE_CPU=1     build without CUDA even where it could be built
    SYMKERNELS_FORCE_CUDA=1    build CUDA (fails loudly if it cannot)
    SYMKERNELS_SANITIZE=1      ASan + UBSan build (used by `make sanitize`)
    TORCH_CUDA_ARCH_LIST       e.g. "8.0;9.0a" (default: the visible GPUs' arches, else 8.0 8.6 8.9 9.0a;
                               resolved by tools/cuda_arches.py, which CMakeLists.txt calls)
    MAX_JOBS                   parallel compile jobs
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def _find_nvcc() -> str | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _cuda_decision() -> tuple[bool, str]:
    import torch

    nvcc = _find_nvcc()
    if _flag("SYMKERNELS_FORCE_CPU"):
        return False, "SYMKERNELS_FORCE_CPU=1"
    if _flag("SYMKERNELS_FORCE_CUDA"):
        if nvcc is None:
            raise RuntimeError("SYMKERNELS_FORCE_CUDA=1 but nvcc was not found (set CUDA_HOME)")
        return True, "SYMKERNELS_FORCE_CUDA=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    if nvcc is None:
        return False, "nvcc not found (set CUDA_HOME)"
    return True, f"torch CUDA {torch.version.cuda}, nvcc at {nvcc}"


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        with_cuda, why = _cuda_decision()
        sanitize = _flag("SYMKERNELS_SANITIZE")
        print(f"symkernels: CUDA kernels {'ON' if with_cuda else 'OFF'} ({why}); sanitizers {'ON' if sanitize else 'OFF'}")
        ext_path = Path(self.get_ext_fullpath(ext.name)).resolve()
        variant = ("cuda" if with_cuda else "cpu") + ("-sanitize" if sanitize else "")
        build_dir = ROOT / "build" / f"cmake-{variant}-py{sys.version_info.major}{sys.version_info.minor}"
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            f"-DPython_EXECUTABLE={sys.executable}",
            # Each variant (cpu/cuda, sanitized or not) links into its own folder; the result is copied to
            # where setuptools expects it. A shared output path would let one variant's up-to-date .so
            # stand in for another's (ninja would see nothing to do after a switch).
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={build_dir / 'lib'}",
            f"-DSYMKERNELS_WITH_CUDA={'ON' if with_cuda else 'OFF'}",
            f"-DSYMKERNELS_SANITIZE={'ON' if sanitize else 'OFF'}",
        ]
        if with_cuda:
            args.append(f"-DCMAKE_CUDA_COMPILER={_find_nvcc()}")
        subprocess.run(args, check=True)
        jobs = os.environ.get("MAX_JOBS")
        subprocess.run(["cmake", "--build", str(build_dir)] + (["-j", jobs] if jobs else []), check=True)
        ext_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build_dir / "lib" / ext_path.name, ext_path)


setup(
    packages=find_packages(include=["symkernels", "symkernels.*"]),
    ext_modules=[CMakeExtension("symkernels._C")],
    cmdclass={"build_ext": CMakeBuild},
)
