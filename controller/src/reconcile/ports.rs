//! Exactly what a reconcile needs from AD, as a trait: the real `ldap::Ad`
//! in production and in the lab tests, an in-memory directory in the unit
//! tests of the conflict, retry, fencing and verify paths. (The store needs
//! no such seam: those tests use the real SQLite store in a temp dir.)

use std::future::Future;

use crate::ldap::WritePolicy;
use crate::ldap::{Ad, Change, Cursor, LdapError};
use crate::model::dn::Dn;
use crate::model::{Claims, Computer, Directory, HostChange, Observed};

pub trait AdClient: Sync {
    /// One paged search of the scope, plus the members of the AD groups.
    fn observe(&self, scope: &[Dn], groups: &[&Dn]) -> impl Future<Output = Result<Observed, LdapError>> + Send;
    /// Who holds `names` domain-wide, and which computers of `scope` are
    /// privileged (the input of the identity checks).
    fn claims(
        &self,
        domain: &Dn,
        scope: &[Dn],
        names: &[String],
        extra: &[Dn],
    ) -> impl Future<Output = Result<Claims, LdapError>> + Send;
    /// Privileged accounts, Protected Users and krbtgt.
    fn directory(&self, domain: &Dn, extra: &[Dn]) -> impl Future<Output = Result<Directory, LdapError>> + Send;
    /// Any object's delegation attributes, by DN (`None`: it does not exist).
    fn read_object(&self, dn: &str) -> impl Future<Output = Result<Option<Computer>, LdapError>> + Send;
    /// One computer object again, after a conflict.
    fn read_computer(&self, dn: &str) -> impl Future<Output = Result<Option<Computer>, LdapError>> + Send;
    /// The compare-and-swap modify of one object, if `policy` lets it through.
    fn modify_host(
        &self,
        change: &HostChange,
        policy: &WritePolicy,
    ) -> impl Future<Output = Result<(), LdapError>> + Send;
    /// The DC read from, and its highestCommittedUSN (the delta read's cursor).
    fn cursor(&self) -> impl Future<Output = Result<Cursor, LdapError>> + Send;
    /// Every object of `domain` (tombstones too) with uSNChanged >= `from`.
    fn changes_since(&self, domain: &Dn, from: i64) -> impl Future<Output = Result<Vec<Change>, LdapError>> + Send;
}

impl AdClient for Ad {
    fn observe(&self, scope: &[Dn], groups: &[&Dn]) -> impl Future<Output = Result<Observed, LdapError>> + Send {
        Ad::observe(self, scope, groups)
    }
    fn claims(
        &self,
        domain: &Dn,
        scope: &[Dn],
        names: &[String],
        extra: &[Dn],
    ) -> impl Future<Output = Result<Claims, LdapError>> + Send {
        Ad::claims(self, domain, scope, names, extra)
    }
    fn directory(&self, domain: &Dn, extra: &[Dn]) -> impl Future<Output = Result<Directory, LdapError>> + Send {
        Ad::directory(self, domain, extra)
    }
    fn read_object(&self, dn: &str) -> impl Future<Output = Result<Option<Computer>, LdapError>> + Send {
        Ad::read_object(self, dn)
    }
    fn read_computer(&self, dn: &str) -> impl Future<Output = Result<Option<Computer>, LdapError>> + Send {
        Ad::read_computer(self, dn)
    }
    fn modify_host(
        &self,
        change: &HostChange,
        policy: &WritePolicy,
    ) -> impl Future<Output = Result<(), LdapError>> + Send {
        Ad::modify_host(self, change, policy)
    }
    fn cursor(&self) -> impl Future<Output = Result<Cursor, LdapError>> + Send {
        Ad::cursor(self)
    }
    fn changes_since(&self, domain: &Dn, from: i64) -> impl Future<Output = Result<Vec<Change>, LdapError>> + Send {
        Ad::changes_since(self, domain, from)
    }
}
