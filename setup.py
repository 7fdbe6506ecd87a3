#!/usr/bin/env python
"""Install atss_core and build its compiled ops into ``atss_core._C``.

The C++ CPU kernels are always built. The CUDA kernels are added when a GPU and a
CUDA toolkit are visible, or when ``FORCE_CUDA=1`` (for building on a machine without
a GPU). Choose the GPU architectures with ``TORCH_CUDA_ARCH_LIST`` (e.g. "8.0;9.0").

Development install (builds ``atss_core/_C*.so`` in place)::

    pip install --no-build-isolation -e .

A wheel (compiled ops and the configs, as ``atss_core/configs``, included)::

    pip wheel --no-build-isolation --no-deps .
"""
import glob
import os
import re
import shutil
from pathlib import Path

from setuptools import find_packages, setup


def find_cuda_home():
    """Root of the CUDA toolkit: $CUDA_HOME / $CUDA_PATH, else two levels above the
    real nvcc binary (following symlinks and a one-line ``exec`` wrapper script),
    else /usr/local/cuda. None when no toolkit is found."""
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(variable):
            return os.environ[variable]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        nvcc = os.path.realpath(nvcc)
        candidates.append(Path(nvcc).parents[1])
        # Some images install nvcc as a tiny shell script that execs the real one.
        if os.path.getsize(nvcc) < 4096:
            with open(nvcc, "rb") as script:
                text = script.read().decode("utf-8", "replace")
            for target in re.findall(r"(/\S+/bin/nvcc)\b", text):
                candidates.append(Path(os.path.realpath(target)).parents[1])
    candidates.append(Path("/usr/local/cuda"))
    for root in candidates:
        if (root / "include" / "cuda_runtime.h").exists():
            return str(Path(os.path.realpath(root)))
    return None


# torch.utils.cpp_extension reads CUDA_HOME when it is first imported.
_CUDA_HOME = find_cuda_home()
if _CUDA_HOME:
    os.environ["CUDA_HOME"] = _CUDA_HOME

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def pip_cuda_include_dirs():
    """Header folders of the pip ``nvidia-*`` wheels torch depends on (cusparse.h,
    cublas_v2.h, ... live there, not necessarily in the toolkit)."""
    try:
        import nvidia
    except ImportError:
        return []
    return sorted(path for base in nvidia.__path__ for path in glob.glob(os.path.join(base, "*", "include")))


def get_extensions():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    with_cuda = os.environ.get("FORCE_CUDA", "0") == "1" or (
        torch.cuda.is_available() and _CUDA_HOME is not None)
    extra_compile_args = {"cxx": ["-O3", "-fopenmp"]}
    define_macros = []
    if with_cuda:
        if _CUDA_HOME is None:
            raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to the folder "
                               "that contains bin/nvcc and include/cuda_runtime.h")
        extension = CUDAExtension
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = ["-O3"]
    else:
        extension = CppExtension
    module = extension(
        "atss_core._C",
        sources,
        include_dirs=[os.path.abspath("csrc")],
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
        # Lets `import atss_core._C` find libc10/libtorch even before `import torch`.
        extra_link_args=["-fopenmp", f"-Wl,-rpath,{os.path.join(os.path.dirname(torch.__file__), 'lib')}"],
    )
    if with_cuda:
        # After torch's and the toolkit's own include folders, so they take precedence.
        module.include_dirs.extend(pip_cuda_include_dirs())
    return [module]


setup(
    name="atss_core",
    version="0.1",
    description="ATSS object detector (re-implementation of sfzhang15/ATSS for current PyTorch)",
    url="https://github.com/sfzhang15/ATSS",
    packages=find_packages(exclude=("configs", "tests", "tools", "demo")) + ["atss_core.configs"],
    # The top-level configs/ folder stays the one source; wheels carry it as atss_core/configs.
    package_dir={"atss_core.configs": "configs"},
    package_data={"atss_core.configs": ["*.yaml", "**/*.yaml"]},
    python_requires=">=3.9",
    install_requires=["torch", "torchvision", "yacs", "pycocotools", "tqdm", "matplotlib", "numpy"],
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtension},
)
