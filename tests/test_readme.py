"""Every ```python block of README.md runs, in order, in one namespace for the whole file.

A block may use names an earlier block defined (the README reads top to bottom). A block
is left out only by a visible marker on the line right before its fence,
``<!-- readme-test: skip (why) -->``; a marker without a reason, or one that is not
followed by a python block, fails the test. Blocks run in a temporary working directory
(they save traces and write drawings there), on CPU, with no downloads.
"""

from __future__ import annotations

import ast
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\S*)\s*$")
MARKER = re.compile(r"^<!--\s*readme-test:(.*?)-->\s*$")
SKIP = re.compile(r"^\s*skip\s*(?:\((.*)\))?\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the block's first code line in README.md
    code: str
    skip: str | None  # the reason, when the block is skipped


def blocks(text: str) -> list[Block]:
    """The python blocks of ``text`` with their skip reasons; malformed markers raise."""
    out: list[Block] = []
    lines = text.splitlines()
    pending: tuple[int, str] | None = None  # (marker line, reason) waiting for its fence
    i = 0
    while i < len(lines):
        marker = MARKER.match(lines[i].strip())
        fence = FENCE.match(lines[i])
        if marker:
            skip = SKIP.match(marker.group(1))
            if skip is None:
                raise ValueError(f"README.md:{i + 1}: unknown readme-test marker "
                                 f"{lines[i].strip()!r}; write <!-- readme-test: skip (why) -->")
            if not (skip.group(1) or "").strip():
                raise ValueError(f"README.md:{i + 1}: skip marker without a reason; write "
                                 "<!-- readme-test: skip (why it cannot run) -->")
            pending = (i + 1, skip.group(1).strip())
            i += 1
            continue
        if fence is None:
            if pending is not None and lines[i].strip():
                raise ValueError(f"README.md:{pending[0]}: skip marker is not right before "
                                 "a ```python block")
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise ValueError(f"README.md:{i + 1}: code block never closed")
        if fence.group(1) == "python":
            out.append(Block(i + 2, "\n".join(lines[i + 1:end]) + "\n",
                             pending[1] if pending else None))
        elif pending is not None:
            raise ValueError(f"README.md:{pending[0]}: skip marker is before a "
                             f"```{fence.group(1)} block, not a ```python one")
        pending = None
        i = end + 1
    if pending is not None:
        raise ValueError(f"README.md:{pending[0]}: skip marker at the end of the file")
    return out


def run_blocks(found: list[Block]) -> tuple[dict[str, Any], int]:
    """Run every block not skipped in one namespace; returns it and the number skipped."""
    scope: dict[str, Any] = {"__name__": "readme"}
    skipped = 0
    for block in found:
        if block.skip is not None:
            skipped += 1
            continue
        # Pad with blank lines so tracebacks give README.md's own line numbers.
        source = "\n" * (block.line - 1) + block.code
        try:
            exec(compile(source, str(README), "exec"), scope)  # noqa: S102 - our own README
        except Exception as e:  # noqa: BLE001 - reported with the block, then failed
            numbered = "\n".join(f"{block.line + k:4d}  {s}"
                                 for k, s in enumerate(block.code.splitlines()))
            at = [f.lineno for f in traceback.extract_tb(e.__traceback__)
                  if f.filename == str(README)]
            tb = "".join(traceback.format_exception(type(e), e, e.__traceback__, limit=-3))
            pytest.fail(f"README.md block at line {block.line} raised {type(e).__name__} "
                        f"at README.md line {at[-1] if at else '?'}: {e}\n{numbered}\n"
                        f"--- innermost frames\n{tb}", pytrace=False)
    return scope, skipped


def test_every_readme_python_block_runs(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    found = blocks(README.read_text())
    assert found, "README.md has no ```python block"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a block that downloads fails here
    monkeypatch.setenv("MPLBACKEND", "Agg")
    threads = torch.get_num_threads()
    try:
        scope, skipped = run_blocks(found)
    finally:
        torch.set_num_threads(threads)
        if "matplotlib.pyplot" in sys.modules:  # res.heatmap() opened figures
            sys.modules["matplotlib.pyplot"].close("all")
    assert skipped == sum(b.skip is not None for b in found)
    assert skipped <= len(found) // 4, (
        f"{skipped} of {len(found)} README blocks are skipped; make them runnable")
    # The blocks ran for real: every name a block assigns at top level was bound.
    ran = [b for b in found if b.skip is None]
    assigned = {t.id for b in ran for node in ast.parse(b.code).body
                if isinstance(node, ast.Assign) for t in node.targets
                if isinstance(t, ast.Name)}
    assert assigned and assigned <= scope.keys(), sorted(assigned - scope.keys())


def test_skipped_blocks_say_why() -> None:
    for b in blocks(README.read_text()):
        assert b.skip is None or len(b.skip) >= 10, (b.line, b.skip)


@pytest.mark.parametrize("text, message", [
    ("<!-- readme-test: skip -->\n```python\nx = 1\n```\n", "without a reason"),
    ("<!-- readme-test: skip () -->\n```python\nx = 1\n```\n", "without a reason"),
    ("<!-- readme-test: skip (slow) -->\nprose\n```python\nx = 1\n```\n", "not right before"),
    ("<!-- readme-test: skip (shell) -->\n```bash\nls\n```\n", "not a ```python"),
    ("<!-- readme-test: skip (x) -->\n", "end of the file"),
    ("<!-- readme-test: skipp (x) -->\n```python\nx = 1\n```\n", "unknown"),
    ("```python\nx = 1\n", "never closed"),
])
def test_a_malformed_marker_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        blocks(text)


def test_blocks_are_found_with_their_lines_and_reasons() -> None:
    text = ("# t\n\n```python\na = 1\n```\n\n```bash\nls\n```\n"
            "<!-- readme-test: skip (needs a GPU) -->\n```python\nb = a\nc = 2\n```\n")
    assert blocks(text) == [Block(4, "a = 1\n", None), Block(12, "b = a\nc = 2\n", "needs a GPU")]


def test_a_failing_block_names_its_line_and_source() -> None:
    found = [Block(3, "a = 1\n", None), Block(7, "b = a\nraise ValueError('boom')\n", None)]
    with pytest.raises(pytest.fail.Exception) as info:
        run_blocks(found)
    text = str(info.value)
    assert "block at line 7" in text and "at README.md line 8: boom" in text
    assert "   8  raise ValueError('boom')" in text
    assert 'README.md", line 8' in text  # the traceback points into README.md too


def _resolve(root: Any, dotted: str) -> bool:
    obj = root
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def test_every_lens_name_the_docs_mention_exists() -> None:
    import lens

    text = README.read_text() + "".join(
        p.read_text() for p in sorted((README.parent / "tutorials").glob("[0-9]*.py")))
    # tl.trace, tl.sweep.patching, tl.compat.report (the prose too, not only the code)
    named = set(re.findall(r"\btl\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)", text))
    assert {"trace", "validate", "sweep.patching"} <= named
    missing = sorted(n for n in named if not _resolve(lens, n))
    assert not missing, f"the docs name tl.{missing} that lens does not have"
    top = {n.split(".")[0] for n in named}
    assert top <= set(lens.__all__), sorted(top - set(lens.__all__))
    # `Bundle.plot`, `SweepResult.heatmap`, `LensError`: public classes and their methods
    quoted = set(re.findall(r"`([A-Z]\w*(?:\.\w+)?)`", README.read_text()))
    public = {q for q in quoted if q.split(".")[0] in lens.__all__}
    assert {"LensError", "Bundle.plot", "SweepResult.heatmap"} <= public
    assert all(_resolve(lens, q) for q in public), sorted(
        q for q in public if not _resolve(lens, q))


def test_the_actions_list_names_public_actions() -> None:
    import lens

    text = README.read_text()
    para = text.split("\nActions: ", 1)[1].split("\n\n", 1)[0]
    names = re.findall(r"`(\w+)`", para)
    assert len(names) >= 10 and set(names) <= set(lens.__all__), names
    assert all(callable(getattr(lens, n)) for n in names)
