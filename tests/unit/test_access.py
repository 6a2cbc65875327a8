"""The pull check's decision table over every status and body, with a scripted upstream."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.metrics import Metrics
from proxy.oci.errors import BodyTooLarge, OCIError
from proxy.services.pull_access import PullAccess, PullRefused
from proxy.upstream.client import Answer

REPO, SUBJECT = "team/app", "sha256:" + "1" * 64
BODIES = {
    "manifest_unknown": orjson.dumps({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "x"}]}),
    "name_unknown": orjson.dumps({"errors": [{"code": "NAME_UNKNOWN", "message": "x"}]}),
    "router": b"404 page not found\n",
    "empty": b"",
    "not_errors": orjson.dumps({"errors": "MANIFEST_UNKNOWN"}),
}


def answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, CIMultiDictProxy(CIMultiDict(headers or {})), body)


class ScriptedUpstream:
    """Answers HEAD with `head` and GET with `get`; counts the calls."""

    def __init__(self, head: Answer | Exception, get: Answer | Exception | None = None) -> None:
        self.head, self.get = head, get
        self.calls: list[str] = []

    async def call(self, method: str, path: str, **_: object) -> Answer:
        self.calls.append(f"{method} {path}")
        reply = self.head if method == "HEAD" else self.get
        if isinstance(reply, Exception):
            raise reply
        assert reply is not None
        return reply


def access(upstream: ScriptedUpstream, remember: float = 30.0) -> PullAccess:
    return PullAccess(upstream, remember, Metrics.create())


async def outcome(check: PullAccess) -> tuple[str, int, dict[str, str] | None]:
    """What the check did: granted / nothing (unknown repository) / relay / error, with the
    status and headers the client would get."""
    try:
        visible = await check.may_pull(REPO, SUBJECT, "Basic x")
    except PullRefused as refused:
        return "relay", refused.answer.status, None
    except OCIError as error:
        return error.code, error.status, error.headers
    return ("granted" if visible else "nothing"), 200, None


@pytest.mark.parametrize("status", range(100, 600))
async def test_only_a_proof_grants_and_only_a_grant_is_remembered(status: int) -> None:
    """HEAD says `status`; a 404 is read again with GET to see its reason."""
    for body in BODIES:
        upstream = ScriptedUpstream(answer(status), answer(status, BODIES[body]))
        check = access(upstream)
        proven = status == 200 or (status == 404 and body == "manifest_unknown")
        kind, client_status, headers = await outcome(check)
        if proven:
            assert kind == "granted"
        elif status == 404 and body == "name_unknown":
            assert kind == "nothing", "an unknown repository lists nothing"
        elif status in (401, 403):
            assert (kind, client_status) == ("relay", status)
        else:
            expected = ("TOOMANYREQUESTS", 429) if status == 429 else ("UNAVAILABLE", 503)
            assert (kind, client_status) == expected, body
            assert headers is not None
            assert headers["Retry-After"].isdigit()
        upstream.head = upstream.get = answer(500)
        again, _, _ = await outcome(check)
        assert again == ("granted" if proven else "UNAVAILABLE"), "only a grant is remembered"


async def test_a_grant_is_per_credential_and_repository() -> None:
    upstream = ScriptedUpstream(answer(200))
    check = access(upstream)
    assert await check.may_pull(REPO, SUBJECT, "Basic alice")
    assert await check.may_pull(REPO, "sha256:" + "2" * 64, "Basic alice")
    assert len(upstream.calls) == 1
    upstream.head = answer(401, headers={"WWW-Authenticate": "Basic"})
    for auth, repository in (("Basic bob", REPO), (None, REPO), ("Basic alice", "team/other")):
        with pytest.raises(PullRefused):
            await check.may_pull(repository, SUBJECT, auth)


async def test_nothing_is_remembered_with_zero_seconds() -> None:
    upstream = ScriptedUpstream(answer(200))
    check = access(upstream, remember=0)
    for _ in range(3):
        assert await check.may_pull(REPO, SUBJECT, None)
    assert len(upstream.calls) == 3


@pytest.mark.parametrize(
    "fault", [aiohttp.ClientConnectionError("reset"), TimeoutError(), aiohttp.ClientPayloadError()]
)
async def test_an_upstream_fault_is_a_503(fault: Exception) -> None:
    with pytest.raises(OCIError) as raised:
        await access(ScriptedUpstream(fault)).may_pull(REPO, SUBJECT, None)
    assert raised.value.status == 503


@pytest.mark.parametrize(
    ("given", "relayed"),
    [
        ("7", "7"),
        ("100000", "300"),
        ("Wed, 21 Oct 2026 07:28:00 GMT", "1"),
        ("²", "1"),
        ("9" * 5000, "1"),
    ],
)
async def test_a_rate_limit_keeps_a_bounded_retry_after(given: str, relayed: str) -> None:
    upstream = ScriptedUpstream(answer(429, headers={"Retry-After": given}))
    with pytest.raises(OCIError) as raised:
        await access(upstream).may_pull(REPO, SUBJECT, None)
    assert raised.value.status == 429
    assert raised.value.headers == {"Retry-After": relayed}


async def test_an_oversized_answer_is_a_503_not_a_502() -> None:
    too_large = BodyTooLarge("the answer", 1, from_client=False)
    with pytest.raises(OCIError) as raised:
        await access(ScriptedUpstream(answer(404), too_large)).may_pull(REPO, SUBJECT, None)
    assert raised.value.status == 503


async def test_a_refused_head_is_relayed_with_an_oci_body() -> None:
    challenge = {"WWW-Authenticate": 'Basic realm="r"'}
    with pytest.raises(PullRefused) as raised:
        await access(ScriptedUpstream(answer(401, headers=challenge))).may_pull(REPO, SUBJECT, None)
    relayed = raised.value.answer
    assert relayed.headers["WWW-Authenticate"] == 'Basic realm="r"'
    assert orjson.loads(relayed.body)["errors"][0]["code"] == "UNAUTHORIZED"
