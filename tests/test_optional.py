"""Optional dependencies: plots leave matplotlib's global state alone; a missing extra is named."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from lens._optional import require
from lens.errors import LensError, MissingDependencyError


def test_a_missing_module_names_its_extra():
    with pytest.raises(MissingDependencyError, match=r"lens\[plot\]") as info:
        require("matplotlib.no_such_submodule_here")
    assert isinstance(info.value, LensError) and isinstance(info.value, ImportError)


def test_plots_leave_the_backend_and_pyplot_alone():
    # A fresh interpreter: the user picked a backend; bundle and sweep plots must not switch
    # it, must not import pyplot, and must not register figures with pyplot.
    code = textwrap.dedent("""
        import sys
        import matplotlib
        matplotlib.use("svg")
        import torch
        from torch import nn
        import lens as tl
        from lens.sweeps.result import SweepResult
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        a, b = torch.randn(2, 4), torch.randn(2, 4)
        bundle = tl.bundle({"a": tl.trace(model, a), "b": tl.trace(model, b)})
        fig1 = bundle.plot(tl.func("relu"))
        rows = [{"site": "s", "position": p, "head": None, "value": float(p)} for p in range(3)]
        fig2 = SweepResult(rows, {"kind": "patching", "metric": "m"}, "d").heatmap()
        assert fig1.canvas is not None and fig2.canvas is not None
        print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["svg", "False"]
