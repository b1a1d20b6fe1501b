"""Every command in README's fenced blocks, pasted in order into a fresh shell of a project
where the data pipelines have run (what `make demo` leaves, less the served predictions),
exits 0: offline, with nothing but the README's own `source .venv/bin/activate`."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.servers import VENV_BIN

ROOT = Path(__file__).resolve().parents[1]
# The two commands themselves: the suite is `make test`, the prepared project stands for
# what `make demo` leaves.
NOT_PASTED = {"make demo", "make test"}
SCRIPTS = ("plants-mlops", "kedro", "zenml", "mlflow")


def readme_commands(text: str) -> list[str]:
    """The command lines of the ```bash blocks, in order, without their comments."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            command = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
            if command and command not in NOT_PASTED:
                commands.append(command)
    return commands


def thin_venv(project: Path) -> Path:
    """``project/.venv`` on the test run's packages (as `make install` would leave it, in
    seconds): its python, the console scripts README uses, and `make install`'s line in
    ``activate``."""
    venv = project / ".venv"
    subprocess.run(
        [sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    site = next((venv / "lib").glob("python3.*/site-packages"))
    paths = [p for p in sys.path if p and Path(p).is_dir() and "site-packages" in p]
    paths.append(str(ROOT / "src"))
    (site / "_test_run.pth").write_text("\n".join(paths) + "\n")
    for name in SCRIPTS:
        body = (VENV_BIN / name).read_text().split("\n", 1)[1]
        script = venv / "bin" / name
        script.write_text(f"#!{venv / 'bin' / 'python'}\n{body}")
        script.chmod(0o755)
    line = re.search(r"echo '(export ZENML_CONFIG_PATH=[^']*)'", (ROOT / "Makefile").read_text())
    assert line, "the Makefile's install adds the ZenML line to .venv/bin/activate"
    with (venv / "bin" / "activate").open("a") as fh:
        fh.write(line.group(1).replace("$(CURDIR)", str(project)) + "\n")
    return venv


def test_readme_commands_are_found_in_order():
    commands = readme_commands((ROOT / "README.md").read_text())
    assert commands[0] == "source .venv/bin/activate"
    assert "make demo" not in commands and len(commands) >= 5


@pytest.mark.slow
def test_every_readme_command_pasted_in_order_exits_0(data_project, tmp_path):
    project = data_project.path
    shutil.copy(ROOT / ".telemetry", project / ".telemetry")  # a clone has it
    thin_venv(project)
    commands = readme_commands((ROOT / "README.md").read_text())
    script = (
        "set -e\n"
        + "".join(f"echo {shlex.quote('+ ' + c)}\n{c}\n" for c in commands)
        + "echo README-DONE\n"
    )
    home = tmp_path / "home"
    home.mkdir()
    fresh = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    fresh.update({k: v for k, v in os.environ.items() if k.startswith("COV_CORE")})
    proc = subprocess.run(
        ["bash", "-c", script],
        cwd=project,
        env=fresh,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    ran = [ln[2:] for ln in proc.stdout.splitlines() if ln.startswith("+ ")]
    assert proc.returncode == 0 and "README-DONE" in proc.stdout, (
        f"`{ran[-1] if ran else '?'}` failed ({proc.returncode}):\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    assert ran == commands
    assert "Traceback" not in proc.stderr
    # the champion the training line registered, listed by `registry list`
    assert "champion" in proc.stdout
