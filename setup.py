from setuptools import setup

setup(scripts=["bin/trace"])
