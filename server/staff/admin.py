"""What admins do through the staff API: list accounts, invite, revoke. Never case content.

Vetting a handler is the directory's business (M-of-N admin signatures); an
account here only lets a vetted handler, or an admin, log in. Revocation ends
every session of the account at once and refuses its logins from then on.
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import delete, select, update

from ..db.models import StaffInvitation, StaffSession, StaffUser
from ..errors import ApiError
from ..tor import ClientKey, InvalidClientKey
from . import onion_clients
from .accounts import PREFIX, UsernameTaken, create_invitation
from .auth import admin_caller
from .body import read_json, role, string, username
from .context import staff_of

routes = web.RouteTableDef()


@routes.get(PREFIX + "/admin/staff", name="staff_admin_list")
async def list_staff(request: web.Request) -> web.Response:
    await admin_caller(request)
    async with staff_of(request).store.read() as session:
        rows = (
            await session.execute(
                select(StaffUser.username, StaffUser.role, StaffUser.state).order_by(StaffUser.username)
            )
        ).all()
    return web.json_response({"staff": [{"username": r.username, "role": r.role, "state": r.state} for r in rows]})


@routes.post(PREFIX + "/admin/invitations", name="staff_admin_invite")
async def invite(request: web.Request) -> web.Response:
    caller = await admin_caller(request)
    body = await read_json(request, ("username", "role"), optional=("onion_key",))
    name = username(string(body, "username", max_len=64))
    kind = role(string(body, "role", max_len=16))
    client_key = None
    if "onion_key" in body:
        try:
            client_key = ClientKey.parse(string(body, "onion_key", max_len=128))
        except InvalidClientKey as exc:
            raise ApiError(400, "bad_request", exc.message) from None
    staff = staff_of(request)
    try:
        code, expires = await create_invitation(
            staff.store,
            username=name,
            role=kind,
            now=staff.now(),
            day=staff.today(),
            actor=caller.username,
            audit_key=staff.audit_key,
        )
    except UsernameTaken as exc:
        raise ApiError(409, "username_taken", exc.message) from None
    if client_key is not None:
        # Picked up by the staff onion at its next health check (onion_clients.py).
        onion_clients.register(staff.config.onion_clients_dir, name, client_key)
    return web.json_response({"invitation": code, "expires": expires}, status=201)


@routes.post(PREFIX + "/admin/staff/{username}/revoke", name="staff_admin_revoke")
async def revoke(request: web.Request) -> web.Response:
    caller = await admin_caller(request)
    name = username(request.match_info["username"])
    staff = staff_of(request)
    async with staff.store.write() as session:
        user = await session.get(StaffUser, name, with_for_update=True)
        if user is None:
            raise ApiError(404, "not_found", "No such account.")
        if user.state != "revoked":
            await session.execute(update(StaffUser).where(StaffUser.username == name).values(state="revoked"))
            await staff.audit(session, caller.username, "revoke", detail=name)
        # Whatever its state was, nothing of the account may remain usable.
        await session.execute(delete(StaffSession).where(StaffSession.username == name))
        await session.execute(
            delete(StaffInvitation).where(StaffInvitation.username == name, StaffInvitation.used.is_(False))
        )
        result = {"username": user.username, "role": user.role, "state": "revoked"}
    # After the commit: the account is revoked even if this fails, and authorised_keys()
    # leaves a revoked account's key out whether or not its file is still there.
    onion_clients.unregister(staff.config.onion_clients_dir, name)
    return web.json_response(result)
