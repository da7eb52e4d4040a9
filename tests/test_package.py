"""The wheel: built from the repository, installed outside it, it trains on its packaged sample."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_wheel_installed_outside_the_repository_trains_on_its_packaged_sample(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(PROJECT)], check=True, capture_output=True)
    (wheel,) = wheels.glob("effv2_lib-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    # torch and the rest come from this environment's site-packages; a path in a .pth file does not run
    # the .pth files there, so this checkout's editable install stays out of the new environment
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("EFFV2_DATA", None)
    where = subprocess.run([str(python), "-c", "import effv2_lib, effv2_lib.data as d; "
                            "print(effv2_lib.__file__); print(d.SAMPLE_PATH.is_file()); print(d.DATA_DIR)"],
                           cwd=work, env=env, check=True, capture_output=True, text=True).stdout.split("\n")
    assert where[0].startswith(str(site)) and where[1] == "True"
    assert where[2] == str(tmp_path / "cache" / "effv2")  # downloads would go to the cache, not site-packages
    trained = subprocess.run([str(venv / "bin" / "effv2-train"), "--smoke", "--model", "cifar-tiny", "--epochs", "1",
                              "--preset", "cifar10-fixed", "--out", "run", "--no-progress", "--device", "cpu"],
                             cwd=work, env=env, capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "THE BUNDLED SAMPLE" in trained.stdout and (work / "run" / "summary.json").is_file()
