//! Services of the contract whose flows are not built yet. Each RPC authenticates the caller
//! and answers UNIMPLEMENTED naming the missing capability, so clients can be written against
//! the whole contract today.

use tonic::{Request, Response, Status};
use trm_proto::v1::{self as w, witness_hearing_service_server::WitnessHearingService};

use crate::authz;

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

pending_service!(PendingHearings: WitnessHearingService, "witness-hearing requests" {
    request_hearing(RequestHearingRequest) -> Hearing;
    get_hearing(GetHearingRequest) -> Hearing;
    list_hearings(ListHearingsRequest) -> ListHearingsResponse;
    respond_to_hearing(RespondToHearingRequest) -> Hearing;
    record_hearing_outcome(RecordHearingOutcomeRequest) -> Hearing;
    cancel_hearing(CancelHearingRequest) -> Hearing;
});
