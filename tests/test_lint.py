"""The tree passes ruff (ruff.toml: pycodestyle E/W, pyflakes F, import order I) — the lint the
renovation issue asked for, as a test so that CI runs it with the README's command."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_ruff_check_passes_on_the_whole_tree():
    p = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
