"""Model wheels installed in this environment (``torchport package``), found by their entry point.

Each model wheel registers ``NAME = NAME:package_path`` in the ``torchport.models`` entry-point
group; ``torchport serve --installed NAME`` serves the package folder inside it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from torchport.runtimes._errors import ServingError
from torchport.runtimes._manifest import MANIFEST_NAME

ENTRY_POINT_GROUP = "torchport.models"


def installed_models() -> dict[str, Path]:
    """``{name: package folder}`` of every installed model wheel."""
    found = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[ep.name] = Path(ep.load()())
        except Exception as e:  # a broken wheel must not hide the others
            raise ServingError(f"installed model {ep.name!r} is broken: {type(e).__name__}: {e}") from e
    return found


def installed_package(name: str) -> Path:
    """The package folder of the installed model wheel ``name``.

    Raises:
        ServingError: no such model wheel is installed (the message lists those that are).
    """
    models = installed_models()
    if name not in models:
        have = ", ".join(sorted(models)) or "none"
        raise ServingError(
            f"no installed model wheel {name!r} (installed: {have}); build one with `torchport package` "
            "and pip install it"
        )
    return models[name]


def _model_name(folder: Path) -> str:
    """The model name the server uses for the package (its manifest's name)."""
    try:
        return str(json.loads((folder / MANIFEST_NAME).read_text())["name"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ServingError(f"installed model package {folder} has no readable {MANIFEST_NAME}: {e}") from e


@contextmanager
def installed_repository(names: Sequence[str]) -> Iterator[Path]:
    """A path ``torchport serve`` takes for the installed models ``names`` (``"*"``: every one).

    One model: its package folder (``NAME/models/<model>/``, served under the model's name).
    Several: a temporary repository folder of links ``<model>/`` to each package folder, removed on exit.
    """
    wanted = sorted(installed_models()) if list(names) == ["*"] else list(dict.fromkeys(names))
    if not wanted:
        raise ServingError(
            "no model wheel is installed; build one with `torchport package` and pip install it"
        )
    folders = {n: installed_package(n) for n in wanted}
    if len(folders) == 1:
        yield next(iter(folders.values()))
        return
    repo = Path(tempfile.mkdtemp(prefix="torchport-installed-"))
    try:
        served: dict[str, str] = {}
        for n, folder in folders.items():
            model = _model_name(folder)
            if model in served:
                raise ServingError(f"installed models {served[model]!r} and {n!r} both serve model {model!r}")
            served[model] = n
            os.symlink(folder, repo / model, target_is_directory=True)
        yield repo
    finally:
        shutil.rmtree(repo, ignore_errors=True)
