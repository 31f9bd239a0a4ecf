"""`/v1/agent` (learning mode and preferences) and `/v1/quick-actions` (named instructions)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from retouch.pipelines.actions import check_instruction
from retouch.serving.core import projects
from retouch.serving.core.db import transaction, utcnow
from retouch.serving.core.idempotency import create_idempotently
from retouch.serving.core.tables import ApiKey, QuickAction
from retouch.serving.deps import READ, WRITE, ServicesDep

from .deps import IdempotencyKey, aixpose_key, responses
from .responses import AgentObject, QuickActionList, QuickActionObject
from .schemas import AgentPatch, QuickActionCreate, list_payload

router = APIRouter(tags=["aixpose agent"])


@router.get("/agent", response_model=AgentObject, responses=responses())
def get_agent(services: ServicesDep, key: Annotated[ApiKey, Depends(aixpose_key(READ))]) -> dict:
    """Whether the agent auto-enhances uploads; explicit and learned preferences per scene type,
    and the actions it would apply now."""
    with transaction(services.session_factory) as session:
        return projects.agent_payload(projects.get_agent(session, key.account_id))


@router.patch("/agent", response_model=AgentObject, responses=responses())
def patch_agent(body: AgentPatch, services: ServicesDep,
                key: Annotated[ApiKey, Depends(aixpose_key(WRITE))]) -> dict:
    """Turn the agent on/off and set explicit preferred actions per scene type (an empty list
    clears a scene type's explicit preference, so learned ones apply again)."""
    with transaction(services.session_factory) as session:
        agent = projects.get_agent(session, key.account_id)
        if body.enabled is not None:
            agent.enabled = body.enabled
        if body.preferences is not None:
            explicit = dict(agent.explicit or {})
            for scene_type, action_ids in body.preferences.items():
                if action_ids:
                    check_instruction(action_ids, None, f"preferences.{scene_type}",
                                      scene_type=scene_type)
                    explicit[scene_type] = list(action_ids)
                else:
                    explicit.pop(scene_type, None)
            agent.explicit = explicit
        agent.updated_at = utcnow()
        session.flush()
        return projects.agent_payload(agent)


@router.get("/quick-actions", response_model=QuickActionList, responses=responses())
def list_quick_actions(services: ServicesDep,
                       key: Annotated[ApiKey, Depends(aixpose_key(READ))]) -> dict:
    with services.session_factory() as session:
        return list_payload(projects.list_quick_actions(session, key.account_id))


@router.post("/quick-actions", status_code=201, response_model=QuickActionObject,
             responses=responses(409, replay=QuickActionObject))
def create_quick_action(body: QuickActionCreate, response: Response, services: ServicesDep,
                        key: Annotated[ApiKey, Depends(aixpose_key(WRITE))],
                        idempotency_key: IdempotencyKey = None) -> dict:
    """A named reusable instruction (`actions` and/or `prompt`), usable as
    `instruction: {source: "quick_action", quick_action_id}`."""
    instruction = body.instruction.model_dump(exclude_none=True)
    check_instruction(instruction.get("actions") or [], instruction.get("prompt"), "instruction")

    def create(session) -> str:
        row = QuickAction(account_id=key.account_id, name=body.name, instruction=instruction,
                          created_at=utcnow())
        session.add(row)
        session.flush()
        return row.id

    qa_id, replayed = create_idempotently(services.session_factory, key.id, idempotency_key,
                                          body.model_dump(), "quick_action", create,
                                          ttl_hours=services.settings.idempotency_ttl_hours)
    if replayed:
        response.status_code = 200
    with services.session_factory() as session:
        quick = projects.get_quick_action(session, key.account_id, qa_id, field="id")
        return {**quick, "object": "quick_action", "builtin": False}
