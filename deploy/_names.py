"""Checks for the names and versions users give to wheels and images (one clear line when wrong)."""

from __future__ import annotations

import keyword
import re

from torchport.runtimes import UsageError

_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# PEP 440, the canonical public version regex from its appendix (no local part: wheels on an index
# cannot carry one)
_PEP440 = re.compile(
    r"^([1-9][0-9]*!)?(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*((a|b|rc)(0|[1-9][0-9]*))?"
    r"(\.post(0|[1-9][0-9]*))?(\.dev(0|[1-9][0-9]*))?$"
)
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def check_module_name(name: str) -> str:
    """``name`` if it is both an importable module name and a distribution name, else UsageError."""
    if not _MODULE.match(name) or keyword.iskeyword(name):
        raise UsageError(
            f"--name {name!r} is not a valid Python module / distribution name: use letters, digits and "
            "underscores, not starting with a digit (e.g. my_model)"
        )
    return name


def default_module_name(model_name: str) -> str:
    """The package's model name as a module name (``resnet-18`` -> ``resnet_18``)."""
    candidate = re.sub(r"[^A-Za-z0-9_]", "_", model_name)
    if candidate and candidate[0].isdigit():
        candidate = f"model_{candidate}"
    return candidate


def check_version(version: str) -> str:
    """``version`` if it is a canonical PEP 440 public version (``1``, ``1.2.0``, ``2.0rc1``), else UsageError."""
    if not _PEP440.match(version):
        raise UsageError(
            f"--model-version {version!r} is not a PEP 440 version: use e.g. 1, 1.2.0, 2.0rc1 or 1.0.post1"
        )
    return version


def k8s_name(name: str) -> str:
    """A DNS-1123 label from a model name (``my_model`` -> ``my-model``), for Kubernetes objects."""
    label = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")[:53].rstrip("-")
    if not _K8S_NAME.match(label):
        raise UsageError(
            f"cannot make a Kubernetes name from {name!r}; pass --name with lowercase letters, digits and '-'"
        )
    return label
