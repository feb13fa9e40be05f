"""Where lightning-edit finds its own files and where it keeps what it writes: the one place that knows.

Shipped with the package (so ``pip install .`` and a wheel carry them, not only a checkout):

* ``CONFIG_ROOT``: ``lightning_edit/configs/`` (per-method hyperparameters, study plans, DeepSpeed configs);
  the checkout's top-level ``configs`` is a symlink to it, so ``configs/rome/smollm2-135m.yaml`` still works;
* ``DEMO_PATH``: ``lightning_edit/data/demo.json`` (``data/demo.json`` at the top of a checkout links to it);
* ``STATS_TEXT_PATH``: the WikiText-2 test excerpt for key statistics (``lightning_edit/data/text/``);
* ``HELDOUT_TEXT_PATH``: the end of the same split, held out from the statistics (``capability``'s perplexity).

Written or read from outside the package, with one rule: a *checkout* (the folder above the package holds
``edit.py`` and ``setup.cfg``, as with ``pip install -e .`` or running ``python edit.py``) keeps everything
where it always was; an installed package (``pip install .``, a wheel) uses a per-user cache instead of a
folder inside site-packages:

* ``default_cache_root()``: models, statistics, IKE pools: ``$LIGHTNING_EDIT_CACHE``, else ``<checkout>/checkpoints``,
  else ``$XDG_CACHE_HOME/lightning-edit`` (``~/.cache/lightning-edit``);
* ``default_data_root()``: benchmark data: ``$LIGHTNING_EDIT_DATA``, else ``../shared/data`` beside the checkout,
  else ``<user cache>/data``;
* ``default_runs_root()``: training logs (train.py): ``<checkout>/runs``, else ``<user cache>/runs``;
* ``default_editors_root()``: trained editor checkpoints (train.py): ``<checkout>/checkpoints/editors``, else
  ``<user cache>/editors``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

PACKAGE_ROOT = Path(__file__).resolve().parent
CONFIG_ROOT = PACKAGE_ROOT / "configs"
STUDY_CONFIGS = CONFIG_ROOT / "study"
DEEPSPEED_CONFIG_ROOT = CONFIG_ROOT / "deepspeed"
DEMO_PATH = PACKAGE_ROOT / "data" / "demo.json"
# A WikiText-2 test excerpt shipped with the package (CC BY-SA 3.0; data/text/README.md): statistics text and
# unrelated prompts.
STATS_TEXT_PATH = PACKAGE_ROOT / "data" / "text" / "wikitext-2-test-excerpt.txt"
# The last two articles of the same split (CC BY-SA 3.0): text no statistics read, for held-out perplexity.
HELDOUT_TEXT_PATH = PACKAGE_ROOT / "data" / "text" / "wikitext-2-test-heldout.txt"

CACHE_ENV = "LIGHTNING_EDIT_CACHE"
DATA_ENV = "LIGHTNING_EDIT_DATA"
CHECKOUT_MARKERS = ("edit.py", "setup.cfg")


def _find_checkout(package_root: Path = PACKAGE_ROOT) -> Optional[Path]:
    """The project folder when the package runs from a checkout (its parent holds edit.py and setup.cfg), else None."""
    parent = package_root.parent
    return parent if all((parent / marker).is_file() for marker in CHECKOUT_MARKERS) else None


# The checkout this package runs from (an editable install or `python edit.py`), or None when installed.
CHECKOUT_ROOT: Optional[Path] = _find_checkout()


def user_cache_root() -> Path:
    """``$XDG_CACHE_HOME/lightning-edit``, else ``~/.cache/lightning-edit`` (read at call time)."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "lightning-edit"


def default_cache_root() -> Path:
    """Models, statistics and pools: ``$LIGHTNING_EDIT_CACHE``; else ``checkpoints/`` in a checkout (unchanged);
    else the per-user cache (``~/.cache/lightning-edit``, honouring ``$XDG_CACHE_HOME``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return CHECKOUT_ROOT / "checkpoints" if CHECKOUT_ROOT is not None else user_cache_root()


def default_data_root() -> Path:
    """Benchmark data: ``$LIGHTNING_EDIT_DATA``; else ``../shared/data`` beside a checkout (unchanged); else
    ``data/`` in the per-user cache (``~/.cache/lightning-edit/data``)."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    return CHECKOUT_ROOT.parent / "shared" / "data" if CHECKOUT_ROOT is not None else user_cache_root() / "data"


def default_runs_root() -> Path:
    """Training logs of train.py: ``runs/`` in a checkout (unchanged), else ``runs/`` in the per-user cache."""
    return CHECKOUT_ROOT / "runs" if CHECKOUT_ROOT is not None else user_cache_root() / "runs"


def default_editors_root() -> Path:
    """Trained editor checkpoints of train.py: ``checkpoints/editors`` in a checkout (unchanged), else
    ``editors/`` in the per-user cache."""
    return CHECKOUT_ROOT / "checkpoints" / "editors" if CHECKOUT_ROOT is not None else user_cache_root() / "editors"
