//! Services of the contract whose flows are not built yet. Each RPC authenticates the caller
//! and answers UNIMPLEMENTED naming the missing capability, so clients can be written against
//! the whole contract today.

use tonic::{Request, Response, Status};
use trm_proto::v1::{
    self as w, return_planning_service_server::ReturnPlanningService,
    witness_hearing_service_server::WitnessHearingService,
};

use crate::authz;

/// `ReturnPlanningService` until return planning lands.
#[derive(Debug, Clone, Default)]
pub struct PendingReturns;

/// `WitnessHearingService` until hearing requests land.
#[derive(Debug, Clone, Default)]
pub struct PendingHearings;

macro_rules! pending_service {
    ($svc:ident: $trait_:ident, $capability:literal { $($method:ident($req:ident) -> $resp:ident;)+ }) => {
        #[tonic::async_trait]
        impl $trait_ for $svc {
            $(
                async fn $method(&self, request: Request<w::$req>) -> Result<Response<w::$resp>, Status> {
                    authz::principal(&request)?;
                    Err(Status::unimplemented(concat!(stringify!($method), ": ", $capability, " is not available yet")))
                }
            )+
        }
    };
}

pending_service!(PendingReturns: ReturnPlanningService, "return planning" {
    record_risk_assessment(RecordRiskAssessmentRequest) -> RiskAssessment;
    record_return_decision(RecordReturnDecisionRequest) -> ReturnDecision;
    propose_return(ProposeReturnRequest) -> ReturnPlan;
    get_return_plan(GetReturnPlanRequest) -> ReturnPlan;
    list_return_plans(ListReturnPlansRequest) -> ListReturnPlansResponse;
    respond_to_return(RespondToReturnRequest) -> ReturnPlan;
    schedule_return(ScheduleReturnRequest) -> ReturnPlan;
    confirm_arrival(ConfirmArrivalRequest) -> ReturnPlan;
    record_follow_up(RecordFollowUpRequest) -> ReturnPlan;
    halt_return(HaltReturnRequest) -> ReturnPlan;
    record_travel(RecordTravelRequest) -> ReturnPlan;
    resolve_concern(ResolveConcernRequest) -> ReturnPlan;
    close_return(CloseReturnRequest) -> ReturnPlan;
});

pending_service!(PendingHearings: WitnessHearingService, "witness-hearing requests" {
    request_hearing(RequestHearingRequest) -> Hearing;
    get_hearing(GetHearingRequest) -> Hearing;
    list_hearings(ListHearingsRequest) -> ListHearingsResponse;
    respond_to_hearing(RespondToHearingRequest) -> Hearing;
    record_hearing_outcome(RecordHearingOutcomeRequest) -> Hearing;
    cancel_hearing(CancelHearingRequest) -> Hearing;
});
