"""Every script in ``examples/`` runs as printed and shows what it claims; the README's code is
the examples' code.

Single-process examples run with this interpreter; those whose first line is a torchrun command
run under ``torch.distributed.run`` with 2 gloo ranks, as that line says. Each check reads the
lines the example prints, so an example that stops showing its point fails here.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import dormant

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
README = ROOT / "README.md"
TORCHRUN = "# torchrun --nproc_per_node=2 examples/"
ABORT_AT_EXIT = "terminate called without an active exception"


def run_example(name: str, tmp_path: Path) -> str:
    """Run ``examples/<name>`` the way its first line says; return its stdout. Temporary files
    go under ``tmp_path``; the example imports the dormant these tests import."""
    path = EXAMPLES / name
    src = str(Path(dormant.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    if path.read_text().startswith(TORCHRUN):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += ["--nproc_per_node=2", str(path)]
    else:
        cmd = [sys.executable, str(path)]
    for _ in range(2):
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT
            )
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"{name} hung for {e.timeout} s\n{e.stdout}\n{e.stderr}")
        # A gloo process sometimes aborts at interpreter exit, after its work and output
        # ("terminate called without an active exception", PyTorch's teardown, seen with eager
        # models too): run such an example once more; any other failure fails at once.
        if proc.returncode == 0 or ABORT_AT_EXIT not in proc.stderr:
            break
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr[-8000:]}"
    return proc.stdout


def number(pattern: str, out: str) -> float:
    """The number the regular expression's one group finds in ``out``."""
    found = re.search(pattern, out)
    assert found, f"no line matching {pattern!r} in:\n{out}"
    return float(found.group(1))


def check_large_model(out: str) -> None:
    assert "built 8.0B parameters lazily in" in out and "(30 GiB if eager)" in out
    assert number(r"lazily in ([\d.]+) s", out) < 30  # recording, not allocating
    assert "materialized model.model.layers[0]: 218M parameters" in out
    assert "layer 0 lazy: False; layer 1 lazy: True" in out
    # One layer (832 MiB) and the libraries, nowhere near the 30 GiB of the whole model.
    assert number(r"peak memory of this process: (\d+) MiB", out) < 4096


def check_exact_values(out: str) -> None:
    assert "generator where eager leaves it: True" in out
    assert "exact: True (39 tensors compared with torch.equal)" in out


def check_load_checkpoint(out: str) -> None:
    assert "loaded 39 tensors lazily; missing: []" in out
    assert "random ops run while materializing: 0" in out
    assert "exact: True (every tensor equals the saved one)" in out


def check_from_pretrained(out: str) -> None:
    assert "LlamaForCausalLM loaded lazily: True" in out
    assert "exact: True (every tensor equals from_pretrained without the context)" in out


def check_train_booster(out: str) -> None:
    first = number(r"12 steps on 2 rank\(s\): loss ([\d.]+) ->", out)
    last = number(r"12 steps on 2 rank\(s\): loss [\d.]+ -> ([\d.]+)", out)
    assert 5.4 < first < 5.7  # about ln(256): the model starts from its random init
    assert last < first / 2  # the steps train it


def check_own_parallelism(out: str) -> None:
    for rank in (0, 1):
        assert f"rank {rank}: 21 of 21 tensors equal an eager build (tp=2)" in out


def check_lazy_init_doc(out: str) -> None:
    for rank in (0, 1):
        assert re.search(rf"rank {rank}: llama, \d+ parameters here, loss [\d.]+", out)
        assert re.search(rf"rank {rank}: bert, \d+ parameters here, loss [\d.]+", out)


CHECKS: dict[str, Callable[[str], None]] = {
    "large_model.py": check_large_model,
    "exact_values.py": check_exact_values,
    "load_checkpoint.py": check_load_checkpoint,
    "from_pretrained.py": check_from_pretrained,
    "train_booster.py": check_train_booster,
    "lazy_init_doc.py": check_lazy_init_doc,
    "own_parallelism.py": check_own_parallelism,
}


@pytest.mark.parametrize("name", list(CHECKS))
def test_example(name: str, tmp_path: Path) -> None:
    CHECKS[name](run_example(name, tmp_path))


def test_every_example_is_checked() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(CHECKS)


def test_examples_say_what_runs_them() -> None:
    """Each example has a docstring; a distributed one's first line is its torchrun command."""
    for path in EXAMPLES.glob("*.py"):
        text = path.read_text()
        assert ast.get_docstring(ast.parse(text)), f"{path.name}: no module docstring"
        if "dormant.launch(" in text:
            assert text.startswith(f"{TORCHRUN}{path.name}\n"), path.name


def readme_blocks() -> list[tuple[str | None, str]]:
    """Each python block of the README, with the example its marker names (None: no marker).

    A block belongs to an example when the line before its fence is
    ``<!-- example: examples/NAME.py -->``."""
    fenced = r"(?:<!-- example: (\S+) -->\n)?```python\n(.*?)```"
    return [(m[1], m[2]) for m in re.finditer(fenced, README.read_text(), re.S)]


def without_docstring(path: Path) -> str:
    """The example as the README prints it: the file without its module docstring."""
    text = path.read_text()
    docstring = ast.parse(text).body[0]
    assert isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant)
    lines = text.splitlines(keepends=True)
    assert docstring.end_lineno is not None
    before, after = lines[: docstring.lineno - 1], lines[docstring.end_lineno :]
    return "".join(before) + "".join(after).lstrip("\n")


def test_readme_code_is_example_code() -> None:
    """Every python block of the README is a whole example (less its docstring), so it runs as
    printed, and every example is in the README."""
    blocks = readme_blocks()
    for example, code in blocks:
        assert example, (
            "a README python block is not an example: save it as examples/NAME.py (with a "
            "check in CHECKS) and put <!-- example: examples/NAME.py --> on the line before "
            f"its fence:\n{code}"
        )
        assert code == without_docstring(ROOT / example), f"README block differs from {example}"
    shown = {Path(example).name for example, _ in blocks if example}
    assert shown == set(CHECKS) - {"lazy_init_doc.py"}  # the peer's page is linked, not shown
