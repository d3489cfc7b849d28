"""Package metadata; dependencies come from req.txt (runtime part)."""

import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def requirements():
    with open(os.path.join(HERE, "req.txt")) as handle:
        lines = [line.split("#")[0].strip() for line in handle]
    tools = {"nose2", "coverage", "websockets", "schemathesis", "playwright", "mypy",
             "types-cachetools", "ruff"}
    return [line for line in lines if line and line.split(">")[0] not in tools]


setup(
    name="indico",
    version="0.1.0",
    description="A JSON API to sign up, optimize stock portfolios and keep the results",
    python_requires=">=3.11",
    packages=find_packages(include=["indico", "indico.*"]),
    py_modules=["config"],
    package_data={"indico": ["data/*.csv.gz", "data/NOTICE", "static/app/*"]},
    install_requires=requirements(),
    extras_require={"bench": ["pyportfolioopt>=1.5", "pyinstrument>=5.0"]},
    entry_points={
        "console_scripts": [
            "indico-server = indico.server:main",
            "indico-prices = indico.prices:main",
        ],
    },
)
