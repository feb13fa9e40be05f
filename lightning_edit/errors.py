"""Errors the user can act on. Each message names the field (or file) at fault and the fix."""


class LightningEditError(Exception):
    """Base class of every error lightning-edit raises on purpose."""


class RequestError(LightningEditError, ValueError):
    """An edit request is malformed (empty prompt, missing subject, wrong type...)."""


class RequestTypeError(RequestError):
    """A request field has the wrong type (a number for a prompt, one string for a list): always refused, never
    skipped like an empty field of a real dataset is, since the file itself is malformed."""


class DataError(LightningEditError, FileNotFoundError):
    """A dataset file is missing or its records are in no known format."""


class ModelNotAvailableError(LightningEditError, OSError):
    """A model cannot be loaded here (not cached, offline, package missing)."""


class ConfigError(LightningEditError, ValueError):
    """A hyperparameter file or value is wrong."""


class EditFailedError(LightningEditError, RuntimeError):
    """An edit failed; the model's weights were restored to what they were before it."""


class CheckpointError(LightningEditError, ValueError):
    """A shared file (editor checkpoint, statistics cache, saved edit) does not match what it claims."""


# The documentation site (mkdocs.yml site_url, the one other place it is written; tests/test_docs.py keeps the two
# equal). An error that sends the user to read something gives the address of the page that answers it.
DOCS_URL = "https://lightning-edit.readthedocs.io/en/latest/"


def docs_link(page: str, anchor: str = "") -> str:
    """The address of ``page`` (its path under ``docs/``, e.g. ``"guides/data.md"``) on the documentation site, at
    the heading ``anchor`` if given. tests/test_docs.py checks that every page and heading named so exists."""
    path = page.removesuffix(".md")
    path = "" if path == "index" else path.removesuffix("/index") + "/"
    return f"{DOCS_URL}{path}{'#' + anchor if anchor else ''}"
