"""The README's generated result sections equal what bench/results says (`python bench/readme_results.py`)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_results_are_generated_from_bench_results():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "readme_results.py"), "--check"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
