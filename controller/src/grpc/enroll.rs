//! `EnrollmentService` on the agent endpoint: the wire side of `crate::enrollment`. The
//! connection needs no client certificate for this service (the endpoint's TLS makes one
//! optional when `[agents.enroll]` is set); `AgentService.Session` still refuses a stream
//! without one.

use kcdsync_proto::v1::enroll_request::Proof;
use kcdsync_proto::v1::enrollment_service_server::{EnrollmentService, EnrollmentServiceServer};
use kcdsync_proto::v1::{EnrollRequest, EnrollResponse};
use tonic::{Request, Response, Status};

use super::agents::AgentHub;
use crate::enrollment::Proof as EnrollProof;

/// A CSR is a few hundred bytes; a Kerberos token with a large PAC a few kilobytes.
const MAX_REQUEST: usize = 96 * 1024;

#[derive(Clone)]
pub struct Enrollment {
    hub: AgentHub,
}

pub fn service(hub: &AgentHub) -> EnrollmentServiceServer<Enrollment> {
    EnrollmentServiceServer::new(Enrollment { hub: hub.clone() })
        .max_decoding_message_size(MAX_REQUEST)
        .max_encoding_message_size(64 * 1024)
}

#[tonic::async_trait]
impl EnrollmentService for Enrollment {
    async fn enroll(&self, req: Request<EnrollRequest>) -> Result<Response<EnrollResponse>, Status> {
        let remote = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let body = req.into_inner();
        if body.csr.is_empty() {
            return Err(Status::invalid_argument(
                "csr is empty: send a PKCS#10 request for a fresh key",
            ));
        }
        let proof = match &body.proof {
            Some(Proof::Kerberos(k)) => EnrollProof::Kerberos {
                csr: &body.csr,
                token: &k.token,
                mic: &k.csr_mic,
            },
            Some(Proof::JoinToken(secret)) => EnrollProof::JoinToken { csr: &body.csr, secret },
            None => {
                return Err(Status::invalid_argument(
                    "no proof: send kerberos (a GSS-API token for the controller's service principal and its MIC over \
                     the csr) or join_token (from `kcdsync-controller agents token create HOST`)",
                ));
            }
        };
        let (host, issued) = self.hub.enroll(&remote, proof).await.map_err(|r| Status::from(&r))?;
        Ok(Response::new(EnrollResponse {
            host,
            certificate_chain_pem: issued.chain_pem,
            not_after: Some(prost_types::Timestamp {
                seconds: issued.not_after.unix_timestamp(),
                nanos: 0,
            }),
        }))
    }
}
