//! The exposure part of the fleet API: GetExposure (paged by offset like the
//! other in-memory lists) and the security-edge diff shown with plans. Both
//! answer from the published view, like the other read RPCs: no AD round trip.

use kcdsync_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::convert::plan_to_pb;
use super::fleet::FleetApi;
use super::paging::page;
use crate::config::Role;
use crate::exposure::{self, Class, Edge, Via, diff::EdgeDiff};
use crate::store::{PlanState, StoredPlan, now_ms};
use crate::view::View;

pub fn via_to_pb(v: Via) -> i32 {
    (match v {
        Via::KerberosOnly => pb::EdgeVia::KerberosOnly,
        Via::ProtocolTransition => pb::EdgeVia::ProtocolTransition,
        Via::Rbcd => pb::EdgeVia::Rbcd,
    }) as i32
}

pub fn class_to_pb(c: Class) -> i32 {
    (match c {
        Class::Required => pb::EdgeClass::Required,
        Class::Excess => pb::EdgeClass::Excess,
        Class::Dangerous => pb::EdgeClass::Dangerous,
    }) as i32
}

pub fn edge_to_pb(e: &Edge) -> pb::DelegationEdge {
    pb::DelegationEdge {
        source: e.source.clone(),
        source_dn: e.source_dn.clone(),
        target: e.target.clone(),
        target_dn: e.target_dn.clone(),
        services: e.services.clone(),
        entries: e.entries.clone(),
        via: via_to_pb(e.via),
        class: class_to_pb(e.class),
        reasons: e.reasons.clone(),
        impersonates: e.impersonates().to_owned(),
    }
}

fn diff_to_pb(d: &EdgeDiff) -> pb::EdgeDiff {
    pb::EdgeDiff {
        added: d.added.iter().map(edge_to_pb).collect(),
        removed: d.removed.iter().map(edge_to_pb).collect(),
        adds_dangerous: d.adds_dangerous(),
    }
}

/// The class a request filters on; `None` for all.
fn class_filter(c: i32) -> Result<Option<Class>, Status> {
    match pb::EdgeClass::try_from(c) {
        Ok(pb::EdgeClass::Unspecified) => Ok(None),
        Ok(pb::EdgeClass::Required) => Ok(Some(Class::Required)),
        Ok(pb::EdgeClass::Excess) => Ok(Some(Class::Excess)),
        Ok(pb::EdgeClass::Dangerous) => Ok(Some(Class::Dangerous)),
        Err(_) => Err(Status::invalid_argument(format!("class {c} is not an EdgeClass"))),
    }
}

/// `name` (an edge end: FQDN, NetBIOS name or SID) is the host asked for,
/// by FQDN or by NetBIOS name.
fn names_host(name: &str, host: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == host || (!host.contains('.') && name.split('.').next() == Some(host))
}

impl FleetApi {
    pub(super) async fn get_exposure_rpc(
        &self,
        req: Request<pb::GetExposureRequest>,
    ) -> Result<Response<pb::GetExposureResponse>, Status> {
        self.state.auth.require(&req, Role::Read, "GetExposure")?;
        let r = req.into_inner();
        if r.host.len() > 256 {
            return Err(Status::invalid_argument("host: give an FQDN or NetBIOS name"));
        }
        let class = class_filter(r.class)?;
        let host = r.host.trim().to_ascii_lowercase();
        let view = self.state.view();
        let x = view.exposure();
        let count = |c: Class| x.edges.iter().filter(|e| e.class == c).count() as u32;
        let (required, excess, dangerous) = (count(Class::Required), count(Class::Excess), count(Class::Dangerous));
        let picked: Vec<&Edge> = x
            .edges
            .iter()
            .filter(|e| class.is_none_or(|c| e.class == c))
            .filter(|e| host.is_empty() || names_host(&e.source, &host) || names_host(&e.target, &host))
            .collect();
        let (slice, next) = page(&picked, r.page_size, &r.page_token)?;
        Ok(Response::new(pb::GetExposureResponse {
            edges: slice.into_iter().map(edge_to_pb).collect(),
            next_page_token: next,
            required,
            excess,
            dangerous,
            privileged_impersonable: x.privileged_impersonable.clone(),
            unreadable: x.unreadable.iter().map(|(h, why)| format!("{h}: {why}")).collect(),
        }))
    }

    /// A stored plan on the wire, with its security-edge diff when it is
    /// still to be applied: judged against the current view, which is what
    /// an approval would apply it to.
    pub(super) fn plan_with_edges(&self, p: &StoredPlan) -> pb::Plan {
        let mut out = plan_to_pb(p);
        if p.state == PlanState::PendingApproval {
            let view: std::sync::Arc<View> = self.state.view();
            let facts = view.snapshot.facts(&view.cfg, now_ms());
            let d = exposure::diff::plan_diff_from(
                view.exposure(),
                &facts.exposure_inputs(),
                &view.cfg.dns_suffixes,
                &p.changes,
            );
            out.edge_diff = Some(diff_to_pb(&d));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_filter_matches_by_fqdn_or_netbios_name() {
        assert!(names_host("hv01.lab.test", "hv01"));
        assert!(names_host("HV01.lab.test", "hv01.lab.test"));
        assert!(names_host("HV01", "hv01"));
        assert!(!names_host("hv011.lab.test", "hv01"));
        assert!(!names_host("hv01.lab.test", "hv01.other.test"));
    }

    #[test]
    fn an_unknown_class_is_refused() {
        assert_eq!(class_filter(0).unwrap(), None);
        assert_eq!(class_filter(3).unwrap(), Some(Class::Dangerous));
        assert_eq!(class_filter(99).unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
