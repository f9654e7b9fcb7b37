"""A wheel, installed into a fresh venv, traces the built-in model and clip with no checkout in sight.

Before, samples/ was found as the checkout's folder beside the package: `pip install .` shipped none of it,
and `trace clip.wav` without --model failed for anyone who installed normally. Nothing is downloaded: the
build uses this interpreter's setuptools, and the venv sees its site-packages (torch, transformers, ...).
"""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

pytestmark = pytest.mark.slow  # ~25 s: a build, an install and two runs of the CLI

# Not the source of a build: copying them would only cost time (and a stale build/ must not leak in).
NOT_SOURCE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                    "tests", "bench", "gpu-out", "out*.json", "_samples")


def run(argv, cwd, env):
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{argv[:3]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def venv(root, tmp_path_factory):
    """(venv dir, a directory outside the checkout, env) with the wheel of this checkout installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    source = tmp / "src"  # built from a copy: the checkout gets no build/ or egg-info
    shutil.copytree(root, source, ignore=NOT_SOURCE)
    run([sys.executable, "-m", "pip", "wheel", str(source), "-w", str(tmp / "dist"), "--no-deps",
         "--no-build-isolation", "--no-index", "-q"], tmp, env)
    (wheel,) = (tmp / "dist").glob("tracer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"tracer/_samples/sample.wav", "tracer/_samples/qwen2-audio-7b.json",
            "tracer/_samples/tiny-qwen2-audio/config.json"} <= set(names)
    assert not [n for n in names if "make_" in n]  # the runtime's files only, not the scripts that make them

    venv = tmp / "venv"
    # --without-pip: ensurepip costs seconds; the system's pip (seen through its site-packages) installs into it
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], tmp, env)
    if sys.prefix != sys.base_prefix:  # run from a venv: its packages are not the "system" the new venv sees
        import site
        purelib = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
        dirs = ", ".join(repr(d) for d in site.getsitepackages())
        (purelib / "_outer_venv.pth").write_text(f"import site; [site.addsitedir(d) for d in ({dirs},)]\n")
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
         "--no-index", str(wheel)], tmp, env)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return venv, elsewhere, env


def test_the_venv_imports_the_wheel_not_a_checkout(venv):
    """The system site-packages may hold an editable install of some checkout (a finder on sys.meta_path):
    the venv's own site-packages, searched first, must win, and the samples must be the shipped ones."""
    directory, elsewhere, env = venv
    out = run([str(directory / "bin" / "python"), "-c",
               "import tracer, tracer.load.assets as a; print(tracer.__file__); print(a.SAMPLES_DIR)"], elsewhere, env)
    package, samples = out.split()
    assert package.startswith(str(directory)) and samples.startswith(str(directory)), out
    assert samples.endswith(os.path.join("tracer", "_samples"))
    script = (directory / "bin" / "trace").read_text().splitlines()[0]
    assert script == f"#!{directory / 'bin' / 'python'}"  # `trace` runs the venv's interpreter


def test_installed_trace_static_only(venv):
    directory, elsewhere, env = venv
    out = run([str(directory / "bin" / "trace"), "--static-only"], elsewhere, env)
    assert "built-in tiny Qwen2-Audio" in out and "[STEP 8]" in out


def test_installed_trace_runs_the_shipped_clip(venv):
    directory, elsewhere, env = venv
    out = run([str(directory / "bin" / "trace"), "--repeats", "1", "--warmup", "0", "--steps", "0"],
              elsewhere, env)
    assert "built-in tiny Qwen2-Audio" in out
    clip = next(line for line in out.splitlines() if line.startswith("file "))
    assert os.path.join("tracer", "_samples", "sample.wav") in clip and "4.21 s" in clip
