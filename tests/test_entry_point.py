"""The ``sdbatch`` command's entry point: main's exit code, then a quick exit (no heap walk at shutdown)."""

from __future__ import annotations

import gc
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import tomllib

from sdbatch import cli
from sdbatch.runtime import shutdown

ROOT = Path(__file__).resolve().parents[1]


def test_console_script_is_the_entry_that_exits_quickly():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["sdbatch"] == "sdbatch.cli:entry"
    installed = {ep.name: ep for ep in entry_points(group="console_scripts")}
    assert installed["sdbatch"].load() is cli.entry  # what `pip install` put on PATH
    assert "from .cli import entry" in (ROOT / "sdbatch" / "__main__.py").read_text()


@pytest.mark.parametrize(("text", "code"), [("model: stabilityai/sd-turbo\nstages: [{name: a, type: generate, prompt: x}]\n", 0),
                                            ("model: stabilityai/sd-turbo\nstages: [{name: a, type: generat, prompt: x}]\n", 2)])
def test_entry_returns_mains_code_and_then_freezes_the_heap(tmp_path, monkeypatch, text, code):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    events = []
    real_main = cli.main
    monkeypatch.setattr(cli, "main", lambda: events.append("main") or real_main())
    monkeypatch.setattr(shutdown.gc, "freeze", lambda: events.append("freeze"))
    monkeypatch.setattr(sys, "argv", ["sdbatch", "validate", str(recipe)])
    assert cli.entry() == code
    assert events == ["main", "freeze"]  # frozen only after every output and line is written


def test_python_m_sdbatch_keeps_exit_codes_and_output(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: stabilityai/sd-turbo\nstages: [{name: a, type: generate, prompt: x, seeds: [1, 2]}]\n")
    code = ("import atexit, gc, sys\n"
            "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0, flush=True))\n"
            "sys.argv = ['sdbatch', 'plan', sys.argv[1], '--out', sys.argv[2]]\n"
            "import runpy; runpy.run_module('sdbatch', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code, str(recipe), str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "2 job" in proc.stdout  # the plan was printed and flushed before the quick exit
    assert proc.stdout.rstrip().endswith("frozen at exit: True")  # atexit handlers still run, after the freeze
    gc.collect()  # this test process itself is never frozen
    assert gc.get_freeze_count() == 0
