"""Where the data files kept at the top of the repository are found at run time.

The per-arch recipes (``recipes/*.toml``), the web page (``web/``, with the npm packages it
imports) and the trainer's sample data (``training/data/``) live at the top of the checkout,
where people edit them, not inside the package. A wheel can only carry files inside its
packages, so ``setup.py`` copies these folders into ``mlcpatch/_data/`` when it builds one. This
module is the one lookup for both installs: the in-package copy when there is one (an installed
wheel), else the checkout's folder (an editable install or a plain source tree, where
``mlcpatch/_data/`` never exists).
"""

from __future__ import annotations

import pathlib

PACKAGE_DATA = pathlib.Path(__file__).resolve().parent / "_data"
CHECKOUT = pathlib.Path(__file__).resolve().parent.parent
# Each name is a folder relative to the checkout and, in a wheel, to mlcpatch/_data/ (setup.py
# copies exactly these; tests/test_packaging.py checks the two lists agree).
SHIPPED = ("recipes", "web", "training/data")


def data_path(name: str) -> pathlib.Path:
    """The folder ``name`` (one of SHIPPED): the wheel's copy if installed from one, else the
    checkout's."""
    if name not in SHIPPED:
        raise ValueError(f"{name!r} is not a shipped data folder (shipped: {', '.join(SHIPPED)})")
    packaged = PACKAGE_DATA / name
    return packaged if packaged.is_dir() else CHECKOUT / name


def recipes_dir() -> pathlib.Path:
    return data_path("recipes")


def web_dir() -> pathlib.Path:
    return data_path("web")


def training_data_dir() -> pathlib.Path:
    return data_path("training/data")
