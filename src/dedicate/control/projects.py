"""Projects as the v2 API names them: which ones a caller sees, and whose a path's project is.

Every ``/v2/projects/{project}/...`` route starts with ``owner_in``: the owner a project id
names, when the caller may act in it. Another owner's project answers as not found, like
another owner's endpoint, so a key learns nothing of projects it cannot use.
"""

from __future__ import annotations

from dedicate.control.auth import Principal
from dedicate.domain.errors import InvalidRequest, NotFound
from dedicate.domain.offerings import CATALOG_PROJECT
from dedicate.domain.projects import Project, owner_of_project
from dedicate.store.repos import Store

DEFAULT_PROJECT_PAGE = 100
MAX_PROJECT_PAGE = 1000


def project_not_found(project_id: str) -> NotFound:
    return NotFound(f"project {project_id!r} not found; your project is the `project.id` of GET /v3/whoami "
                    "(set TOGETHER_PROJECT_ID to it)", code="project_not_found")


def owner_in(principal: Principal, project_id: str) -> str:
    """The owner of ``project_id`` when the caller may act in it: their own, or any for an admin."""
    owner = owner_of_project(project_id)
    if owner is None or (owner != principal.owner and not principal.is_admin):
        raise project_not_found(project_id)
    return owner


def projects_page(store: Store, principal: Principal, *, limit: int, after: str | None) -> tuple[list[Project], bool]:
    """The caller's project; an admin's, every owner's, in slug order. Returns the page and whether more follow."""
    if not 1 <= limit <= MAX_PROJECT_PAGE:
        raise InvalidRequest(f"limit must be a whole number from 1 to {MAX_PROJECT_PAGE}", param="limit")
    after_owner = None
    if after is not None:
        after_owner = owner_of_project(after)
        if after_owner is None:
            raise InvalidRequest(f"after {after!r} is not a project id; pass the next_cursor of the previous page",
                                 param="after")
    if not principal.is_admin:
        mine = [] if after_owner is not None and after_owner >= principal.owner else [Project.of(principal.owner)]
        return mine, False
    owners = store.owners_after(after_owner, limit + 1)
    return [Project.of(o) for o in owners[:limit]], len(owners) > limit


def readable(principal: Principal, project_id: str) -> str | None:
    """For reads that the catalog project shares with every key: None for it, else the owner as ``owner_in``."""
    if project_id == CATALOG_PROJECT:
        return None
    return owner_in(principal, project_id)
