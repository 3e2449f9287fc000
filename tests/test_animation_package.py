"""Package-level tests for sdbatch.animation: no torch, cheap import, exports, doctests."""

from __future__ import annotations

import ast
import doctest
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from sdbatch import animation

PACKAGE_DIR = Path(animation.__file__).parent
MODULES = ["schedule", "warp2d", "warp3d", "color", "flow", "seeds", "_checks"]
REPO_ROOT = PACKAGE_DIR.parent.parent


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def test_import_does_not_load_torch_or_opencv() -> None:
    result = _run(
        "import sys, time\n"
        "start = time.perf_counter()\n"
        "import sdbatch.animation\n"
        "elapsed = time.perf_counter() - start\n"
        "assert 'torch' not in sys.modules\n"
        "assert 'cv2' not in sys.modules and 'skimage' not in sys.modules\n"
        "sdbatch.animation.evaluate_schedule('0:(1), 9:(t)', 10)\n"
        "print(elapsed)\n"
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip()) < 1.0


def test_all_modules_import_without_torch() -> None:
    result = _run(
        "import sys\n"
        "import sdbatch.animation as a\n"
        "for name in a.__all__: getattr(a, name)\n"
        "import sdbatch.animation.color, sdbatch.animation.flow, sdbatch.animation.warp3d\n"
        "import numpy as np\n"
        "a.match_colors(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8), 'lab')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    assert result.returncode == 0, result.stderr


def test_no_torch_import_in_the_source() -> None:
    for path in PACKAGE_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                root = name.split(".")[0]
                assert root not in {"torch", "torchvision", "pytorch3d", "py3d_tools", "numexpr", "pandas"}, path


def test_public_exports_resolve() -> None:
    for name in animation.__all__:
        assert getattr(animation, name) is not None
    assert animation.warp_2d is importlib.import_module("sdbatch.animation.warp2d").warp_2d
    assert "warp_3d" in dir(animation)
    lazy = set(animation._LAZY)
    assert lazy <= set(animation.__all__)
    assert set(animation.__all__) - lazy == {"ScheduleError", "as_schedule_text", "evaluate_schedule", "validate_schedule"}
    with pytest.raises(AttributeError):
        animation.does_not_exist  # noqa: B018


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name: str) -> None:
    module = importlib.import_module(f"sdbatch.animation.{module_name}")
    assert module.__doc__
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_package_docstring_example() -> None:
    assert doctest.testmod(animation).failed == 0


@pytest.mark.parametrize("module_name", [m for m in MODULES if not m.startswith("_")])
def test_public_functions_have_docstrings_with_examples(module_name: str) -> None:
    module = importlib.import_module(f"sdbatch.animation.{module_name}")
    for name in module.__all__:
        obj = getattr(module, name)
        if callable(obj) and not isinstance(obj, type):
            assert obj.__doc__ and ">>>" in obj.__doc__, f"{module_name}.{name} lacks an example"
