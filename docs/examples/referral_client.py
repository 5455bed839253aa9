"""A case-management system calling its TRM node, the whole way: a service provider in AT
records a case and the victim's consent, refers her to RO, follows the referral until RO
answers; RO's focal point sees it arrive, accepts it and assigns it to a local service
provider (who only then sees it); a voluntary return, a witness hearing, a safety alert and
a compensation claim follow. Along
the way: how bad input, missing consent and retries with request_id behave.

Run by docs/examples/check.sh against two sandbox nodes:

    python referral_client.py SANDBOX_DIR AT_ADDRESS RO_ADDRESS
    python referral_client.py sandbox localhost:7400 localhost:7410
"""
import sys
import time
import uuid

import grpc

from trm.v1 import (
    common_pb2,
    hearing_pb2,
    hearing_pb2_grpc,
    referral_pb2,
    referral_pb2_grpc,
    remedies_pb2,
    remedies_pb2_grpc,
    returns_pb2,
    returns_pb2_grpc,
    safety_pb2,
    safety_pb2_grpc,
    work_pb2,
    work_pb2_grpc,
)


def channel(node_dir: str, address: str, role: str) -> grpc.Channel:
    """A channel to a node presenting the sandbox's client certificate of `role`."""

    def read(name: str) -> bytes:
        with open(f"{node_dir}/{name}", "rb") as f:
            return f.read()

    creds = grpc.ssl_channel_credentials(
        root_certificates=read("services-ca.pem"),  # the node's server CA
        private_key=read(f"clients/{role}.key"),  # your client certificate
        certificate_chain=read(f"clients/{role}.pem"),
    )
    # The sandbox's server certificate names "localhost".
    return grpc.secure_channel(
        address, creds, options=[("grpc.ssl_target_name_override", "localhost")]
    )


def wait_for(what: str, check, seconds: float = 30.0):
    """Polls `check` until it returns something truthy (a later version watches events)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def call_with_retry(rpc, request, attempts: int = 5):
    """Calls a mutating RPC; retries what may succeed later with the same request (and so
    the same request_id: a retry never does the work twice)."""
    for attempt in range(attempts):
        try:
            return rpc(request, timeout=10)
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                grpc.StatusCode.RESOURCE_EXHAUSTED) or attempt == attempts - 1:
                raise
            time.sleep(0.2 * 2**attempt)


def get_referral(stub, referral_id: str):
    """The referral, or None while this node does not hold it (NOT_FOUND)."""
    try:
        return stub.GetReferral(referral_pb2.GetReferralRequest(referral_id=referral_id))
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def with_status(stub_get, status):
    """A check for wait_for: the record once it has `status`."""
    def check():
        record = stub_get()
        return record if record is not None and record.status == status else None
    return check


def main(sandbox: str, at_address: str, ro_address: str) -> None:
    at_dir, ro_dir = f"{sandbox}/AT", f"{sandbox}/RO"
    at_sp = referral_pb2_grpc.ReferralServiceStub(channel(at_dir, at_address, "service_provider"))
    ro_fp = referral_pb2_grpc.ReferralServiceStub(channel(ro_dir, ro_address, "focal_point"))
    ro_sp = referral_pb2_grpc.ReferralServiceStub(channel(ro_dir, ro_address, "service_provider"))

    # 1. A case. identified_on starts the reflection period (default: today).
    create = referral_pb2.CreateCaseRequest(
        person=common_pb2.Person(
            given_name="Ana", family_name="Example", date_of_birth="2001-04-02",
            gender=common_pb2.GENDER_FEMALE, citizenship=["RO"], languages=["ro"],
        ),
        needs=common_pb2.Needs(kinds=[common_pb2.NEED_KIND_SHELTER], urgency=common_pb2.URGENCY_URGENT),
        exploitation=common_pb2.Exploitation(types=[common_pb2.EXPLOITATION_TYPE_FORCED_LABOUR]),
        request_id=str(uuid.uuid4()),  # your own id: the same on a retry
    )
    case = call_with_retry(at_sp.CreateCase, create)
    again = call_with_retry(at_sp.CreateCase, create)
    assert again.case_id == case.case_id, "a retry with the same request_id is the same case"
    print("created case", case.case_id)

    # Bad input is INVALID_ARGUMENT naming the field; no personal data in any message.
    try:
        at_sp.CreateCase(referral_pb2.CreateCaseRequest(person=common_pb2.Person(given_name="B")))
        raise SystemExit("a case without a gender was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        assert e.details().startswith("person.gender"), e.details()
        print("refused:", e.details())

    # 2. No referral without consent: FAILED_PRECONDITION naming the guard.
    submit = referral_pb2.SubmitReferralRequest(
        case_id=case.case_id, destination="RO",
        requested_services=[common_pb2.NEED_KIND_SHELTER], request_id=str(uuid.uuid4()),
    )
    try:
        at_sp.SubmitReferral(submit)
        raise SystemExit("a referral without consent was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
        assert e.details().startswith("consent"), e.details()
        print("refused:", e.details())

    # 3. The victim's informed consent: purpose, recipient countries, optional expiry and
    # categories (empty: everything the purpose allows except contact).
    call_with_retry(at_sp.RecordConsent, referral_pb2.RecordConsentRequest(
        case_id=case.case_id, purposes=[common_pb2.PURPOSE_REFERRAL_ASSISTANCE],
        recipients=["RO"], informed=True, information_language="ro",
        request_id=str(uuid.uuid4()),
    ))

    # RO's focal point watches its node instead of polling: opened before the referral is
    # sent, the stream shows it arrive (ids and statuses only) and its task open.
    ro_work = work_pb2_grpc.WorkServiceStub(channel(ro_dir, ro_address, "focal_point"))
    ro_events = ro_work.WatchEvents(work_pb2.WatchEventsRequest(after=""), timeout=60)

    # 4. The referral: SENT once durably queued; DELIVERED once RO's signed receipt is back.
    referral = call_with_retry(at_sp.SubmitReferral, submit)
    assert referral.status == referral_pb2.REFERRAL_STATUS_SENT, referral
    assert not referral.disclosed.HasField("identity"), "no identity crosses for a referral"
    wait_for("DELIVERED at AT", with_status(
        lambda: get_referral(at_sp, referral.referral_id), referral_pb2.REFERRAL_STATUS_DELIVERED))
    print("referral", referral.referral_id, "delivered to RO")

    # 5. At RO: the focal point answers incoming referrals. The referral id is the same on
    # both nodes; RO's service providers do not see it until it is assigned to them.
    for event in ro_events:
        if event.kind == work_pb2.EVENT_KIND_ARRIVED and event.record_id == referral.referral_id:
            assert event.record_type == "referral" and event.status == "delivered", event
            break
    ro_events.cancel()
    arrived = ro_fp.GetReferral(referral_pb2.GetReferralRequest(referral_id=referral.referral_id))
    assert arrived.disclosed == referral.disclosed, "RO holds exactly what AT sent"
    incoming = ro_sp.ListReferrals(referral_pb2.ListReferralsRequest(direction=common_pb2.DIRECTION_INCOMING))
    assert referral.referral_id not in [r.referral_id for r in incoming.referrals]
    call_with_retry(ro_fp.RespondToReferral, referral_pb2.RespondToReferralRequest(
        referral_id=referral.referral_id, decision=referral_pb2.REFERRAL_DECISION_ACCEPT,
        request_id=str(uuid.uuid4()),
    ))
    call_with_retry(ro_fp.AssignCase, referral_pb2.AssignCaseRequest(
        referral_id=referral.referral_id, organisation="sp1", request_id=str(uuid.uuid4()),
    ))
    seen = ro_sp.GetReferral(referral_pb2.GetReferralRequest(referral_id=referral.referral_id))
    assert seen.assigned_organisation == "sp1", seen
    # Paging: every List* takes page_size (at most 100) and page_token.
    page, ids = referral_pb2.ListReferralsRequest(direction=common_pb2.DIRECTION_INCOMING, page_size=100), []
    while True:
        got = ro_fp.ListReferrals(page)
        ids += [r.referral_id for r in got.referrals]
        if not got.next_page_token:
            break
        page.page_token = got.next_page_token
    assert referral.referral_id in ids
    wait_for("IN_ASSISTANCE at AT", with_status(
        lambda: get_referral(at_sp, referral.referral_id), referral_pb2.REFERRAL_STATUS_IN_ASSISTANCE))
    print("referral", referral.referral_id, "accepted and assigned at RO")

    # 6. A voluntary return to RO: a risk assessment, her decision and consent for return
    # planning first; every guard refused is FAILED_PRECONDITION naming it.
    at_returns = returns_pb2_grpc.ReturnPlanningServiceStub(channel(at_dir, at_address, "service_provider"))
    ro_returns = returns_pb2_grpc.ReturnPlanningServiceStub(channel(ro_dir, ro_address, "focal_point"))
    call_with_retry(at_returns.RecordRiskAssessment, returns_pb2.RecordRiskAssessmentRequest(
        case_id=case.case_id, level=returns_pb2.RISK_LEVEL_LOW, request_id=str(uuid.uuid4())))
    try:
        at_returns.ProposeReturn(returns_pb2.ProposeReturnRequest(case_id=case.case_id, destination="RO"))
        raise SystemExit("a return without the victim's decision was proposed")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
        print("refused:", e.details())
    call_with_retry(at_returns.RecordReturnDecision, returns_pb2.RecordReturnDecisionRequest(
        case_id=case.case_id, voluntary=True, informed=True, reflection_period_waived=True,
        request_id=str(uuid.uuid4())))
    call_with_retry(at_sp.RecordConsent, referral_pb2.RecordConsentRequest(
        case_id=case.case_id, purposes=[common_pb2.PURPOSE_RETURN_PLANNING], recipients=["RO"],
        informed=True, information_language="ro", request_id=str(uuid.uuid4())))
    plan = call_with_retry(at_returns.ProposeReturn, returns_pb2.ProposeReturnRequest(
        case_id=case.case_id, destination="RO", request_id=str(uuid.uuid4())))
    get_plan = lambda stub: lambda: stub.GetReturnPlan(returns_pb2.GetReturnPlanRequest(return_id=plan.return_id))
    wait_for("the return request at RO", lambda: _or_none(get_plan(ro_returns)))
    call_with_retry(ro_returns.RespondToReturn, returns_pb2.RespondToReturnRequest(
        return_id=plan.return_id, response=returns_pb2.RETURN_RESPONSE_CONFIRM_RECEPTION,
        details="met at arrivals", request_id=str(uuid.uuid4())))
    wait_for("RECEPTION_CONFIRMED at AT", with_status(
        get_plan(at_returns), returns_pb2.RETURN_STATUS_RECEPTION_CONFIRMED))
    print("return", plan.return_id, "reception confirmed by RO")

    # 7. A witness hearing: AT's judicial authority asks RO to hear her by video-conference;
    # the MLA request is its legal basis (not consent). She is named only by reference.
    ja = hearing_pb2_grpc.WitnessHearingServiceStub(channel(at_dir, at_address, "judicial_authority"))
    ro_hearings = hearing_pb2_grpc.WitnessHearingServiceStub(channel(ro_dir, ro_address, "focal_point"))
    hearing = call_with_retry(ja.RequestHearing, hearing_pb2.RequestHearingRequest(
        case_id=case.case_id, witness_country="RO", proceeding_reference="PROC-1",
        measures=[hearing_pb2.PROTECTIVE_MEASURE_INTERPRETER], language="ro",
        legal_basis="MLA request under UNTOC art. 18 para. 18", request_id=str(uuid.uuid4())))
    get_hearing = lambda stub: lambda: stub.GetHearing(hearing_pb2.GetHearingRequest(hearing_id=hearing.hearing_id))
    wait_for("the hearing request at RO", lambda: _or_none(get_hearing(ro_hearings)))
    call_with_retry(ro_hearings.RespondToHearing, hearing_pb2.RespondToHearingRequest(
        hearing_id=hearing.hearing_id, decision=hearing_pb2.HEARING_DECISION_ACCEPT,
        request_id=str(uuid.uuid4())))
    wait_for("ACCEPTED at AT", with_status(get_hearing(ja), hearing_pb2.HEARING_STATUS_ACCEPTED))
    print("hearing", hearing.hearing_id, "accepted by RO")

    # 8. A safety alert: the trafficker is released in RO. It goes to every node holding a
    # copy of the case (RO, under its own reference); the open return to RO halts, naming
    # safety_alert, and a new one waits for a risk assessment recorded after the alert.
    at_safety = safety_pb2_grpc.SafetyServiceStub(channel(at_dir, at_address, "judicial_authority"))
    ro_safety = safety_pb2_grpc.SafetyServiceStub(channel(ro_dir, ro_address, "focal_point"))
    alert = call_with_retry(at_safety.RaiseSafetyAlert, safety_pb2.RaiseSafetyAlertRequest(
        case_id=case.case_id, country="RO", kind=safety_pb2.SAFETY_ALERT_KIND_RELEASE,
        effective_on=time.strftime("%Y-%m-%d"), request_id=str(uuid.uuid4())))
    at_fp_safety = safety_pb2_grpc.SafetyServiceStub(channel(at_dir, at_address, "focal_point"))
    seen = at_fp_safety.GetSafetyAlert(safety_pb2.GetSafetyAlertRequest(alert_id=alert.alert_id))
    assert [r.node_id for r in seen.recipients] == ["RO"], seen  # the focal point sees where
    halted = wait_for("HALTED at AT", with_status(get_plan(at_returns), returns_pb2.RETURN_STATUS_HALTED))
    assert halted.status_reason == "safety_alert", halted
    get_alert = lambda stub: lambda: stub.GetSafetyAlert(safety_pb2.GetSafetyAlertRequest(alert_id=alert.alert_id))
    wait_for("the alert at RO", lambda: _or_none(get_alert(ro_safety)))
    call_with_retry(ro_safety.AcknowledgeSafetyAlert, safety_pb2.AcknowledgeSafetyAlertRequest(
        alert_id=alert.alert_id, request_id=str(uuid.uuid4())))
    wait_for("ACKNOWLEDGED at AT", with_status(get_alert(at_safety), safety_pb2.SAFETY_ALERT_STATUS_ACKNOWLEDGED))
    print("safety alert", alert.alert_id, "acknowledged by RO")

    # 9. A compensation claim heard in RO: it travels there under LEGAL_REMEDIES (the victim's
    # consent for that purpose first), RO's focal point records each step of the forum, and
    # AT sees them. No return, closure or withdrawal ever closes it.
    at_remedies = remedies_pb2_grpc.RemediesServiceStub(channel(at_dir, at_address, "service_provider"))
    ro_remedies = remedies_pb2_grpc.RemediesServiceStub(channel(ro_dir, ro_address, "focal_point"))
    call_with_retry(at_sp.RecordConsent, referral_pb2.RecordConsentRequest(
        case_id=case.case_id, purposes=[common_pb2.PURPOSE_LEGAL_REMEDIES], recipients=["RO"],
        informed=True, information_language="ro", request_id=str(uuid.uuid4())))
    claim = call_with_retry(at_remedies.FileClaim, remedies_pb2.FileClaimRequest(
        case_id=case.case_id, kind=remedies_pb2.CLAIM_KIND_UNPAID_WAGES, forum_country="RO",
        request_id=str(uuid.uuid4())))
    get_claim = lambda stub: lambda: stub.GetClaim(remedies_pb2.GetClaimRequest(claim_id=claim.claim_id))
    wait_for("the claim at RO", lambda: _or_none(get_claim(ro_remedies)))
    call_with_retry(ro_remedies.UpdateClaim, remedies_pb2.UpdateClaimRequest(
        claim_id=claim.claim_id, status=remedies_pb2.CLAIM_STATUS_UNDER_REVIEW,
        request_id=str(uuid.uuid4())))
    wait_for("UNDER_REVIEW at AT", with_status(get_claim(at_remedies), remedies_pb2.CLAIM_STATUS_UNDER_REVIEW))
    print("claim", claim.claim_id, "under review in RO")


def _or_none(get):
    """Calls `get`; None while the node does not hold the record yet."""
    try:
        return get()
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
