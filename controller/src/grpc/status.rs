//! The gRPC status of every error a caller can meet, decided here and only
//! here: rewording a message never changes a status code.

use tonic::Status;

use crate::reconcile::ReconcileError;
use crate::store::StoreError;

impl From<&ReconcileError> for Status {
    fn from(e: &ReconcileError) -> Status {
        let msg = e.to_string();
        match e {
            ReconcileError::PlanNotFound(_) => Status::not_found(msg),
            ReconcileError::PlanDecided(_)
            | ReconcileError::Superseded { .. }
            | ReconcileError::Fenced { .. }
            | ReconcileError::Follower => Status::failed_precondition(msg),
            ReconcileError::Ldap(_) | ReconcileError::Store(_) | ReconcileError::Partial { .. } => {
                Status::internal(msg)
            }
        }
    }
}

impl From<ReconcileError> for Status {
    fn from(e: ReconcileError) -> Status {
        Status::from(&e)
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        Status::internal(e.to_string())
    }
}

/// An enrollment refused (`crate::enrollment`): its code, and words that say what to do.
impl From<&crate::enrollment::EnrollRefusal> for Status {
    fn from(r: &crate::enrollment::EnrollRefusal) -> Status {
        Status::new(r.code(), r.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn codes_follow_the_error_not_its_words() {
        let code = |e: ReconcileError| Status::from(&e).code();
        assert_eq!(code(ReconcileError::PlanNotFound(7)), Code::NotFound);
        assert_eq!(
            code(ReconcileError::Superseded { old: 1, new: Some(2) }),
            Code::FailedPrecondition
        );
        assert_eq!(code(ReconcileError::Follower), Code::FailedPrecondition);
        assert_eq!(
            code(ReconcileError::Fenced {
                lease: "reconciler".into(),
                holder: "a".into(),
                epoch: 3,
                written: 0
            }),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(ReconcileError::Partial {
                plan_id: 1,
                failed: 1,
                total: 2,
                first: "x".into()
            }),
            Code::Internal
        );
    }
}
