//! The receiver's domain rules, below the HTTP API and above the store: who may do what
//! ([`auth`]), the credential answer cache ([`answers`]), deployments ([`deploy`], of an
//! [`upload`]), credentials ([`creds`], [`oauth`], [`verify`]), what the receiver holds
//! ([`catalog`]) and the audit trail ([`audit`]).
//!
//! Services take typed arguments (parsed paths, principals, JSON values) and return domain
//! results or [`Problem`](crate::problem::Problem)s; they never build an HTTP response and
//! never import `crate::api`. Store work runs on blocking threads through
//! `crate::blocking` or `App::spawn_blocking`.

pub mod answers;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod creds;
pub mod deploy;
pub mod oauth;
pub mod plan;
pub mod rollback;
pub mod upload;
pub mod verify;
