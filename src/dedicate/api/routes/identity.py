"""Who the caller is, as Together's newer clients ask: ``GET /v3/whoami`` and ``GET /v1/projects``.

An owner is a project (``proj_<owner>``) and the installation is the organization; `tg` 3.x asks
``/v3/whoami`` before every command that has no ``--project`` and builds ``<slug>/<name>`` from it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from dedicate.api.deps import AnyKey, BoundedRoute, Caller, Svc, call, whole
from dedicate.api.errors import responses
from dedicate.api.schemas import ProjectOut, ProjectPage, WhoAmI
from dedicate.control.projects import DEFAULT_PROJECT_PAGE, MAX_PROJECT_PAGE, projects_page
from dedicate.domain.projects import Organization

router = APIRouter(route_class=BoundedRoute, tags=["projects"])


@router.get("/v3/whoami", response_model=WhoAmI, responses=responses())
async def whoami(p: AnyKey, svc: Svc) -> WhoAmI:
    """At the host root: Together's newer CLI asks it first."""
    return WhoAmI.of(p, Organization.named(svc.settings.organization))


@router.get("/v1/projects", response_model=ProjectPage, responses=responses(400))
async def list_projects(
    p: Caller, svc: Svc,
    limit: Annotated[int, whole("limit", 1, MAX_PROJECT_PAGE),
                     Query(description=f"projects per page, at most {MAX_PROJECT_PAGE}")] = DEFAULT_PROJECT_PAGE,
    after: Annotated[str | None, Query(description="the next_cursor of the previous page")] = None,
) -> ProjectPage:
    """Your project; an admin's key lists every owner's."""
    found, more = await call(projects_page, svc.store, p, limit=limit, after=after or None)
    org = Organization.named(svc.settings.organization)
    return ProjectPage(data=[ProjectOut.of(x, org) for x in found],
                       next_cursor=found[-1].id if more and found else None)
