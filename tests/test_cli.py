import subprocess
import sys

from cbackprop._cli import main


def test_demo_prints_both_libraries(capsys):
    assert main(["demo", "--max-iter", "5", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "cbackprop" in out and "scikit-learn" in out
    assert "test accuracy" in out and "faster than scikit-learn" in out


def test_console_entry_point_help():
    res = subprocess.run([sys.executable, "-m", "cbackprop._cli", "--help"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "demo" in res.stdout
