//! A controller that enrolls agents by Kerberos, on the lab: a fleet OU with `hosts` (each with
//! its keytab), a service account holding the controller's service principal (AES only, its
//! keytab), the agents' CA as the issuing CA, and `serve` running in process on SQLite.

use std::path::PathBuf;

use anyhow::Result;
use kcdsync_controller::config::Config;
use kcdsync_controller::runtime::Running;
use kcdsync_controller::store::Store;

use crate::agents::Pki;
use crate::{BindAs, Fleet, FleetSpec, Lab, token};

pub struct EnrollingController {
    pub fleet: Fleet,
    pub pki: Pki,
    /// The controller's service principal without its realm, as agents configure it.
    pub spn: String,
    /// … and with it (`kcdsync/enr-….lab.test@LAB.TEST`).
    pub service: String,
    pub running: Running,
    pub store: Store,
    pub port: u16,
}

impl EnrollingController {
    /// Creates `OU=<ou>` with `hosts` (all managed, in observe mode) and starts `serve`.
    pub async fn start(lab: &Lab, ou: &str, hosts: &[&str]) -> Result<EnrollingController> {
        let fleet = FleetSpec::new(ou, hosts).create(lab).await?;
        let pki = Pki::new();
        let tag = &token()[..6];
        let spn = format!("kcdsync/enr-{tag}.lab.test");
        let service = lab
            .account_with_keytab(
                &fleet.ou_dn,
                &format!("enr-svc-{tag}"),
                Some(&spn),
                &pki.path("controller.keytab"),
            )
            .await?;
        for h in hosts {
            lab.host_keytab(fleet.host(h), &pki.path(&format!("{h}.keytab")))?;
        }
        crate::write_private(&pki.path("ca.key"), pki.ca.key_pem());
        let db = pki.path("kcdsync.db");
        let store_url = format!("sqlite://{}?mode=rwc", db.display());
        let extra = format!(
            "[reconcile]\ninterval_secs = 3600\nwatch = false\n\n[store]\nurl = \"{store_url}\"\n\n\
             [agents]\nlisten = \"127.0.0.1:0\"\ncert_file = \"controller.pem\"\nkey_file = \"controller.key\"\n\
             client_ca_file = \"ca.pem\"\nissuing_ca_cert_file = \"ca.pem\"\nissuing_ca_key_file = \"ca.key\"\n\
             cert_lifetime_hours = 1\nheartbeat_secs = 1\nstale_after_secs = 5\n\n\
             [agents.enroll]\nkeytab_file = \"controller.keytab\"\nservice_principal = \"{service}\"\n"
        );
        let text = fleet.config(lab, BindAs::Svc, "observe", hosts, &extra);
        let path = pki.path("kcdsync.toml");
        std::fs::write(&path, text)?;
        let running = kcdsync_controller::runtime::start(Config::load(&path)?).await?;
        let port = running.agents_addr.expect("the agent endpoint").port();
        let store = Store::open(&store_url).await?;
        Ok(EnrollingController {
            fleet,
            pki,
            spn,
            service,
            running,
            store,
            port,
        })
    }

    /// The keytab of `host` (its NetBIOS name as given to `start`).
    pub fn keytab(&self, host: &str) -> PathBuf {
        self.pki.path(&format!("{host}.keytab"))
    }
}
