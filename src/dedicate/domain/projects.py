"""Projects and the organization: how Together's v2 identity maps onto dedicate's owners.

An owner is a project: its slug is the owner's name and its id is ``proj_<owner>``, so the id
needs no table and can never disagree with the owner it names. The installation is the one
organization (``org_<name>``, the name from ``[server] organization``). Owner names are
lowercase letters, digits, ``_`` and ``-``, so a project id is safe in a URL path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROJECT_PREFIX = "proj_"
ORGANIZATION_PREFIX = "org_"
ORGANIZATION_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_ORGANIZATION = re.compile(ORGANIZATION_PATTERN)


@dataclass(frozen=True)
class Organization:
    id: str
    name: str

    @staticmethod
    def named(name: str) -> Organization:
        return Organization(id=f"{ORGANIZATION_PREFIX}{name}", name=name)


@dataclass(frozen=True)
class Project:
    id: str
    slug: str
    name: str

    @staticmethod
    def of(owner: str) -> Project:
        return Project(id=f"{PROJECT_PREFIX}{owner}", slug=owner, name=owner)


def owner_of_project(project_id: str) -> str | None:
    """The owner a project id names, or None when it is not a project id."""
    if not project_id.startswith(PROJECT_PREFIX):
        return None
    owner = project_id.removeprefix(PROJECT_PREFIX)
    return owner or None


def valid_organization_name(name: str) -> bool:
    return bool(_ORGANIZATION.fullmatch(name))
