"""The checkout's top-level samples/ is the one source of the files the tracer runs on without --model; a
wheel (or a plain `pip install .`) has no checkout beside it, so build_py copies them into the package as
tracer/_samples/, where tracer/load/assets.py finds them through importlib.resources."""
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
# What the runtime reads: the built-in tiny model's config/processor files, the clip, --config's 7B example.
# Not the make_* scripts that regenerate them.
SHIPPED = ("tiny-qwen2-audio", "sample.wav", "qwen2-audio-7b.json")


class build_py_with_samples(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install imports the checkout, and assets.py reads its samples/ directly
        target = os.path.join(self.build_lib, "tracer", "_samples")
        shutil.rmtree(target, ignore_errors=True)  # a stale build/ must not ship what samples/ no longer has
        os.makedirs(target)
        for name in SHIPPED:
            source = os.path.join(HERE, "samples", name)
            if os.path.isdir(source):
                shutil.copytree(source, os.path.join(target, name))
            else:
                shutil.copy2(source, target)


setup(scripts=["bin/trace"], cmdclass={"build_py": build_py_with_samples})
