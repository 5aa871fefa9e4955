//! The `certs` subcommands: issue in memory first, then write the files
//! (see `files`), and print what was written and what to do next.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::ca::fmt_time;
use super::files::{check_free, ensure_dir, load_ca_dir, write_cert, write_key};
use super::inspect::{not_after, peer_host_names};
use super::names::normalize_host_fqdn;
use super::{
    CA_CERT_FILE, CA_KEY_FILE, CONTROLLER_CERT_FILE, CONTROLLER_KEY_FILE, Ca, DEFAULT_CA_DAYS, DEFAULT_LEAF_DAYS,
    MAX_DAYS, Result, Validity,
};

/// Certificate tooling for the mTLS channel between agents and the controller.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CertsCommand {
    /// Create a private certificate authority: writes ca.pem and ca.key.
    ///
    /// ca.pem is the CA certificate: the controller trusts agent certificates
    /// issued by it, and every agent verifies the controller with it. ca.key
    /// is its private key (mode 0600): whoever holds it can mint any agent's
    /// identity, so keep it offline or at least off the Hyper-V hosts.
    /// Fleet API client certificates need a CA of their own (a second
    /// `certs ca`, then `certs client`): the controller refuses the agents'
    /// CA as api.client_ca_file.
    #[command(
        after_long_help = "Example:\n  kcdsync-controller certs ca --out-dir /etc/kcdsync/ca\n  \
        kcdsync-controller certs ca --out-dir /etc/kcdsync/api-ca --name \"kcdsync API clients\""
    )]
    Ca {
        /// Directory to write ca.pem and ca.key to (created with mode 0700 if missing).
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// Common name of the CA, shown by certificate viewers.
        #[arg(long, default_value = "kcdsync CA")]
        name: String,
        /// Days the CA is valid; the certificates it issues cannot outlive it.
        #[arg(long, default_value_t = DEFAULT_CA_DAYS, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
        days: u32,
        /// Replace existing files instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// Issue the controller's server certificate (serverAuth): writes controller.pem and controller.key.
    ///
    /// Agents connect to the controller's gRPC endpoint, check this
    /// certificate against ca.pem, and require the name or address they dial
    /// to be one of --name / --ip. Give every DNS name and address agents may
    /// use.
    #[command(
        after_long_help = "Example:\n  kcdsync-controller certs controller --ca-dir /etc/kcdsync/ca \
        --out-dir /etc/kcdsync/tls \\\n      --name kcdsync.contoso.com --name kcdsync01.contoso.com --ip 10.0.0.5"
    )]
    Controller {
        /// Directory holding ca.pem and ca.key (as written by `certs ca`).
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// Directory to write controller.pem and controller.key to (created with mode 0700 if missing).
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// DNS name agents use to reach the controller (repeatable; letters, digits, '-', '.').
        #[arg(long = "name", value_name = "HOST", num_args = 1.., required_unless_present = "ips")]
        names: Vec<String>,
        /// IP address agents use to reach the controller (repeatable).
        #[arg(long = "ip", value_name = "IP", num_args = 1..)]
        ips: Vec<IpAddr>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = DEFAULT_LEAF_DAYS, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
        days: u32,
        /// Replace existing files instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// Issue one agent's client certificate (clientAuth): writes <FQDN>.pem and <FQDN>.key.
    ///
    /// The certificate names the host (subjectAltName DNS = the FQDN,
    /// lower-cased). The controller accepts an agent only with a certificate
    /// from its CA, and only for the host named in it: a stream claiming
    /// another host is refused. Copy <FQDN>.pem, <FQDN>.key and ca.pem to
    /// that host only.
    #[command(
        after_long_help = "Example:\n  kcdsync-controller certs agent --ca-dir /etc/kcdsync/ca \
        --out-dir ./agents --host hv01.contoso.com"
    )]
    Agent {
        /// Directory holding ca.pem and ca.key (as written by `certs ca`).
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// Directory to write the certificate and key to (created with mode 0700 if missing).
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// The host's FQDN, i.e. its dNSHostName in AD (e.g. hv01.contoso.com); not the NetBIOS name.
        #[arg(long, value_name = "FQDN")]
        host: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = DEFAULT_LEAF_DAYS, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
        days: u32,
        /// Replace existing files instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// Issue client certificates for many agents at once: <FQDN>.pem and <FQDN>.key per host.
    ///
    /// Same as `agent` for each --host. Every name and every target file is
    /// checked first: nothing is written unless all of them can be.
    #[command(
        after_long_help = "Example:\n  kcdsync-controller certs agents --ca-dir /etc/kcdsync/ca \
        --out-dir ./agents \\\n      --host hv01.contoso.com hv02.contoso.com hv03.contoso.com"
    )]
    Agents {
        /// Directory holding ca.pem and ca.key (as written by `certs ca`).
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// Directory to write the certificates and keys to (created with mode 0700 if missing).
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// The hosts' FQDNs (dNSHostName in AD); repeat --host or list several after it.
        #[arg(long = "host", value_name = "FQDN", num_args = 1.., required = true)]
        hosts: Vec<String>,
        /// Days the certificates are valid.
        #[arg(long, default_value_t = DEFAULT_LEAF_DAYS, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
        days: u32,
        /// Replace existing files instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// Issue a fleet API client certificate (clientAuth) for an orchestrator or operator: writes <NAME>.pem and <NAME>.key.
    ///
    /// Issue it from the API clients' CA (api.client_ca_file), never the
    /// agents' CA, and list NAME in api.read_clients or api.write_clients.
    /// kcdctl uses it with --cert/--key.
    #[command(
        after_long_help = "Example:\n  kcdsync-controller certs client --ca-dir /etc/kcdsync/api-ca \
        --out-dir ./clients --name orchestrator.contoso.com"
    )]
    Client {
        /// Directory holding the API clients' CA: ca.pem and ca.key (as written by `certs ca`).
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// Directory to write the certificate and key to (created with mode 0700 if missing).
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// The client's DNS-style name, as listed in api.read_clients / api.write_clients.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = DEFAULT_LEAF_DAYS, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
        days: u32,
        /// Replace existing files instead of refusing.
        #[arg(long)]
        force: bool,
    },
}

/// Whom a client certificate is for, in what `run` prints.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Holder {
    Agent,
    ApiClient,
}

/// Executes a `certs` command, printing each file it writes.
pub fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Ca {
            out_dir,
            name,
            days,
            force,
        } => {
            let (cert_path, key_path) = (out_dir.join(CA_CERT_FILE), out_dir.join(CA_KEY_FILE));
            check_free(&[&cert_path, &key_path], force)?;
            let ca = Ca::with_validity(&name, Validity::days(days))?;
            ensure_dir(&out_dir)?;
            write_key(&key_path, ca.key_pem().as_bytes(), force)?;
            write_cert(&cert_path, ca.cert_pem().as_bytes(), force)?;
            println!("CA \"{}\" valid until {}", ca.name(), fmt_time(ca.not_after()));
            println!(
                "Next: `certs controller --ca-dir {0}` and `certs agent --ca-dir {0}`; keep {1} secret.",
                out_dir.display(),
                key_path.display()
            );
        }
        CertsCommand::Controller {
            ca_dir,
            out_dir,
            names,
            ips,
            days,
            force,
        } => {
            let (cert_path, key_path) = (out_dir.join(CONTROLLER_CERT_FILE), out_dir.join(CONTROLLER_KEY_FILE));
            check_free(&[&cert_path, &key_path], force)?;
            let ca = load_ca_dir(&ca_dir)?;
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let (cert, key) = ca.issue_server(&names, &ips, Validity::days(days))?;
            ensure_dir(&out_dir)?;
            write_key(&key_path, key.as_bytes(), force)?;
            write_cert(&cert_path, cert.as_bytes(), force)?;
            let der = pem_to_der(&cert)?;
            let sans: Vec<String> = peer_host_names(&der)?
                .into_iter()
                .chain(ips.iter().map(|ip| ip.to_string()))
                .collect();
            println!(
                "controller certificate for {} (serverAuth), valid until {}, issued by \"{}\"",
                sans.join(", "),
                fmt_time(not_after(&der)?),
                ca.name()
            );
            println!(
                "Serve agents with {} + {}, trusting client certificates from {}.",
                cert_path.display(),
                key_path.display(),
                ca_dir.join(CA_CERT_FILE).display()
            );
        }
        CertsCommand::Agent {
            ca_dir,
            out_dir,
            host,
            days,
            force,
        } => {
            issue_clients(&ca_dir, &out_dir, &[host], days, force, Holder::Agent)?;
        }
        CertsCommand::Agents {
            ca_dir,
            out_dir,
            hosts,
            days,
            force,
        } => {
            issue_clients(&ca_dir, &out_dir, &hosts, days, force, Holder::Agent)?;
        }
        CertsCommand::Client {
            ca_dir,
            out_dir,
            name,
            days,
            force,
        } => {
            issue_clients(&ca_dir, &out_dir, &[name], days, force, Holder::ApiClient)?;
        }
    }
    Ok(())
}

/// Client certificates (clientAuth, the name as DNS subjectAltName): an
/// agent's names its host; an API client's names what api.*_clients lists.
fn issue_clients(
    ca_dir: &Path,
    out_dir: &Path,
    hosts: &[String],
    days: u32,
    force: bool,
    holder: Holder,
) -> anyhow::Result<()> {
    let mut fqdns: Vec<String> = Vec::new();
    for h in hosts {
        let fqdn = normalize_host_fqdn(h)?;
        if !fqdns.contains(&fqdn) {
            fqdns.push(fqdn);
        }
    }
    let paths: Vec<(PathBuf, PathBuf)> = fqdns
        .iter()
        .map(|f| (out_dir.join(format!("{f}.pem")), out_dir.join(format!("{f}.key"))))
        .collect();
    let all: Vec<&Path> = paths.iter().flat_map(|(c, k)| [c.as_path(), k.as_path()]).collect();
    check_free(&all, force)?;
    let ca = load_ca_dir(ca_dir)?;
    let validity = Validity::days(days);
    // Issue everything in memory first, so a failure writes nothing.
    let issued: Vec<(String, String)> = fqdns
        .iter()
        .map(|f| ca.issue_agent(f, validity))
        .collect::<Result<_>>()?;
    ensure_dir(out_dir)?;
    for ((fqdn, (cert_path, key_path)), (cert, key)) in fqdns.iter().zip(&paths).zip(&issued) {
        write_key(key_path, key.as_bytes(), force)?;
        write_cert(cert_path, cert.as_bytes(), force)?;
        let what = if holder == Holder::Agent {
            "agent"
        } else {
            "fleet API client"
        };
        println!(
            "{what} certificate for {fqdn} (clientAuth), valid until {}",
            fmt_time(validity.not_after)
        );
    }
    match holder {
        Holder::Agent => println!(
            "Copy each host's .pem and .key, and {}, to that host only.",
            ca_dir.join(CA_CERT_FILE).display()
        ),
        Holder::ApiClient => println!(
            "Set api.client_ca_file = {} (not the agents' CA) and list the name in api.read_clients or api.write_clients.",
            ca_dir.join(CA_CERT_FILE).display()
        ),
    }
    Ok(())
}

fn pem_to_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    Ok(CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .to_vec())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::certs::test_util::{HOST, HOSTILE};

    #[test]
    fn hostile_host_names_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        run(CertsCommand::Ca {
            out_dir: ca_dir.clone(),
            name: "kcdsync CA".into(),
            days: 30,
            force: false,
        })
        .unwrap();
        let out = dir.path().join("agents");
        for bad in HOSTILE {
            let err = run(CertsCommand::Agents {
                ca_dir: ca_dir.clone(),
                out_dir: out.clone(),
                hosts: vec![HOST.into(), bad.to_string()],
                days: 1,
                force: true,
            })
            .unwrap_err();
            assert!(err.to_string().contains("not a valid host name"), "{bad:?}: {err}");
        }
        assert!(!out.exists());
        assert!(!dir.path().join("etc").exists());
    }

    #[derive(clap::Parser)]
    struct TestCli {
        #[command(subcommand)]
        cmd: CertsCommand,
    }

    #[test]
    fn cli_parses() {
        TestCli::command().debug_assert();
        let cli = TestCli::try_parse_from([
            "t",
            "controller",
            "--ca-dir",
            "ca",
            "--out-dir",
            "o",
            "--name",
            "a.lab",
            "b.lab",
            "--ip",
            "10.0.0.1",
        ])
        .unwrap();
        let CertsCommand::Controller {
            names,
            ips,
            days,
            force,
            ..
        } = cli.cmd
        else {
            panic!()
        };
        assert_eq!(names, ["a.lab", "b.lab"]);
        assert_eq!(ips, ["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!((days, force), (DEFAULT_LEAF_DAYS, false));
        // --ip alone is enough; neither is not.
        TestCli::try_parse_from(["t", "controller", "--ca-dir", "c", "--out-dir", "o", "--ip", "::1"]).unwrap();
        assert!(TestCli::try_parse_from(["t", "controller", "--ca-dir", "c", "--out-dir", "o"]).is_err());
        let cli = TestCli::try_parse_from(["t", "ca", "--out-dir", "o"]).unwrap();
        let CertsCommand::Ca { name, days, .. } = cli.cmd else {
            panic!()
        };
        assert_eq!((name.as_str(), days), ("kcdsync CA", DEFAULT_CA_DAYS));
        assert!(TestCli::try_parse_from(["t", "ca", "--out-dir", "o", "--days", "0"]).is_err());
        let cli = TestCli::try_parse_from([
            "t",
            "agents",
            "--ca-dir",
            "c",
            "--out-dir",
            "o",
            "--host",
            "a.lab",
            "--host",
            "b.lab",
            "c.lab",
        ])
        .unwrap();
        let CertsCommand::Agents { hosts, .. } = cli.cmd else {
            panic!()
        };
        assert_eq!(hosts, ["a.lab", "b.lab", "c.lab"]);
    }

    #[test]
    fn help_teaches() {
        let mut cmd = TestCli::command();
        for (sub, needles) in [
            ("ca", &["ca.pem", "ca.key", "0600", "Example:"][..]),
            ("controller", &["serverAuth", "--name", "--ip", "Example:"][..]),
            ("agent", &["dNSHostName", "another host is refused", "Example:"][..]),
            ("agents", &["nothing is written", "Example:"][..]),
            ("client", &["api.write_clients", "never the agents' CA", "Example:"][..]),
        ] {
            let help = cmd.find_subcommand_mut(sub).unwrap().render_long_help().to_string();
            println!("==== {sub}\n{help}");
            for n in needles {
                assert!(help.contains(n), "{sub}: {n:?} missing from\n{help}");
            }
        }
    }
}
