"""Where the project's files that are not code are: the configs (`conf/`), the sweep grids
(`sweeps/`) and the analysis notebook. In a checkout (and an editable install) `conf/` and
`sweeps/` are the repository's top-level folders; a wheel carries copies of them inside this
package (`src/_resources/`, put there by setup.py's build step), so `pip install .` works
from any directory. Everything that reads them takes the paths from here.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _root() -> Path:
    shipped = Path(str(files(__package__) / "_resources"))
    if (shipped / "conf").is_dir():  # an installed wheel
        return shipped
    return Path(__file__).resolve().parent.parent  # the checkout


ROOT = _root()  # holds conf/ and sweeps/ (Hydra's search path gets it: sweeps/ is the `sweeps` group)
CONF_DIR = ROOT / "conf"
SWEEPS_DIR = ROOT / "sweeps"


def notebook() -> Path:
    """The aggregate notebook, shipped with the `analysis` package (looked up when asked for:
    importing `analysis` here would be circular)."""
    return Path(str(files("analysis") / "notebooks" / "aggregate.ipynb"))
