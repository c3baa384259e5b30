"""The CUDA build's configuration, checked without a GPU: tools/cuda_arches.py (which arches a CUDA build compiles
for, also against torch's own CMake function that turns the list into nvcc flags, so the list we resolve is the
list nvcc receives) and csrc/cuda_flags.txt (the one list of nvcc flags)."""
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import symkernels

TOOL = Path(__file__).resolve().parents[1] / "tools" / "cuda_arches.py"
_spec = importlib.util.spec_from_file_location("cuda_arches", TOOL)
cuda_arches = sys.modules["cuda_arches"] = importlib.util.module_from_spec(_spec)  # tools/ is no package
_spec.loader.exec_module(cuda_arches)

H200, A100, L4 = (9, 0), (8, 0), (8, 9)
ROOT = TOOL.parents[1]


def test_nvcc_flags_have_one_source_and_no_fast_math():
    flags = [line for line in (ROOT / "csrc" / "cuda_flags.txt").read_text().splitlines() if line.startswith("-")]
    assert "-O3" in flags and "-std=c++17" in flags
    # fast-math swaps tanhf/logf/cosf for approximations the fp32 tolerances do not allow (see the file)
    assert not any("fast_math" in f or "fast-math" in f or f.startswith(("-ftz", "-prec-")) for f in flags)
    # The build and the CI compile check read the file; neither spells nvcc flags of its own.
    cmake, check = (ROOT / "CMakeLists.txt").read_text(), (ROOT / "tools" / "check_cuda_sources.sh").read_text()
    assert "csrc/cuda_flags.txt" in cmake and "csrc/cuda_flags.txt" in check
    assert "$<$<COMPILE_LANGUAGE:CUDA>:${SYMKERNELS_NVCC_FLAGS}>" in cmake
    assert '"$NVCC" -c "${NVCC_FLAGS[@]}" -arch="$ARCH" -Werror all-warnings -I csrc' in check
    assert "fast_math" not in cmake and "fast_math" not in check


@pytest.mark.parametrize("text, expected", [
    ("9.0a", ("9.0a",)),
    ("8.0;9.0a", ("8.0", "9.0a")),
    (" 8.0, 8.6+PTX  9.0a;8.0 ", ("8.0", "8.6+PTX", "9.0a")),  # any separator, repeats dropped, order kept
    ("10.0f 12.0a", ("10.0f", "12.0a")),
])
def test_parse_arch_list(text, expected):
    assert cuda_arches.parse_arch_list(text) == expected


@pytest.mark.parametrize("text", ["sm_90", "90a", "Ampere", "Auto", "9.0b", ";;"])
def test_parse_arch_list_refuses_what_torch_would_read_differently(text):
    with pytest.raises(ValueError, match="TORCH_CUDA_ARCH_LIST"):
        cuda_arches.parse_arch_list(text)


def test_environment_wins_over_the_visible_gpu():
    selection = cuda_arches.resolve("8.0;8.6", [H200])
    assert selection.arches == ("8.0", "8.6") and selection.source == "TORCH_CUDA_ARCH_LIST"


def test_visible_gpus_only_when_no_environment():
    assert cuda_arches.resolve(None, [H200]).arches == ("9.0a",)  # Hopper: its arch-specific variant
    assert cuda_arches.resolve("  ", [A100]).arches == ("8.0",)  # an empty variable counts as unset
    assert cuda_arches.resolve(None, [H200, A100, H200, L4]).arches == ("8.0", "8.9", "9.0a")


def test_default_without_environment_or_gpu():
    selection = cuda_arches.resolve(None, [])
    assert selection.arches == cuda_arches.DEFAULT_ARCH_LIST == ("8.0", "8.6", "8.9", "9.0a")
    assert selection.cmake_list() == "8.0;8.6;8.9;9.0a"


def test_cli_prints_the_list_for_cmake():
    run = lambda *args: subprocess.run([sys.executable, str(TOOL), "--cmake", *args], capture_output=True,  # noqa: E731
                                       text=True)
    assert run("--capability", "9.0").stdout.strip() == "9.0a"
    assert run("--capability", "none").stdout.strip() == "8.0;8.6;8.9;9.0a"
    assert run("--arch-list", "8.9", "--capability", "9.0").stdout.strip() == "8.9"
    bad = run("--arch-list", "sm_90")
    assert bad.returncode != 0 and "sm_90" in bad.stderr


def _torch_select_available() -> bool:
    try:
        select = cuda_arches.torch_cmake_dir() / "Modules_CUDA_fix/upstream/FindCUDA/select_compute_arch.cmake"
    except ImportError:
        return False
    return shutil.which("cmake") is not None and select.is_file()


@pytest.mark.skipif(not _torch_select_available(), reason="needs cmake and torch's share/cmake/Caffe2")
@pytest.mark.parametrize("arches, flags", [
    (("9.0a",), ["-gencode", "arch=compute_90a,code=sm_90a"]),
    (("8.0", "9.0a"), ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90a,code=sm_90a"]),
    (("8.6+PTX",), ["-gencode", "arch=compute_86,code=sm_86", "-gencode", "arch=compute_86,code=compute_86"]),
])
def test_torch_cmake_compiles_exactly_the_resolved_list(arches, flags):
    assert cuda_arches.torch_gencode_flags(arches) == flags


@pytest.mark.skipif(not _torch_select_available(), reason="needs cmake and torch's share/cmake/Caffe2")
def test_every_resolved_entry_is_one_sm_target_for_torch():
    # The default list and a visible-GPU list become one sm_XX binary each, nothing added (no "Common" fallback).
    for selection in (cuda_arches.resolve(None, []), cuda_arches.resolve(None, [H200, A100])):
        flags = cuda_arches.torch_gencode_flags(selection.arches)
        targets = [f.split("code=")[1] for f in flags if f.startswith("arch=")]
        assert targets == ["sm_" + a.replace(".", "") for a in selection.arches]


@pytest.mark.skipif(not symkernels.build_info().get("cuda"), reason="symkernels._C was built without CUDA")
def test_build_info_reports_the_arches_nvcc_compiled():
    info = symkernels.build_info()
    requested = [a for a in info["cuda_arches"].split() if a.startswith("sm_")]
    compiled = info["cuda_arches_compiled"].split(",")
    # nvcc's __CUDA_ARCH_LIST__ names sm_90a as 900: compare the numbers.
    assert sorted({a[3:].rstrip("af") + "0" for a in requested}) == sorted(set(compiled))
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        assert f"{major}{minor}0" in compiled, f"no code for the visible sm_{major}{minor} in {info['cuda_arches']}"
